#!/usr/bin/env bash
# The nightly scan (see infra/README.md, "Nightly schedule"):
#   1. Cloud Scheduler job ecomatch-nightly POSTs infra/nightly_launch.json to the flex template
#      launch API at LAUNCH_AT; the scan writes under REPORTS/{date}. A launch request that fails
#      is retried (up to 3 more times, 10 to 40 minutes apart); a second launch while a job named
#      ecomatch-nightly is still running is refused by Dataflow, so a retry never runs two scans.
#   2. Cloud Run job ecomatch-check runs `python -m infra.nightly` in the worker image at
#      CHECK_AT; it fails when REPORTS/{date}/summary.json is missing (job failed, late, never
#      launched) or its counts are outside the bounds below.
#   3. Alert policy "ecomatch nightly scan": a failed Dataflow job or a failed check notifies NOTIFY.
# Run infra/build.sh first (from the same commit): the check runs in the image of this TAG.
# Usage: PROJECT=... NOTIFY=projects/PROJECT/notificationChannels/ID [VIOLATION_BAND=LOW:HIGH
#        MAX_ERROR_RATE=... MIN_READ=... MIN_LISTINGS_PER_SECOND=... EXPECT_DEVICE=cuda LAUNCH_AT=... CHECK_AT=...]
#        infra/schedule.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/common.sh
: "${NOTIFY:?set NOTIFY to a Cloud Monitoring notification channel: projects/PROJECT/notificationChannels/ID}"
LAUNCH_AT="${LAUNCH_AT:-0 2 * * *}"          # cron, UTC
CHECK_AT="${CHECK_AT:-0 8 * * *}"            # after the scan's usual finishing time
VIOLATION_BAND="${VIOLATION_BAND:-0.005:0.25}"
MAX_ERROR_RATE="${MAX_ERROR_RATE:-0.02}"
MIN_READ="${MIN_READ:-1}"
MIN_LISTINGS_PER_SECOND="${MIN_LISTINGS_PER_SECOND:-0}"
EXPECT_DEVICE="${EXPECT_DEVICE:-cuda}"       # the GPU workers' device: a listing scored elsewhere alerts
export PROJECT BUCKET INPUT REPORTS MODEL IMAGE_URI_PREFIX TEMPLATE WORKER_SA NOTIFY

render() {  # FILE: with ${NAME} replaced from the environment (a missing name is an error)
    python3 -c 'import os, string, sys; sys.stdout.write(string.Template(open(sys.argv[1]).read()).substitute(os.environ))' "$1"
}
scheduler_job() {  # NAME ARGS...: (re)create the Cloud Scheduler HTTP job NAME
    if gcloud scheduler jobs describe "$1" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1; then
        gcloud scheduler jobs delete "$1" --project "$PROJECT" --location "$REGION" --quiet
    fi
    gcloud scheduler jobs create http "$@" --project "$PROJECT" --location "$REGION" --time-zone Etc/UTC
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

render infra/nightly_launch.json > "$work/launch.json"
scheduler_job ecomatch-nightly --schedule "$LAUNCH_AT" \
    --uri "https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch" \
    --http-method POST --headers Content-Type=application/json --message-body-from-file "$work/launch.json" \
    --oauth-service-account-email "$SCHEDULER_SA" --attempt-deadline 10m \
    --max-retry-attempts 3 --min-backoff 10m --max-backoff 40m --max-doublings 2 --max-retry-duration 4h

gcloud run jobs deploy ecomatch-check --project "$PROJECT" --region "$REGION" --image "$IMAGE" \
    --service-account "$CHECKER_SA" --max-retries 0 --task-timeout 10m --memory 2Gi \
    --command python --args "-m,infra.nightly,${REPORTS}/{date},--violation-rate,${VIOLATION_BAND},--max-error-rate,${MAX_ERROR_RATE},--min-read,${MIN_READ},--min-listings-per-second,${MIN_LISTINGS_PER_SECOND},--expect-device,${EXPECT_DEVICE}"
gcloud run jobs add-iam-policy-binding ecomatch-check --project "$PROJECT" --region "$REGION" \
    --member "serviceAccount:${SCHEDULER_SA}" --role roles/run.invoker >/dev/null
scheduler_job ecomatch-check --schedule "$CHECK_AT" \
    --uri "https://run.googleapis.com/v2/projects/${PROJECT}/locations/${REGION}/jobs/ecomatch-check:run" \
    --http-method POST --oauth-service-account-email "$SCHEDULER_SA" --max-retry-attempts 0

render infra/alert_policy.json > "$work/policy.json"
policy="$(gcloud beta monitoring policies list --project "$PROJECT" \
    --filter 'displayName="ecomatch nightly scan"' --format 'value(name)' | head -n 1)"
if [ -n "$policy" ]; then
    gcloud beta monitoring policies update "$policy" --project "$PROJECT" --policy-from-file "$work/policy.json"
else
    gcloud beta monitoring policies create --project "$PROJECT" --policy-from-file "$work/policy.json"
fi
