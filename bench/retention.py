"""What retention costs the db's other requests: reads of a call, with it off and on.

    .venv/bin/python bench/retention.py [--calls 1000000] [--keep 100000]

A file of ``calls`` finished calls is built once (through the db's schema, as the tests'
fixture builds it) and copied for two db processes run one after the other: one with
retention off, one with ``FUM_DB_KEEP_CALLS=keep``. A client reads the newest call every 10 ms
from each while its pass runs (the first db: for as long as the second's pass took).
Printed as JSON: the reads' p50, p99 and max, the pass's time, the file's size before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fum_cli.local import free_port
from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.errors import Unavailable
from tests.support import build_calls_file


async def reads_while(
    folder: Path,
    source: Path,
    keys: ClusterKeys,
    settings: dict[str, str],
    seconds: float,
    call_num: int,
) -> dict[str, float]:
    """A db on a copy of ``source``: reads of call ``call_num`` until its retention pass
    is logged (or for ``seconds``, without retention)."""
    folder.mkdir()
    path = folder / "fum.sqlite3"
    shutil.copyfile(source, path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "FUM_DB_BIND": endpoint,
        "FUM_DB_PATH": str(path),
        "FUM_KEYS_DIR": str(keys.folder),
        "FUM_LOG_LEVEL": "info",
        "FUM_DB_RETENTION_INTERVAL": "3600",
        **settings,
    }
    log = folder / "db.log"
    with log.open("wb") as out:
        db = subprocess.Popen([sys.executable, "-m", "services.db"], env=env, stderr=out)
    ctx = zmq.asyncio.Context()
    client = DbClient(ctx, endpoint, keys, timeout=10.0)
    try:
        while True:
            try:
                await client.ping(deadline=0.5)
                break
            except Unavailable:
                assert db.poll() is None, log.read_text()
        started, times = time.perf_counter(), []
        while True:
            t0 = time.perf_counter()
            await client.get_call(call_num)
            times.append((time.perf_counter() - t0) * 1000)
            if settings and b'"db.retention"' in log.read_bytes():
                break
            if not settings and time.perf_counter() - started > seconds:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
        db.terminate()
        db.wait()
        ctx.destroy()
    times.sort()
    return {
        "reads": len(times),
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[int(len(times) * 0.99)], 2),
        "max_ms": round(times[-1], 2),
        "seconds": round(elapsed, 1),
        "mb_after": round(path.stat().st_size / 1e6, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--keep", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.sqlite3"
        await asyncio.to_thread(build_calls_file, source, args.calls)  # its own loop
        keys = ClusterKeys.open(Path(tmp) / "keys")
        keep = {"FUM_DB_KEEP_CALLS": str(args.keep)}
        on = await reads_while(Path(tmp) / "on", source, keys, keep, 0, args.calls)
        off = await reads_while(Path(tmp) / "off", source, keys, {}, on["seconds"], args.calls)
        report = {
            "calls": args.calls,
            "keep": args.keep,
            "mb_before": round(source.stat().st_size / 1e6, 1),
            "retention_off": off,
            "retention_on": on,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
