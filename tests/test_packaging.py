"""A bare ``pip install -e .`` of the checkout in a fresh virtualenv is a whole install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# deploy/build-images.sh's wheel cache: the install needs no package index when it is there
WHEELHOUSE = ROOT / "deploy" / ".build" / "wheelhouse"


@pytest.mark.timeout(600)
def test_pip_install_e_dot_in_a_fresh_venv_gives_a_working_install(tmp_path: Path) -> None:
    """The install pulls no distribution named ``fum`` (PyPI's is unrelated) and ships the
    container library itself: ``import fum`` is libs/fum's, with ``fum.fail``."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    if WHEELHOUSE.is_dir():
        pip += ["--find-links", str(WHEELHOUSE)]
    out = subprocess.run(
        [*pip, "-e", str(ROOT)], capture_output=True, text=True, timeout=480, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "fum-cluster" in names and "fum" not in names, sorted(names)
    script = (
        "import fum, services, fum_cli, fum_client, services.api.app; "
        "assert callable(fum.fail) and callable(fum.fum_yield); print(fum.__file__)"
    )
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-P", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == ROOT / "libs" / "fum" / "fum" / "__init__.py"
    cli = subprocess.run(
        [str(venv / "bin" / "fum"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0 and "up" in cli.stdout, cli.stderr
