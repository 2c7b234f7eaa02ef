"""Pictures of a run: FunctionExecutor.plot() and `fum calls --plot`, read back as images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib import image
from typer.testing import CliRunner

from fum_cli.local import LocalCluster
from fum_cli.main import app
from fum_client import Client, FunctionExecutor
from fum_client.models import Call
from fum_client.plots import COLOURS, phases

from .conftest import start_cluster
from .support import targz

NAP = "import time\n\ndef handle(p):\n    time.sleep(0.05)\n    return p\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory)
    try:
        with Client(c.url) as client:
            client.put_runtime("handlers", "pythonruntime", "python3 -m fum main:handle")
            client.deploy_function("nap", targz({"main.py": NAP}), runtime="handlers")
        yield c
    finally:
        c.stop()


def has_colour(png: Path, hex_colour: str) -> bool:
    """Whether some pixel of the picture is (near) that colour: bars were drawn."""
    want = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    pixels = image.imread(png)[..., :3]
    close = (abs(pixels - want) < 0.02).all(axis=-1)
    return bool(close.any())


def test_the_executor_draws_a_timeline_and_a_histogram(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    with FunctionExecutor(cluster.url) as fexec:
        futures = fexec.map("nap", range(20))
        assert fexec.get_result(futures) == list(range(20))
        timeline, histogram = fexec.plot(dst=tmp_path / "run")
    assert (timeline.name, histogram.name) == ("run_timeline.png", "run_histogram.png")
    for png in (timeline, histogram):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert has_colour(timeline, COLOURS["running"])
    assert has_colour(histogram, COLOURS["running"])
    assert not has_colour(tmp_path / "run_timeline.png", "#ff00ff")  # the check can fail


def test_fum_calls_plot_draws_the_listing(cluster: LocalCluster, tmp_path: Path) -> None:
    env = {"FUM_API_URL": cluster.url, "FUM_CONFIG": str(tmp_path / "c.toml"), "FUM_API_KEY": ""}
    result = CliRunner().invoke(
        app, ["calls", "-F", "nap", "--plot", str(tmp_path / "calls.png")], env=env
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "calls_timeline.png").is_file()
    assert has_colour(tmp_path / "calls_histogram.png", COLOURS["running"])
    empty = CliRunner().invoke(
        app, ["calls", "-F", "nothing-ever", "--plot", str(tmp_path / "none")], env=env
    )
    assert empty.exit_code == 1 and "nothing to plot" in empty.output


def test_a_call_is_cut_into_queued_set_up_and_running() -> None:
    call = Call(
        call_num=1,
        func_name="f",
        status="DONE",
        init_ms=300.0,
        created_at="2026-01-01T00:00:00+00:00",
        started_at="2026-01-01T00:00:01+00:00",
        finished_at="2026-01-01T00:00:02+00:00",
    )
    created, started, ready, finished = phases(call) or (0, 0, 0, 0)
    assert (started - created, ready - started, finished - ready) == pytest.approx((1, 0.3, 0.7))
    assert phases(Call(call_num=2, func_name="f", status="RUNNING")) is None
