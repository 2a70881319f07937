# Names shared by the infra scripts; they source this file. Set PROJECT; every other name has
# a default that can be overridden from the environment.
: "${PROJECT:?set PROJECT to the Google Cloud project id}"
REGION="${REGION:-us-central1}"                              # must offer NVIDIA L4 GPUs (G2 machines)
BUCKET="${BUCKET:-${PROJECT}-ecomatch}"                       # template spec, staging and temp files
INPUT="${INPUT:-gs://${PROJECT}-catalogue/listings/*.parquet}"  # the catalogue export: read only
REPORTS="${REPORTS:-gs://${PROJECT}-ecomatch-reports/scan}"  # one prefix per night under it: REPORTS/{date}
MODEL="${MODEL:-default}"                                     # "default" (the bundled model) or a gs:// checkpoint directory
# Where a listing's image_uri may point (space-separated gs:// or https:// prefixes, the template's
# image_uri_prefix); the scan refuses the rest.
IMAGE_URI_PREFIX="${IMAGE_URI_PREFIX:-gs://${PROJECT}-catalogue/}"
TAG="${TAG:-$(git rev-parse --short=12 HEAD)}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/ecomatch/worker:${TAG}}"
TEMPLATE="gs://${BUCKET}/templates/scan.json"                 # the nightly schedule launches the latest build
WORKER_SA="ecomatch-worker@${PROJECT}.iam.gserviceaccount.com"        # launcher VM and workers
SCHEDULER_SA="ecomatch-scheduler@${PROJECT}.iam.gserviceaccount.com"  # launches the template, runs the check
CHECKER_SA="ecomatch-checker@${PROJECT}.iam.gserviceaccount.com"      # reads summary.json
