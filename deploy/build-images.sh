#!/usr/bin/env bash
# Build every fum image with one command, with or without a reachable container
# registry (see /work/shared/IMAGES.md for why both cases exist).
#
#   deploy/build-images.sh [--only NAME]... [--push REGISTRY] [--base IMAGE]
#                          [--offline] [--refresh] [-v|--verbose]
#
# Images (NAME for --only):
#   base      python:3.11-slim-bookworm if it can be pulled, else fum/base:bookworm
#             built from Debian packages with debootstrap (always prepared)
#   services  fum/services:latest                      deploy/services.Dockerfile
#   runtime   pythonruntime:latest + fum/python-runtime:latest
#                                                      runtimes/python/Dockerfile
#   registry  fum/registry:latest   registry:2 if it can be pulled, else
#                                   services/registry/Dockerfile (Debian package)
#   prometheus fum/prometheus:latest deploy/prometheus/Dockerfile (Debian package);
#                                   only with --only: compose's optional `metrics`
#
# Cache: each image carries the label fum.inputs=<sha256 of its Dockerfile, its
# build context and the base image id>; an image whose tags already carry the
# label for the current inputs is not rebuilt. stdout gets one line per image:
# "<tag> built", "<tag> up to date", "<tag> pulled" or "<tag> pushed";
# progress goes to stderr, build output to deploy/.build/logs/.
#
# Options:
#   --only NAME      build only these images (repeatable, or comma-separated)
#   --push REGISTRY  after building, tag the runtime images REGISTRY/pythonruntime:latest
#                    and REGISTRY/fum/python-runtime:latest and push them
#                    (e.g. localhost:5000)
#   --base IMAGE     use IMAGE as the base instead of detecting one
#   --offline        never try to pull: use local images, else build from Debian packages
#   --refresh        re-resolve the wheelhouse against the package index
#   -v, --verbose    show build output instead of only logging it
#
# Environment: FUM_PYTHON (a Python 3.11 with pip for the wheelhouse, or
# "container" to run pip inside the base image; default: python3.11 or python3
# from PATH if it is 3.11, else the container),
# FUM_DEBIAN_MIRROR, FUM_PULL_TIMEOUT (seconds, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/deploy/.build"
WHEELHOUSE="$BUILD/wheelhouse"   # persistent wheel cache, filled from the index
SRC="$BUILD/src"                 # clean copy of the sources wheels are built from
CTX="$BUILD/ctx"                 # one build context per image
LOGS="$BUILD/logs"

PY_BASE=python:3.11-slim-bookworm
FUM_BASE=fum/base:bookworm
UPSTREAM_REGISTRY=registry:2
DEBIAN_SUITE=bookworm
DEBIAN_INCLUDE=python3,python3-venv,ca-certificates
PULL_TIMEOUT=${FUM_PULL_TIMEOUT:-60}

# The legacy builder: BuildKit is not installed everywhere, and nothing here
# needs it (no RUN --mount).
export DOCKER_BUILDKIT=0
# Reproducible wheels for the local projects (zip timestamps), so that an
# unchanged source tree gives byte-identical wheels and the cache hash holds.
export SOURCE_DATE_EPOCH=315532800

log() { printf '==> [%4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'build-images: error: %s\n' "$*" >&2; exit 1; }
status() { printf '%-34s %s\n' "$1" "$2"; }   # the per-image result lines (stdout)

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------- options ---
ONLY=()
PUSH_TO=""
BASE_OVERRIDE=""
OFFLINE=0
REFRESH=0
VERBOSE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --only) [ $# -ge 2 ] || die "--only needs a name"
                IFS=',' read -r -a names <<<"$2"; ONLY+=("${names[@]}"); shift 2 ;;
        --only=*) IFS=',' read -r -a names <<<"${1#*=}"; ONLY+=("${names[@]}"); shift ;;
        --push) [ $# -ge 2 ] || die "--push needs a registry, e.g. localhost:5000"
                PUSH_TO=$2; shift 2 ;;
        --push=*) PUSH_TO=${1#*=}; shift ;;
        --base) [ $# -ge 2 ] || die "--base needs an image"; BASE_OVERRIDE=$2; shift 2 ;;
        --base=*) BASE_OVERRIDE=${1#*=}; shift ;;
        --offline) OFFLINE=1; shift ;;
        --refresh) REFRESH=1; shift ;;
        -v|--verbose) VERBOSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
