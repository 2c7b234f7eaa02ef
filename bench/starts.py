"""First calls as users meet them, per preload policy, beside a bare ``docker run``; JSON.

    .venv/bin/python bench/starts.py [--driver docker|process] [--rounds 5] [--burst 8]

For each policy, a fresh local cluster and ``rounds`` new functions of two runtimes:
``plain`` (a no-op handler, no dependencies command) and ``pip``, the README's seed
runtime with its ``pip3 install -r requirements.txt`` step and a function with a real
requirement (``rich`` and its dependencies, shipped as wheels in the package and
installed with ``--no-index``: no index is reached from a sandbox). A function's
build (its pip step, once, at deploy) is waited for before its first call, as
``fum fn deploy`` does. ``none`` measures a cold start (sandbox started on the call),
``runtime`` the specialisation of a generic sandbox, ``function`` a warm first call.
Each figure is the call's ``initMs`` (set-up on its path) and the client's latency of
the whole blocking invoke. ``burst``: with the ``runtime`` preload, ``--burst``
simultaneous first calls of a new short ``pip`` function: the time until the last
answer, and how many sandboxes were started for them. With the docker driver,
``docker run --rm pythonruntime true`` is timed in the same run (``rounds`` times before
the clusters and after them), and ``ratios`` relate the first calls to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import LocalCluster
from tests.support import Api, targz

ROOT = Path(__file__).resolve().parent.parent
NOOP = "def handle(params):\n    return None\n"
USES_RICH = "import rich.console\n\n\ndef handle(params):\n    return None\n"
RUN = "python3 -m fum main:handle"
RUNTIMES = {
    "plain": {"image": "pythonruntime", "dependencies": "", "run": RUN},
    "pip": {
        "image": "pythonruntime",
        "dependencies": "pip3 install -r requirements.txt",
        "run": RUN,
    },
}
EXPECTED = {"none": "cold", "runtime": "specialized", "function": "warm"}
WHEELS = ("rich", "markdown_it_py", "mdurl", "pygments")
WHEELHOUSE = ROOT / "deploy" / ".build" / "wheelhouse"


def rich_wheels(folder: Path) -> dict[str, bytes]:
    """rich and its dependencies as wheels: from the images' wheelhouse, else downloaded
    on this host (which reaches the index; the sandboxes need not)."""
    found = {w: sorted(WHEELHOUSE.glob(f"{w}-*.whl")) for w in WHEELS}
    if not all(found.values()):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--only-binary=:all:",
                "-d",
                str(folder),
                "--python-version",
                "3.11",
                "rich",
            ],
            check=True,
        )
        found = {w: sorted(folder.glob(f"{w}-*.whl")) for w in WHEELS}
    return {f"wheels/{paths[-1].name}": paths[-1].read_bytes() for paths in found.values()}


def pip_package(wheels: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    files = {
        "main.py": USES_RICH.encode(),
        "requirements.txt": b"--no-index\n--find-links wheels\nrich\n",
        **wheels,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_run_ms(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "pythonruntime", "true"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def deployed(api: Api, name: str, runtime: str, package: bytes) -> str:
    """Deploy, and wait for its build (if any) as fum fn deploy does; when it was over (a
    build shared with an earlier function is over at once: then when it was deployed)."""
    status, body = await api.deploy(name, runtime, package)
    assert status == 201, body
    while body["build"] is not None and body["build"]["status"] == "building":
        _, body = await api.request("GET", f"/v1/functions/{name}", params={"wait": 30})
    assert body["build"] is None or body["build"]["status"] == "ready", body
    return max(str(body["updatedAt"]), str(body["build"]["finishedAt"] if body["build"] else ""))


async def generic_ready(api: Api, runtime: str | None, after: str) -> None:
    """A heartbeat newer than ``after`` says a generic sandbox of the runtime is idle (or,
    with no runtime, only that it is newer)."""
    await api.wait_nodes(
        lambda n: n[0]["heardAt"] > after and (not runtime or n[0]["generic"].get(runtime, 0)),
        120,
    )


async def first_calls(
    api: Api, policy: str, kind: str, package: bytes, rounds: int
) -> dict[str, object]:
    init, total = [], []
    for i in range(rounds):
        name = f"{kind}{i}"
        # the first call comes once a heartbeat newer than the build (and than the last
        # call) says how the node stands: a generic sandbox idle with the runtime preload
        after = await deployed(api, name, kind, package)
        await generic_ready(api, kind if policy == "runtime" else None, after)
        if policy == "function":
            await api.wait_nodes(lambda n, f=name: n[0]["idle"].get(f, 0) >= 1, 120)
        t0 = time.perf_counter()
        _, call = await api.invoke(name)
        total.append((time.perf_counter() - t0) * 1000)
        assert call["status"] == "DONE" and call["start"] == EXPECTED[policy], call
        init.append(call["initMs"])
    return {
        "start": EXPECTED[policy],
        "init_ms_median": round(statistics.median(init), 1),
        "invoke_ms_median": round(statistics.median(total), 1),
        "invoke_ms_max": round(max(total), 1),
    }


async def burst(api: Api, package: bytes, size: int) -> dict[str, object]:
    """``size`` simultaneous first calls of a new function (a generic sandbox idle)."""
    await generic_ready(api, "pip", await deployed(api, "burst", "pip", package))
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(api.invoke("burst") for _ in range(size)))
    wall = (time.perf_counter() - t0) * 1000
    assert all(call["status"] == "DONE" for _, call in answers), answers
    starts = [call["start"] for _, call in answers]
    return {"calls": size, "wall_ms": round(wall, 1), "started": size - starts.count("warm")}


async def measure(
    policy: str, args: argparse.Namespace, packages: dict[str, bytes]
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        # every first call leaves a warm sandbox; room for them all, the burst's, and a
        # generic one per runtime (with the default 8, --rounds 5 filled the node)
        capacity = max(8, len(RUNTIMES) * (args.rounds + 1) + 2)
        cluster = LocalCluster(
            Path(folder), port=0, preload=policy, driver=args.driver, capacity=capacity
        )
        cluster.start()
        try:
            async with aiohttp.ClientSession(cluster.url) as session:
                api = Api(session)
                for kind, spec in RUNTIMES.items():
                    await api.runtime(kind, spec)
                result: dict[str, object] = {
                    kind: await first_calls(api, policy, kind, packages[kind], args.rounds)
                    for kind in RUNTIMES
                }
                if policy == "runtime":
                    result["burst"] = await burst(api, packages["pip"], args.burst)
                return result
        finally:
            cluster.stop()


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        packages = {
            "plain": targz({"main.py": NOOP}),
            "pip": pip_package(rich_wheels(Path(folder))),
        }
    docker = args.driver == "docker"
    baseline = docker_run_ms(args.rounds) if docker else []
    policies = {policy: await measure(policy, args, packages) for policy in EXPECTED}
    if docker:
        baseline += docker_run_ms(args.rounds)
    out: dict[str, object] = {"driver": args.driver, "rounds": args.rounds, **policies}
    specialised = policies["runtime"]["pip"]["invoke_ms_median"]  # type: ignore[index]
    cold = policies["none"]["pip"]["invoke_ms_median"]  # type: ignore[index]
    burst_wall = policies["runtime"]["burst"]["wall_ms"]  # type: ignore[index]
    ratios = {"burst_vs_one_first_call": round(burst_wall / specialised, 2)}
    if docker:
        run_ms = statistics.median(baseline)
        out["docker_run_ms_median"] = round(run_ms, 1)
        ratios["specialized_vs_docker_run"] = round(specialised / run_ms, 2)
        ratios["cold_vs_docker_run"] = round(cold / run_ms, 2)
    out["ratios"] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", default="docker", choices=["docker", "process"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
