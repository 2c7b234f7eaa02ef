"""fum's executor beside Ray and Celery (+Redis) on the same no-op workload, in one run.

    .venv/bin/pip install -e '.[bench]'            # ray, celery, redis (the Python client)
    apt-get install redis-server                    # for Celery's broker and results
    .venv/bin/python bench/peers.py [--seq 1000] [--async-calls 5000] [--map 1000]
                                    [--workers 2] [--peers fum,fum-deployed,fum-api,ray,celery]
                                    [--json results.json]

Each system runs in its own child process, one after the other (never two at once on
the same cores), with ``--workers`` worker processes (fum: warm sandboxes; Ray:
``num_cpus``; Celery: prefork concurrency), and measures, after a warm-up:

- sequential latency: submit one no-op call and wait for its result, ``--seq`` times (p50/p99);
- async throughput: submit ``--async-calls`` calls at once, then wait for every result;
- map: ``--map`` items through the system's map (wall time to the last result).

The workload is ``def noop(x): return x``. fum runs it as a Python callable through
``FunctionExecutor`` (shipped with cloudpickle, as Ray ships it), and, as
``fum-deployed``, as a deployed handler function called by name; ``fum-api`` is the
same deployed function through the bare HTTP API (a blocking invoke; one
``POST /v1/calls`` and one ``POST /v1/calls/wait``), to show what the executor adds.
A system whose
packages are missing is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import percentile  # bench/common.py, beside this script (it puts the root on sys.path)

WARMUP = 200


def noop(x: Any) -> Any:
    return x


def measure(
    one: Callable[[int], Any],
    many: Callable[[int], list[Any]],
    mapped: Callable[[int], list[Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The three measurements, given: one call and its result; N calls submitted at once
    and all their results; a map of N items."""
    for i in range(WARMUP):
        assert one(i) == i
    assert many(WARMUP) == list(range(WARMUP))
    latencies = []
    for i in range(args.seq):
        started = time.perf_counter()
        result = one(i)
        latencies.append((time.perf_counter() - started) * 1000)
        assert result == i
    started = time.perf_counter()
    results = many(args.async_calls)
    async_s = time.perf_counter() - started
    assert results == list(range(args.async_calls))
    started = time.perf_counter()
    results = mapped(args.map)
    map_s = time.perf_counter() - started
    assert results == list(range(args.map))
    return {
        "seq_calls": args.seq,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": percentile(latencies, 99),
        "async_calls": args.async_calls,
        "async_s": round(async_s, 3),
        "async_per_s": round(args.async_calls / async_s),
        "map_items": args.map,
        "map_s": round(map_s, 3),
    }


# ---- fum


def run_fum(args: argparse.Namespace, deployed: bool, raw: bool = False) -> dict[str, Any]:
    from fum_cli.local import LocalCluster
    from fum_client import Client, FunctionExecutor
    from fum_client.packaging import pack_files

    with tempfile.TemporaryDirectory() as folder:
        cluster = LocalCluster(
            Path(folder),
            port=0,
            preload="function",
            capacity=args.workers,
            env={"FUM_PREWARM": str(args.workers), "FUM_SPARE": "0"},
        )
        cluster.start()
        try:
            with FunctionExecutor(cluster.url) as fexec, Client(cluster.url) as client:
                if deployed:
                    client.put_runtime("bench", "pythonruntime", "python3 -m fum main:handle")
                    source = b"def handle(params):\n    return params\n"
                    client.deploy_function("noop", pack_files({"main.py": source}), runtime="bench")
                    fn: Any = "noop"
                    wanted = "noop"
                else:
                    fn = noop
                    wanted = fexec.builtin_function  # deploys it (and its runtime)
                deadline = time.monotonic() + 120
                while True:  # the preload policy sets up --workers sandboxes of the function
                    nodes = client.list_nodes()
                    if nodes and nodes[0].idle.get(wanted, 0) >= args.workers:
                        break
                    assert time.monotonic() < deadline, f"sandboxes never ready: {nodes}"
                    time.sleep(0.2)

                if raw:  # the api itself, no executor: what the executor adds is the rest
                    return measure(
                        lambda i: client.invoke("noop", i).result,
                        lambda n: [
                            c.result
                            for c in client.wait_calls(
                                client.create_calls([("noop", i) for i in range(n)]), timeout=600
                            ).done
                        ],
                        lambda n: [
                            c.result
                            for c in client.wait_calls(
                                client.create_calls([("noop", i) for i in range(n)]), timeout=600
                            ).done
                        ],
                        args,
                    )

                def one(i: int) -> Any:
                    return fexec.call_async(fn, i).result(timeout=60)

                def many(n: int) -> list[Any]:
                    futures = [fexec.call_async(fn, i) for i in range(n)]
                    return list(fexec.get_result(futures, timeout=600))

                def mapped(n: int) -> list[Any]:
                    return list(fexec.get_result(fexec.map(fn, range(n)), timeout=600))

                return measure(one, many, mapped, args)
        finally:
            cluster.stop()


