#!/usr/bin/env bash
# One-time set-up of a Google Cloud project for the scan (see infra/README.md, "Set-up"): APIs,
# the Artifact Registry repository, the bucket for the template spec and staging, three service
# accounts and least-privilege roles for them. Safe to rerun. The catalogue bucket (INPUT) and
# the report bucket (REPORTS) must exist; they are only granted on.
# Usage: PROJECT=... [REGION=... INPUT=... REPORTS=... MODEL=...] infra/setup_project.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/common.sh
bucket_of() { local path="${1#gs://}"; echo "gs://${path%%/*}"; }
grant_bucket() {  # BUCKET MEMBER ROLE
    gcloud storage buckets add-iam-policy-binding "$1" --member "$2" --role "$3" >/dev/null
}

gcloud services enable --project "$PROJECT" dataflow.googleapis.com compute.googleapis.com \
    storage.googleapis.com artifactregistry.googleapis.com cloudbuild.googleapis.com \
    cloudscheduler.googleapis.com run.googleapis.com monitoring.googleapis.com logging.googleapis.com

gcloud artifacts repositories describe ecomatch --project "$PROJECT" --location "$REGION" >/dev/null 2>&1 ||
    gcloud artifacts repositories create ecomatch --project "$PROJECT" --location "$REGION" \
        --repository-format docker --description "ecomatch worker and launcher images"
# Staging and temp files are scratch: no soft delete (Beam warns about it), gone after a week.
gcloud storage buckets describe "gs://${BUCKET}" >/dev/null 2>&1 ||
    gcloud storage buckets create "gs://${BUCKET}" --project "$PROJECT" --location "$REGION" \
        --uniform-bucket-level-access --soft-delete-duration 0
printf '{"rule": [{"action": {"type": "Delete"}, "condition": {"age": 7, "matchesPrefix": ["staging/", "tmp/"]}}]}' \
    > "${TMPDIR:-/tmp}/ecomatch-lifecycle.json"
gcloud storage buckets update "gs://${BUCKET}" --lifecycle-file "${TMPDIR:-/tmp}/ecomatch-lifecycle.json"

for name in worker scheduler checker; do
    gcloud iam service-accounts describe "ecomatch-${name}@${PROJECT}.iam.gserviceaccount.com" \
        --project "$PROJECT" >/dev/null 2>&1 ||
        gcloud iam service-accounts create "ecomatch-${name}" --project "$PROJECT" --display-name "ecomatch ${name}"
done

# Worker (the launcher VM and the workers): run Dataflow work items, pull the image, read the
# catalogue (and a gs:// model), write and replace reports, use the staging bucket.
worker="serviceAccount:${WORKER_SA}"
gcloud projects add-iam-policy-binding "$PROJECT" --member "$worker" --role roles/dataflow.worker \
    --condition None >/dev/null
gcloud artifacts repositories add-iam-policy-binding ecomatch --project "$PROJECT" --location "$REGION" \
    --member "$worker" --role roles/artifactregistry.reader >/dev/null
grant_bucket "gs://${BUCKET}" "$worker" roles/storage.objectAdmin
grant_bucket "$(bucket_of "$INPUT")" "$worker" roles/storage.objectViewer
grant_bucket "$(bucket_of "$REPORTS")" "$worker" roles/storage.objectAdmin
case "$MODEL" in gs://*) grant_bucket "$(bucket_of "$MODEL")" "$worker" roles/storage.objectViewer ;; esac

# Scheduler: launch the template (create Dataflow jobs that run as the worker account, read the
# template spec); it is granted the check job's run.invoker by infra/schedule.sh.
scheduler="serviceAccount:${SCHEDULER_SA}"
gcloud projects add-iam-policy-binding "$PROJECT" --member "$scheduler" --role roles/dataflow.developer \
    --condition None >/dev/null
gcloud iam service-accounts add-iam-policy-binding "$WORKER_SA" --project "$PROJECT" \
    --member "$scheduler" --role roles/iam.serviceAccountUser >/dev/null
grant_bucket "gs://${BUCKET}" "$scheduler" roles/storage.objectViewer

# Checker: read summary.json.
grant_bucket "$(bucket_of "$REPORTS")" "serviceAccount:${CHECKER_SA}" roles/storage.objectViewer
echo "set up ${PROJECT}: bucket gs://${BUCKET}, repository ${REGION}-docker.pkg.dev/${PROJECT}/ecomatch"