PUSH_TO=${PUSH_TO%/}

# Normalise --only names; no --only means everything.
declare -A WANT=()
if [ ${#ONLY[@]} -eq 0 ]; then
    WANT=([services]=1 [runtime]=1 [registry]=1)
else
    for n in "${ONLY[@]}"; do
        case "$n" in
            base) ;;
            services|fum/services) WANT[services]=1 ;;
            runtime|python-runtime|pythonruntime|fum/python-runtime) WANT[runtime]=1 ;;
            registry|fum/registry) WANT[registry]=1 ;;
            prometheus|fum/prometheus) WANT[prometheus]=1 ;;
            *) die "unknown image for --only: $n (base, services, runtime, registry, prometheus)" ;;
        esac
    done
fi
wanted() { [ -n "${WANT[$1]:-}" ]; }

# ---------------------------------------------------------------- helpers ---
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running, may this user use it?)"

mkdir -p "$BUILD" "$WHEELHOUSE" "$CTX" "$LOGS"
# Two builds at once would trample each other's contexts and race for the same
# tags (from any checkout: the tags are the engine's): take a lock. A caller
# that holds it already (flock on the same file) sets FUM_BUILD_LOCKED=1.
LOCKFILE="/tmp/fum-build-images-$(id -u).lock"
if [ "${FUM_BUILD_LOCKED:-0}" != 1 ] && command -v flock >/dev/null; then
    exec 9>"$LOCKFILE"
    flock -n 9 || { log "another build-images.sh is running; waiting for it"; flock 9; }
fi

CLEANUP=()
cleanup() { local p; for p in "${CLEANUP[@]+"${CLEANUP[@]}"}"; do rm -rf "$p"; done; }
trap cleanup EXIT

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
image_label() { docker image inspect -f '{{index .Config.Labels "fum.inputs"}}' "$1" 2>/dev/null || true; }

# Run a command with its output in a log file; show the log's end if it fails.
run_logged() {  # LOGFILE CMD...
    local logfile=$1; shift
    if [ "$VERBOSE" = 1 ]; then
        "$@" 2>&1 | tee "$logfile" >&2
        return "${PIPESTATUS[0]}"
    fi
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        printf 'build-images: command failed (full log: %s): %s\n' "$logfile" "$*" >&2
        return 1
    fi
}

try_pull() {  # IMAGE -> success if pulled within PULL_TIMEOUT
    [ "$OFFLINE" = 0 ] || return 1
    log "trying docker pull $1 (timeout ${PULL_TIMEOUT}s)"
    if timeout "$PULL_TIMEOUT" docker pull -q "$1" >"$LOGS/pull.log" 2>&1; then
        return 0
    fi
    log "cannot pull $1: $(tail -n 1 "$LOGS/pull.log")"
    return 1
}