# ---- Ray


def run_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    ray.init(
        num_cpus=args.workers,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        remote_noop = ray.remote(noop)

        def one(i: int) -> Any:
            return ray.get(remote_noop.remote(i))

        def many(n: int) -> list[Any]:
            return list(ray.get([remote_noop.remote(i) for i in range(n)]))

        # Ray has no map: the idiom is a list of .remote() calls and one ray.get.
        return measure(one, many, many, args)
    finally:
        ray.shutdown()


# ---- Celery + Redis


CELERY_APP = """
import os
from celery import Celery

app = Celery("peers", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=64, broker_connection_retry_on_startup=True)


@app.task
def noop(x):
    return x
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_celery(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "peers_celery.py").write_text(CELERY_APP)
        env = {**os.environ, "BENCH_REDIS": url, "PYTHONPATH": folder}
        redis_proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        worker = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "peers_celery",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    str(args.workers),
                    "--loglevel",
                    "warning",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env=env,
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.environ["BENCH_REDIS"] = url
            sys.path.insert(0, folder)
            from celery import group
            from peers_celery import noop as task  # type: ignore[import-not-found]

            assert task.delay(1).get(timeout=60) == 1  # the worker is up

            def one(i: int) -> Any:
                return task.delay(i).get(timeout=60)

            def many(n: int) -> list[Any]:
                results = [task.delay(i) for i in range(n)]
                return [r.get(timeout=600) for r in results]

            def mapped(n: int) -> list[Any]:
                return list(group(task.s(i) for i in range(n))().get(timeout=600))

            return measure(one, many, mapped, args)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
            redis_proc.terminate()
            redis_proc.wait(30)


# ---- the run


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fum": lambda a: run_fum(a, deployed=False),
    "fum-deployed": lambda a: run_fum(a, deployed=True),
    "fum-api": lambda a: run_fum(a, deployed=True, raw=True),
    "ray": run_ray,
    "celery": run_celery,
}
LABELS = {
    "fum": "fum (executor, callable)",
    "fum-deployed": "fum (executor, deployed fn)",
    "fum-api": "fum (HTTP API, no executor)",
    "ray": "Ray",
    "celery": "Celery + Redis",
}


def child(args: argparse.Namespace) -> None:
    """Measure one system; print its result as JSON on the last line."""
    try:
        result: dict[str, Any] = RUNNERS[args.child](args)
    except ImportError as exc:
        result = {"skipped": f"not installed: {exc.name}"}
    print(json.dumps(result))


def markdown(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    names = list(results)
    head = "| | " + " | ".join(LABELS[n] for n in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    rows = [
        ("sequential p50 (ms)", "p50_ms", "{:.2f}"),
        ("sequential p99 (ms)", "p99_ms", "{:.2f}"),
        (f"{args.async_calls:,} async calls: calls/s", "async_per_s", "{:,}"),
        (f"{args.async_calls:,} async calls: s", "async_s", "{:.2f}"),
        (f"map of {args.map:,}: s", "map_s", "{:.3f}"),
    ]
    lines = [head, rule]
    for label, key, fmt in rows:
        cells = []
        for n in names:
            r = results[n]
            cells.append(fmt.format(r[key]) if key in r else r.get("skipped", r.get("error", "")))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=1000, help="sequential calls")
    parser.add_argument("--async-calls", type=int, default=5000)
    parser.add_argument("--map", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per system")
    parser.add_argument("--peers", default="fum,fum-deployed,fum-api,ray,celery")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results: dict[str, dict[str, Any]] = {}
    for name in args.peers.split(","):
        if name not in RUNNERS:
            parser.error(f"unknown peer {name!r} (known: {', '.join(RUNNERS)})")
        print(f"== {LABELS[name]}", file=sys.stderr, flush=True)
        argv = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--seq",
            str(args.seq),
            "--async-calls",
            str(args.async_calls),
            "--map",
            str(args.map),
            "--workers",
            str(args.workers),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            results[name] = {"error": f"failed (exit {proc.returncode}): {' / '.join(tail)}"}
        else:
            results[name] = json.loads(lines[-1])
        print(json.dumps(results[name]), file=sys.stderr, flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "workers": args.workers,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print()
    print(markdown(results, args))


if __name__ == "__main__":
    main()
