#!/usr/bin/env bash
# `make up`: the cluster in Docker (images built first where missing) when an engine
# answers, else a local cluster of processes (process driver). FUM_LOCAL=1 forces local;
# FUM_METRICS=1 adds compose's Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FUM_LOCAL:-}" ] && docker info >/dev/null 2>&1; then
    deploy/build-images.sh
    profile=()
    if [ -n "${FUM_METRICS:-}" ]; then  # compose's optional Prometheus (docs/OPERATIONS.md)
        deploy/build-images.sh --only prometheus
        profile=(-f deploy/metrics.yaml)
    fi
    if docker compose version >/dev/null 2>&1; then
        exec docker compose -f deploy/compose.yaml "${profile[@]}" -p fum up
    fi
    exec docker-compose -f deploy/compose.yaml "${profile[@]}" -p fum up
fi
exec .venv/bin/fum up "$@"
