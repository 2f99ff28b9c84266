#!/bin/sh
# Entrypoint of the art2mus training image: run the given command (a Prefect worker, or the
# `prefect flow-run execute` a Kubernetes worker's job passes as args) inside the project checkout.
set -eu
cd "${ART2MUS_PROJECT_DIR:-/opt/art2mus}"
# The DVC remote's endpoint comes from the environment; credentials stay in the environment too
# (DVC's S3 remote reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never in .dvc/config.
if [ -n "${ART2MUS_DVC_REMOTE_URL:-}" ]; then
    dvc remote add --local --force --default team "$ART2MUS_DVC_REMOTE_URL"
    if [ -n "${ART2MUS_DVC_ENDPOINT_URL:-}" ]; then
        dvc remote modify --local team endpointurl "$ART2MUS_DVC_ENDPOINT_URL"
    fi
fi
exec "$@"