# sha256 of a build context (paths + contents, sorted) and extra strings.
inputs_hash() {  # CONTEXT EXTRA...
    local ctx=$1; shift
    {
        printf '%s\n' "$@"
        (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

# ------------------------------------------------------------- base image ---
# The Debian mirror the machine's apt already uses (deb822 .sources or one-line
# .list), so that debootstrap works wherever apt-get does.
debian_mirror() {
    if [ -n "${FUM_DEBIAN_MIRROR:-}" ]; then echo "$FUM_DEBIAN_MIRROR"; return; fi
    local uris
    uris=$(
        { grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources \
            | sed -E 's/^[[:space:]]*URIs:[[:space:]]*//' | tr ' ' '\n'
          grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            | sed -E 's/\[[^]]*\]//' | awk '{print $2}'
        } || true
    )
    # A Debian archive (path ending in /debian), not the security archive.
    local m
    m=$(printf '%s\n' "$uris" | grep -E '^(https?|file)://.*/debian/?$' | head -n 1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# What the Debian base is made of; a change here rebuilds it (and so everything).
FUM_BASE_INPUTS=$(printf 'debootstrap --variant=minbase --include=%s %s\n' "$DEBIAN_INCLUDE" "$DEBIAN_SUITE" \
    | sha256sum | cut -d' ' -f1)

build_debian_base() {
    [ "$(id -u)" = 0 ] || die "$PY_BASE cannot be pulled and building $FUM_BASE with debootstrap needs root:
  run this script as root (sudo), or make $PY_BASE available (docker pull / docker load)"
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || die "debootstrap is missing and there is no apt-get to install it"
        log "installing debootstrap with apt-get"
        run_logged "$LOGS/apt-debootstrap.log" \
            sh -c 'apt-get install -y debootstrap || { apt-get update && apt-get install -y debootstrap; }' \
            || die "could not install debootstrap"
    fi
    local mirror rootfs keyring=()
    mirror=$(debian_mirror)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/fum-rootfs.XXXXXX")
    CLEANUP+=("$rootfs")
    log "building $FUM_BASE with debootstrap from $mirror (about a minute; log: $LOGS/debootstrap.log)"
    run_logged "$LOGS/debootstrap.log" \
        debootstrap --variant=minbase --include="$DEBIAN_INCLUDE" "${keyring[@]}" \
        "$DEBIAN_SUITE" "$rootfs" "$mirror" || die "debootstrap failed"
    # Downloaded packages and indexes are not needed in the image (builds that
    # need apt run apt-get update themselves).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap
    log "importing the root filesystem as $FUM_BASE"
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL fum.inputs=$FUM_BASE_INPUTS" \
        - "$FUM_BASE" >/dev/null || die "docker import failed"
    rm -rf "$rootfs"
}

# Sets BASE (and NO_PULL when it is known that images cannot be pulled).
NO_PULL=$OFFLINE
choose_base() {
    if [ -n "$BASE_OVERRIDE" ]; then
        BASE=$BASE_OVERRIDE
        if image_exists "$BASE"; then status "$BASE" "up to date"; return; fi
        try_pull "$BASE" || die "base image $BASE is not available (not local, cannot be pulled)"
        status "$BASE" "pulled"; return
    fi
    if image_exists "$PY_BASE"; then
        BASE=$PY_BASE; status "$BASE" "up to date"; return
    fi
    # A Debian base built earlier means that pulling did not work on this
    # machine: do not wait for a pull timeout again on every run.
    if image_exists "$FUM_BASE" && [ "$(image_label "$FUM_BASE")" = "$FUM_BASE_INPUTS" ]; then
        BASE=$FUM_BASE; NO_PULL=1; status "$BASE" "up to date"; return
    fi
    if ! image_exists "$FUM_BASE" && try_pull "$PY_BASE"; then
        BASE=$PY_BASE; status "$BASE" "pulled"; return
    fi
    build_debian_base
    BASE=$FUM_BASE; NO_PULL=1; status "$BASE" "built"
}

# ---------------------------------------------------------------- wheels ----
# A Python 3.11 (the base images' version) with pip, for the wheelhouse; without
# one on the host, pip runs inside the base image (needs the index reachable
# from containers, as it is for ordinary users).
HOST_PY=""
find_python() {
    local c
    if [ "${FUM_PYTHON:-}" = container ]; then
        log "FUM_PYTHON=container: running pip inside $BASE"; return
    fi
    for c in ${FUM_PYTHON:-} python3.11 python3; do
        command -v "$c" >/dev/null || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
            && "$c" -m pip --version >/dev/null 2>&1; then
            HOST_PY=$(command -v "$c"); return
        fi
    done
    log "no Python 3.11 with pip on this host: running pip inside $BASE"
}

pip311() {
    if [ -n "$HOST_PY" ]; then
        "$HOST_PY" -m pip "$@"
    else
        # Same absolute paths inside and out: all pip arguments live under $BUILD.
        docker run --rm -u "$(id -u):$(id -g)" -e HOME=/tmp -e SOURCE_DATE_EPOCH \
            -v "$BUILD:$BUILD" -w "$BUILD" "$BASE" \
            sh -c 'python3 -m venv /tmp/venv >/dev/null && exec /tmp/venv/bin/python -m pip "$@"' pip "$@"
    fi
}

# A clean copy of the sources: pip builds local projects in-tree, and setuptools'
# build/ directory keeps modules that were deleted from the tree; this also keeps
# build droppings out of the checkout.
stage_sources() {
    rm -rf "$SRC" "$BUILD/src.tar"; mkdir -p "$SRC"
    local rc=0
    (cd "$ROOT" && tar --exclude-vcs --exclude=./.venv --exclude=./deploy/.build \
        --exclude=./build --exclude=./libs/fum/build --exclude=./.fum \
        --exclude='__pycache__' --exclude='*.egg-info' --exclude='.*_cache' \
        --warning=no-file-changed -cf "$BUILD/src.tar" .) || rc=$?
    # tar exits 1 when a file changed while it was read (others may be editing).
    [ "$rc" -le 1 ] || die "could not copy the sources"
    tar -C "$SRC" -xf "$BUILD/src.tar"
    rm -f "$BUILD/src.tar"
}

# Put the wheels for REQUIREMENTS (and their dependencies) in DEST, from the
# wheelhouse alone when it has them all; otherwise fetch into the wheelhouse
# from the index first. --refresh always asks the index.
collect_wheels() {  # DEST REQUIREMENT...
    local dest=$1 name; shift
    name=$(basename "$(dirname "$dest")")
    rm -rf "$dest"; mkdir -p "$dest"
    if [ "$REFRESH" = 1 ] || ! pip311 wheel -q --no-index --find-links "$WHEELHOUSE" -w "$dest" "$@" \
            >"$LOGS/wheels-$name-offline.log" 2>&1; then
        log "fetching wheels for $name from the package index into $WHEELHOUSE"
        # setuptools builds the local projects; with --no-index it must be here.
        run_logged "$LOGS/wheels-$name-fetch.log" pip311 download -q -d "$WHEELHOUSE" "setuptools>=68" \
            || die "could not download setuptools (is the package index reachable?)"
        run_logged "$LOGS/wheels-$name-fetch.log" pip311 wheel -q -w "$WHEELHOUSE" "$@" \
            || die "could not build the wheelhouse for $name"
        rm -rf "$dest"; mkdir -p "$dest"
        run_logged "$LOGS/wheels-$name.log" pip311 wheel -q --no-index --find-links "$WHEELHOUSE" -w "$dest" "$@" \
            || die "the wheelhouse is still incomplete for $name"
    fi
    # Dockerfiles install deps/ in a cached layer and local/ (the wheels built
    # from this checkout, which change often) on top.
    mkdir -p "$dest/deps" "$dest/local"
    local w
    for w in "$dest"/*.whl; do
        case "${w##*/}" in
            fum_container_lib-[0-9]*|fum_cluster-[0-9]*) mv "$w" "$dest/local/" ;;
            *) mv "$w" "$dest/deps/" ;;
        esac
    done
}

# ---------------------------------------------------------------- images ----
# Build CONTEXT (which holds its Dockerfile) as TAGS unless they are up to date.
build_image() {  # NAME CONTEXT BASE_REF TAG...
    local name=$1 ctx=$2 base_ref=$3; shift 3
    local hash tag fresh=1 args=(--build-arg "BASE_IMAGE=$base_ref")
    hash=$(inputs_hash "$ctx" "base=$(image_id "$base_ref")")
    for tag in "$@"; do
        [ "$(image_label "$tag")" = "$hash" ] || fresh=0
    done
    if [ "$fresh" = 1 ]; then
        status "$1" "up to date"
        return
    fi
    for tag in "$@"; do args+=(-t "$tag"); done
    local old_ids start=$SECONDS
    old_ids=$(for tag in "$@"; do image_id "$tag" 2>/dev/null || true; done | sort -u)
    log "building $1 (log: $LOGS/$name.log)"
    run_logged "$LOGS/$name.log" docker build --label "fum.inputs=$hash" "${args[@]}" "$ctx" \
        || die "building $1 failed"
    log "built $1 in $((SECONDS - start))s"
    remove_leftovers "$name" "$old_ids"
    status "$1" "built"
}

# A rebuild leaves the previous image untagged, and the legacy builder leaves the
# image of each finished build stage (the `deps` stages, labelled
# fum.stage=NAME) untagged too. Remove those so that repeated builds do not fill
# the disk -- except the stages this build just made: they are the layer cache
# for the next build.
remove_leftovers() {  # NAME OLD_IMAGE_IDS
    local id keep ids
    # In the build output, the line before each later "Step N/M : FROM" is
    # " ---> <id of the finished stage>".
    keep=" $(awk '/^Step [0-9]+\/[0-9]+ : FROM/ && prev != "" { print prev }
                  /^ ---> [0-9a-f]+$/ { prev = $2 }' "$LOGS/$1.log" | tr '\n' ' ') "
    ids=$(docker images -q --filter dangling=true --filter "label=fum.stage=$1")
    for id in $2 $ids; do
        case "$keep" in *" $id "*) continue ;; esac
        [ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ] || continue
        docker rmi "$id" >/dev/null 2>&1 || true   # still in use (a container): keep
    done
}

build_services() {
    local ctx="$CTX/services"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$ROOT/deploy/services.Dockerfile" "$ctx/Dockerfile"
    # fum-cluster holds the container library (fum) too: one wheel of this checkout
    collect_wheels "$ctx/wheels" "$SRC"
    build_image services "$ctx" "$BASE" fum/services:latest
}

build_runtime() {
    local ctx="$CTX/runtime"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$ROOT/runtimes/python/Dockerfile" "$ctx/Dockerfile"
    # cloudpickle: the SDK's built-in function runs Python callables sent pickled;
    # kazoo: fum.keeper(), the client of the cluster's keeper.
    collect_wheels "$ctx/wheels" "$SRC/libs/fum" pyzmq cloudpickle kazoo
    build_image runtime "$ctx" "$BASE" pythonruntime:latest fum/python-runtime:latest
}

build_registry() {
    local ctx="$CTX/registry"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$ROOT/services/registry/config.yml" "$ctx/config.yml"
    # The upstream image when it is (or can be made) available: it is the same
    # program; only our config is added (same path as upstream's).
    if image_exists "$UPSTREAM_REGISTRY" || { [ "$NO_PULL" = 0 ] && try_pull "$UPSTREAM_REGISTRY"; }; then
        # shellcheck disable=SC2016  # ${BASE_IMAGE} is for docker, not the shell
        printf '%s\n' 'ARG BASE_IMAGE=registry:2' 'FROM ${BASE_IMAGE}' \
            'COPY config.yml /etc/docker/registry/config.yml' >"$ctx/Dockerfile"
        build_image registry "$ctx" "$UPSTREAM_REGISTRY" fum/registry:latest
        return
    fi
    cp "$ROOT/services/registry/Dockerfile" "$ctx/Dockerfile"
    build_image registry "$ctx" "$BASE" fum/registry:latest
}

build_prometheus() {
    local ctx="$CTX/prometheus"
    rm -rf "$ctx"; mkdir -p "$ctx"
    cp "$ROOT/deploy/prometheus/Dockerfile" "$ROOT/deploy/prometheus/prometheus.yml" "$ctx/"
    build_image prometheus "$ctx" "$BASE" fum/prometheus:latest
}

push_runtime() {
    local tag
    for tag in pythonruntime:latest fum/python-runtime:latest; do
        image_exists "$tag" || die "$tag does not exist: build it first (--only runtime)"
        docker tag "$tag" "$PUSH_TO/$tag"
        log "pushing $PUSH_TO/$tag"
        run_logged "$LOGS/push.log" docker push "$PUSH_TO/$tag" \
            || die "pushing $PUSH_TO/$tag failed (a plain-http registry must be on localhost/127.0.0.0/8 or in the engine's insecure-registries)"
        status "$PUSH_TO/$tag" "pushed"
    done
}

# ------------------------------------------------------------------ main ----
START=$SECONDS
choose_base
if wanted services || wanted runtime; then
    find_python
    stage_sources
fi
if wanted services; then build_services; fi
if wanted runtime; then build_runtime; fi
if wanted registry; then build_registry; fi
if wanted prometheus; then build_prometheus; fi
if [ -n "$PUSH_TO" ]; then push_runtime; fi
log "done in $((SECONDS - START))s"
