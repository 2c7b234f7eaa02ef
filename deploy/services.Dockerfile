# fum services image: one image for api, db, worker and miniworker
# (`python -m services.<name>`). Built by deploy/build-images.sh as
# `fum/services:latest`.
#
# Build context (made by the script): this file as `Dockerfile` plus a
# wheelhouse: `wheels/deps/` holds every third-party dependency, `wheels/local/`
# the wheel built from this checkout (fum-cluster, which ships the container
# library `fum` of libs/fum too). Installs are offline (`--no-index`): see
# /work/shared/IMAGES.md.
#
# Layer order is chosen for rebuild speed (legacy builder, DOCKER_BUILDKIT=0):
# the dependencies are installed in their own stage, which stays cached while
# only the project's code changes; a code change then costs one small layer.
#
# The worker talks to the Docker engine through aiodocker, which speaks the
# engine's HTTP API directly: no docker CLI is needed in the image, only the
# socket, mounted at run time (`-v /var/run/docker.sock:/var/run/docker.sock`).
# The image runs as root so that the mounted socket is usable.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
# Marks this stage's leftover image so that build-images.sh can tidy it up.
LABEL fum.stage=services
COPY wheels/deps /tmp/wheels
# `python3 -m venv` works both on python:3.11-slim (/usr/local/bin/python3) and
# on the Debian-built fum/base:bookworm (/usr/bin/python3 + python3-venv).
RUN python3 -m venv /opt/fum \
 && /opt/fum/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels /tmp/wheels/*.whl

FROM ${BASE_IMAGE}
ENV PATH=/opt/fum/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/fum \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# PYTHONSAFEPATH (as `python -P`): the working folder is never on sys.path, so nothing in
# it (a mounted data folder holding `fum/` or `services/`) can stand in for fum's packages.
# Working directory for state the services keep on local disk (the db's sqlite
# file, the worker's package cache) unless their settings say otherwise; mount a
# volume here to keep it.
WORKDIR /var/lib/fum
# api: HTTP on 3000. The ZeroMQ ports are set by the services' FUM_* settings.
EXPOSE 3000
# Pick the process with the command: `python -P -m services.db`, `... services.worker`,
# `... services.miniworker`.
CMD ["python", "-P", "-m", "services.api"]

COPY --from=deps /opt/fum /opt/fum
COPY wheels/local /tmp/local
# --no-deps: the dependencies are above; `pip check` fails the build if the
# wheelhouse and the project's requirements disagree.
RUN pip install --no-cache-dir --no-index --no-deps /tmp/local/*.whl \
 && rm -rf /tmp/local \
 && pip check \
 && python -c "import services, fum"
