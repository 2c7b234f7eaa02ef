"""Shared fixtures: real processes on loopback, free ports, always stopped.

Cluster tests run once per sandbox driver: ``process`` everywhere, ``docker`` against the
real engine (marked ``docker``; never skipped: without an engine they fail).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from fum_cli.local import LocalCluster

from . import statuses
from .keeper import SERVERS, Server, start_server
from .support import Api

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ["process", pytest.param("docker", marks=pytest.mark.docker)]
RECORD = "FUM_STATUS_RECORD"


# ---- every documented status seen by a test (tests/statuses.py)


def pytest_configure(config: pytest.Config) -> None:
    """Every api of the session records its answers to one file (an outer FUM_STATUS_RECORD
    is kept: several sessions may add to one record; an empty one turns it off)."""
    if RECORD not in os.environ:
        handle, name = tempfile.mkstemp(prefix="fum-statuses-", suffix=".txt")
        os.close(handle)
        os.environ[RECORD] = name
        config.stash[OWN_RECORD] = Path(name)
    config.stash[DESELECTED] = 0
    config.stash[STATUS_REPORT] = []


OWN_RECORD = pytest.StashKey[Path]()
DESELECTED = pytest.StashKey[int]()
STATUS_REPORT = pytest.StashKey[list[str]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        items[0].config.stash[DESELECTED] += len(items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get(RECORD):  # FUM_STATUS_RECORD= : nothing recorded, nothing checked
        return
    record = Path(os.environ[RECORD])
    promised = statuses.documented()
    unseen, undocumented = statuses.compare(promised, statuses.recorded(record))
    report = session.config.stash[STATUS_REPORT]
    if undocumented:
        report += ["answered, on a documented route, a status the document lacks:"]
        report += statuses.show(undocumented)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    whole = statuses.whole_suite(session, session.config.stash[DESELECTED])
    if whole and unseen:
        report += ["documented, and no test saw the api answer it:"]
        report += statuses.show(unseen)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    seen = len(promised) - len(unseen)
    checked = "checked" if whole else "not checked: only a run of the whole suite is"
    report.append(f"{seen} of the {len(promised)} documented statuses seen ({checked})")
    own = session.config.stash.get(OWN_RECORD, None)
    if own is not None:
        own.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(STATUS_REPORT, [])
    if report:
        terminalreporter.section("OpenAPI statuses")
        for line in report:
            terminalreporter.write_line(line)


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
