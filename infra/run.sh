#!/usr/bin/env bash
# Launch one scan from the flex template. OUTPUT defaults to REPORTS/{date} (today, UTC); with
# STATE (an earlier run's prefix, e.g. REPORTS/{yesterday}) listings unchanged since keep its
# verdicts. More gcloud flags pass through, e.g. --max-workers 16.
# ATTRIBUTE_COLUMNS, CARRY_COLUMNS (comma-separated), SKIP_BAD_FILES (true|false), IMAGE_URI_PREFIX (space-separated),
# INPUT_FORMAT (auto|parquet|csv|jsonl) and IMAGE_FETCH_CONCURRENCY set the template parameters of those names
# (infra/metadata.json).
# Usage: PROJECT=... [INPUT=... OUTPUT=... MODEL=... STATE=... ATTRIBUTE_COLUMNS=... SKIP_BAD_FILES=...
#        CARRY_COLUMNS=... IMAGE_URI_PREFIX=... INPUT_FORMAT=... IMAGE_FETCH_CONCURRENCY=...] infra/run.sh [gcloud flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/common.sh
OUTPUT="${OUTPUT:-${REPORTS}/{date}}"
# ^~^ makes "~" the separator between parameters, so that values may hold commas.
gcloud dataflow flex-template run "ecomatch-$(date -u +%Y%m%d-%H%M%S)" \
    --project "$PROJECT" --region "$REGION" --template-file-gcs-location "$TEMPLATE" \
    --service-account-email "$WORKER_SA" \
    --staging-location "gs://${BUCKET}/staging" --temp-location "gs://${BUCKET}/tmp" \
    --parameters "^~^input=${INPUT}~output=${OUTPUT}~model=${MODEL}${STATE:+~state=${STATE}}${ATTRIBUTE_COLUMNS:+~attribute_columns=${ATTRIBUTE_COLUMNS}}${CARRY_COLUMNS:+~carry_columns=${CARRY_COLUMNS}}${SKIP_BAD_FILES:+~skip_bad_files=${SKIP_BAD_FILES}}${IMAGE_URI_PREFIX:+~image_uri_prefix=${IMAGE_URI_PREFIX}}${INPUT_FORMAT:+~input_format=${INPUT_FORMAT}}${IMAGE_FETCH_CONCURRENCY:+~image_fetch_concurrency=${IMAGE_FETCH_CONCURRENCY}}" "$@"
