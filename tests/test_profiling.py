"""``FUM_CPROFILE_DIR``: the services' cProfile folder, apart from the SDK's ``FUM_PROFILE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fum_client import Client

from .conftest import start_cluster
from .support import handler_package


def test_cprofile_dir_profiles_every_service_and_leaves_the_sdk_alone(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented command (``FUM_CPROFILE_DIR=DIR bench/...``) puts the folder in the
    environment of the SDK and of every service: the SDK ignores it, each service writes
    ``DIR/<name>-<pid>.prof`` when it stops."""
    profiles = tmp_path / "prof"
    monkeypatch.setenv("FUM_CPROFILE_DIR", str(profiles))
    monkeypatch.setenv("FUM_CONFIG", str(tmp_path / "no-profiles.toml"))
    cluster = start_cluster(tmp_path_factory)
    try:
        with Client(cluster.url) as client:
            client.put_runtime("pyh", "pythonruntime", "python3 -m fum main:handle")
            client.deploy_function("echo", handler_package("echo"), runtime="pyh")
            assert client.invoke("echo", {"n": 1}).status == "DONE"
    finally:
        cluster.stop()
    written = {path.name.split("-")[0] for path in profiles.glob("*.prof")}
    assert {"keeper", "db", "api", "worker", "miniworker"} <= written, sorted(written)
