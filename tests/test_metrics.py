"""Every service's metrics, read after known work: a call counted once, its start counted
by its kind, a 429 counted, and the labels bounded (no call numbers, no params)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fum_cli.local import LocalCluster
from fum_client import Client, TriggerflowExecutor

from .keeper import kazoo_client
from .support import Api

ROOT = Path(__file__).resolve().parent.parent
# every label any fum metric may carry: small, bounded sets
LABELS = {"method", "route", "status", "function", "kind", "node", "state", "type", "writes"}
LABELS |= {"op", "purpose", "le", "quantile"}
SLEEPER = "import time\n\ndef handle(p):\n    time.sleep(p.get('s', 0))\n    return p\n"


@pytest.fixture(scope="module")
def driver() -> str:
    """conftest's ``cluster``, with the process driver only."""
    return "process"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def fum_labels(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {k for (name, labels) in samples if name.startswith("fum_") for k, _ in labels}


async def test_a_call_is_counted_once_with_its_start(cluster: LocalCluster) -> None:
    before = scrape(f"{cluster.url}/metrics")
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        name = await api.handler_function("echo", "pyh")
        calls = [(await api.invoke(name, {"i": i}))[1] for i in range(3)]
    assert [c["status"] for c in calls] == ["DONE"] * 3
    after = scrape(f"{cluster.url}/metrics")
    assert value(after, "fum_calls_total", function=name, status="DONE") == 3
    kinds = [c["start"] for c in calls]
    assert kinds[0] in ("cold", "specialized") and kinds[1:] == ["warm", "warm"]
    for kind in set(kinds):
        grown = value(after, "fum_starts_total", kind=kind) - value(
            before, "fum_starts_total", kind=kind
        )
        assert grown == kinds.count(kind), kind
        setups = value(after, "fum_start_setup_seconds_count", kind=kind) - value(
            before, "fum_start_setup_seconds_count", kind=kind
        )
        assert setups == kinds.count(kind)
    route = "/v1/functions/{name}/invoke"
    assert value(after, "fum_http_requests_total", method="POST", route=route, status="200") >= 3
    assert value(after, "fum_http_request_duration_seconds_count", method="POST", route=route) >= 3
    assert value(after, "fum_nodes") == 1
    assert value(after, "fum_call_queue_wait_seconds_count", function=name) == 3
    assert fum_labels(after) <= LABELS
    # a call's number appears in no label, nor does any raw path
    assert not any(f"/v1/calls/{c['callNum']}" in str(k) for c in calls for k in after)


async def test_a_429_is_counted(cluster: LocalCluster) -> None:
    async with aiohttp.ClientSession(cluster.url) as session:
        api = Api(session)
        await api.runtime("pyh")
        status, _ = await api.deploy("slow-one", "pyh", targz_of(SLEEPER), concurrency=1, queue=0)
        assert status == 201
        before = value(scrape(f"{cluster.url}/metrics"), "fum_calls_rejected_total")
        first, _ = await api.invoke("slow-one", {"s": 2}, blocking=False)
        second, body = await api.invoke("slow-one", {"s": 0}, blocking=False)
        assert (first, second) == (202, 429), body
    after = scrape(f"{cluster.url}/metrics")
    assert value(after, "fum_calls_rejected_total") == before + 1
    assert value(after, "fum_http_requests_total", method="POST",
                 route="/v1/functions/{name}/invoke", status="429") >= 1  # fmt: skip


def coordinate(x: int) -> int:
    return x + 1


def targz_of(source: str) -> bytes:
    from .support import targz

    return targz({"main.py": source})


async def test_every_service_serves_its_metrics(cluster: LocalCluster) -> None:
    targets = json.loads((cluster.data_dir / "metrics-targets.json").read_text())
    jobs = {t["labels"]["job"]: t["targets"][0] for t in targets}
    assert set(jobs) == {"fum-api", "fum-db", "fum-worker", "fum-keeper"}
    with kazoo_client(cluster.keeper_hosts) as zk:
        zk.ensure_path("/metrics-test/a")
        zk.get("/metrics-test/a", watch=lambda event: None)
        keeper = scrape(f"http://{jobs['fum-keeper']}/metrics")
        assert value(keeper, "fum_keeper_sessions") >= 1
        assert value(keeper, "fum_keeper_znodes") >= 3  # /, /zookeeper..., /metrics-test/a
        assert value(keeper, "fum_keeper_watches") >= 1
        assert value(keeper, "fum_keeper_request_duration_seconds_count", op="create") >= 1
        assert value(keeper, "fum_keeper_commit_duration_seconds_count") >= 1
    with Client(cluster.url) as client:  # a workflow session and a durable execution, done
        client.deploy_app("metrics-hb", ROOT / "tests" / "data" / "unum" / "hello-bye")
        assert client.start_session("metrics-hb", "bye", timeout=60).status == "DONE"
    with TriggerflowExecutor(cluster.url) as tf:
        assert tf.run(coordinate, 41, name="metrics-x").result(timeout=60) == 42
    db = scrape(f"http://{jobs['fum-db']}/metrics")
    assert value(db, "fum_workflow_sessions", status="DONE") >= 1
    assert value(db, "fum_durable_executions", status="DONE") >= 1
    assert value(db, "fum_db_transaction_duration_seconds_count", writes="true") >= 1
    assert value(db, "fum_db_batch_requests_count") >= 1
    assert value(db, "fum_db_requests_total", type="ping") >= 1
    worker = scrape(f"http://{jobs['fum-worker']}/metrics")
    assert sum(value(worker, "fum_worker_sandboxes", state=s) for s in ("idle", "busy")) >= 1
    api = scrape(f"http://{jobs['fum-api']}/metrics")
    assert value(api, "fum_worker_heartbeats_total", node="0") >= 1
    for samples in (keeper, db, worker, api):
        assert fum_labels(samples) <= LABELS
        assert value(samples, "process_cpu_seconds_total") > 0  # the process's own figures
