#!/usr/bin/env bash
# Build the worker + launcher image (infra/Dockerfile) with Cloud Build, then publish the flex
# template spec that points at it (infra/metadata.json). The image is tagged with the commit.
# Usage: PROJECT=... [REGION=... TAG=...] infra/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/common.sh
if [ -n "$(git status --porcelain -- setup.py README.md ecomatch_model transforms pipelines infra)" ]; then
    echo "infra/build.sh: uncommitted changes: the image would not match its tag ${TAG}" >&2
    exit 1
fi
gcloud builds submit --project "$PROJECT" --region "$REGION" --config infra/cloudbuild.yaml \
    --substitutions "_IMAGE=${IMAGE}" .
gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" --image "$IMAGE" \
    --sdk-language PYTHON --metadata-file infra/metadata.json
echo "image:    $IMAGE"
echo "template: $TEMPLATE"
