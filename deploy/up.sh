#!/usr/bin/env bash
# `make up`: the cluster in Docker (images built first where missing) when an engine
# answers, else a local cluster of processes (process driver). FUM_LOCAL=1 forces local.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FUM_LOCAL:-}" ] && docker info >/dev/null 2>&1; then
    deploy/build-images.sh
    if docker compose version >/dev/null 2>&1; then
        exec docker compose -f deploy/compose.yaml -p fum up
    fi
    exec docker-compose -f deploy/compose.yaml -p fum up
fi
exec .venv/bin/fum up "$@"
