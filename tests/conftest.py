"""Shared fixtures: real processes on loopback, free ports, always stopped.

Cluster tests run once per sandbox driver: ``process`` everywhere, ``docker`` against the
real engine (marked ``docker``; never skipped: without an engine they fail).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from .keeper import SERVERS, Server, start_server
from .support import Api

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ["process", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="session")
def images() -> None:
    """Every image built (the script skips what is up to date; `make test` has built
    them before pytest started, outside the per-test timeout)."""
    if os.environ.get("FUM_IMAGES_READY") == "1":
        return
    build = [str(ROOT / "deploy" / "build-images.sh"), "--only"]
    subprocess.run([*build, "services,runtime,registry,prometheus"], check=True, timeout=1800)


def start_cluster(tmp_path_factory: pytest.TempPathFactory, **options: object) -> LocalCluster:
    folder = tmp_path_factory.mktemp("cluster")
    return LocalCluster(folder, port=0, **options).start(timeout=60)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("images")
    return str(request.param)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, driver: str) -> Iterator[LocalCluster]:
    """A cluster of one worker with the runtime preload policy, for one test module."""
    c = start_cluster(tmp_path_factory, driver=driver)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def api(cluster: LocalCluster) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(cluster.url) as session:
        yield Api(session)


@pytest.fixture(scope="module", params=SERVERS)
def zk_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The keeper, then Debian's ZooKeeper: the same protocol tests run against both."""
    server = start_server(str(request.param), tmp_path_factory.mktemp(str(request.param)))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keeper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A keeper process for one test module."""
    server = start_server("keeper", tmp_path_factory.mktemp("keeper"))
    try:
        yield server
    finally:
        server.stop()


MILLION = 1_000_000


@pytest.fixture(scope="session")
def million_calls(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A db file holding a million calls, built once per schema version and kept in the
    pytest cache (``.pytest_cache``; without it, for this session); tests copy it before
    using it."""
    from services.db.store import SCHEMA_VERSION

    from .support import build_calls_file

    name = f"million-calls-v{SCHEMA_VERSION}"
    cache = getattr(pytestconfig, "cache", None)  # None with -p no:cacheprovider
    folder = tmp_path_factory.mktemp(name) if cache is None else cache.mkdir(name)
    path = folder / "fum.sqlite3"
    if not path.exists():
        building = folder / "building.sqlite3"
        for stale in folder.glob("building.sqlite3*"):
            stale.unlink()
        build_calls_file(building, MILLION)
        building.rename(path)
    return path
