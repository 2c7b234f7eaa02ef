"""A local cluster: keeper, db, api and workers as processes on loopback (process driver by
default).

``fum up`` runs one in the foreground; the tests and the benchmarks start one the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from services.api.auth import add_key
from services.common.ports import free_port
from services.common.proc import die_with_parent, python_module


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fum"


class ClusterError(RuntimeError):
    """The local cluster did not come up."""


@dataclass
class LocalCluster:
    """keeper + db + api + ``workers`` workers, each a ``python -m services.X`` process."""

    data_dir: Path
    port: int = 3000  # 0: any free port
    workers: int = 1
    preload: str = "runtime"
    policy: str = "warm-affinity"
    capacity: int = 8
    driver: str = "process"
    db_policy: str = "keep"
    log_level: str = "warning"
    # API keys (docs/SECURITY.md): the api takes only keys of <data>/api-keys; on each start
    # the cluster makes its own two there, ``admin`` (``api_key``, for its clients) and
    # ``node`` (for its workers' package fetches).
    auth: bool = False
    env: dict[str, str] = field(default_factory=dict)  # extra FUM_* settings for every process
    # A keeper or ZooKeeper ensemble to use ("host:port,..."), instead of starting a keeper.
    external_keeper: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.http_port = self.port or free_port()
        self.node_port = free_port()
        self.db_port = free_port()
        self.keeper_port = free_port()
        # where function sandboxes reach the keeper: loopback, or (docker) the gateway of
        # the cluster's network, known once start_keeper has made it
        self.sandbox_keeper_host = "127.0.0.1"
        # With the docker driver, each local cluster has its own network: the network is
        # what tells one cluster's function containers from another's on the same engine.
        self.docker_network = f"fum-local-{self.http_port}"
        self.keys_dir = self.data_dir / "keys"  # the control plane's (services/common/curve.py)
        self.api_key: str | None = None
        # every service but the api (its /metrics is on its HTTP port) serves its metrics
        # on a port of its own, kept across restarts (metrics_targets())
        self.metrics_ports: dict[str, int] = {}
        self._node_key = ""

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "api-keys"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def keeper_hosts(self) -> str:
        """The keeper as clients on this machine reach it."""
        return self.external_keeper or f"127.0.0.1:{self.keeper_port}"

    @property
    def sandbox_keeper_hosts(self) -> str:
        """The keeper as function sandboxes reach it."""
        return self.external_keeper or f"{self.sandbox_keeper_host}:{self.keeper_port}"

    def _env(self, **settings: object) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FUM_LOG_LEVEL": self.log_level,
                "FUM_DB_URL": f"tcp://127.0.0.1:{self.db_port}",
                "FUM_API_ENDPOINT": f"tcp://127.0.0.1:{self.node_port}",
                "FUM_API_URL": self.url,
                "FUM_KEYS_DIR": str(self.keys_dir),  # made by the first to start
            }
        )
        env.update(self.env)
        env.update({f"FUM_{k.upper()}": str(v) for k, v in settings.items()})
        return env

    def _spawn(self, name: str, service: str, log: Path, **settings: object) -> None:
        if service != "api":
            settings["metrics_port"] = self.metrics_ports.setdefault(name, free_port())
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                python_module(f"services.{service}"),
                env=self._env(**settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start every process and wait until the api answers with every worker registered."""
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.auth:
            self.api_key = add_key(self.keys_file, "admin")
            self._node_key = add_key(self.keys_file, "node")
        if not self.external_keeper:
            self.start_keeper()
        self.start_db()
        self.start_api()
        for node in range(self.workers):
            self.start_worker(node)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        targets = self.data_dir / "metrics-targets.json"
        targets.write_text(json.dumps(self.metrics_targets(), indent=2) + "\n")
        return self

    def metrics_targets(self) -> list[dict[str, object]]:
        """Where each service's metrics are, as Prometheus' file_sd_configs reads them
        (``start`` writes them to DATA/metrics-targets.json)."""
        api: dict[str, object] = {
            "targets": [f"127.0.0.1:{self.http_port}"],
            "labels": {"job": "fum-api"},
        }
        others: list[dict[str, object]] = [
            {
                "targets": [f"127.0.0.1:{port}"],
                "labels": {"job": f"fum-{name.split('-')[0]}", "instance": name},
            }
            for name, port in self.metrics_ports.items()
        ]
        return [api, *others]

    def _log(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def start_keeper(self, policy: str | None = None) -> None:
        if self.driver == "docker":
            self.sandbox_keeper_host = self._docker_gateway()
        self._spawn(
            "keeper",
            "keeper",
            self._log("keeper"),
            keeper_host=",".join(dict.fromkeys(["127.0.0.1", self.sandbox_keeper_host])),
            keeper_port=self.keeper_port,
            keeper_path=self.data_dir / "keeper.sqlite3",
            keeper_start_policy=policy or self.db_policy,
        )

    def _docker_gateway(self) -> str:
        """The gateway of this cluster's docker network (made now if it is not there)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import aiodocker

        from services.miniworker.docker_driver import ensure_network

        async def gateway() -> str:
            async with aiodocker.Docker() as docker:
                return await ensure_network(docker, self.docker_network)

        # a loop of its own, on a thread: the caller may be inside a running loop (tests)
        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(asyncio.run, gateway()).result()

    def start_db(self, policy: str | None = None) -> None:
        self._spawn(
            "db",
            "db",
            self._log("db"),
            db_bind=f"tcp://127.0.0.1:{self.db_port}",
            db_path=self.data_dir / "fum.sqlite3",
            db_start_policy=policy or self.db_policy,
        )

    def start_api(self) -> None:
        self._spawn(
            "api",
            "api",
            self._log("api"),
            http_port=self.http_port,
            node_bind=f"tcp://127.0.0.1:{self.node_port}",
            data_dir=self.data_dir / "api",
            invocation_policy=self.policy,
            api_keys=self.keys_file if self.auth else "",
            keeper_hosts=self.keeper_hosts,
        )

    def start_worker(self, node: int) -> None:
        self._spawn(
            f"worker-{node}",
            "worker",
            self._log(f"worker-{node}"),
            node_id=node,
            node_dir=self.data_dir / f"node-{node}",
            preload=self.preload,
            capacity=self.capacity,
            driver=self.driver,
            docker_network=self.docker_network,
            **({"api_key": self._node_key} if self.auth else {}),
            keeper_hosts=self.sandbox_keeper_hosts,
        )

    def restart(self, name: str) -> None:
        """Start the service ``name`` again after it died, on its ports, with its data
        (the keeper and the db keep what they hold, whatever ``db_policy`` said at start)."""
        starts: dict[str, Callable[[], None]] = {
            "keeper": partial(self.start_keeper, "keep"),
            "db": partial(self.start_db, "keep"),
            "api": self.start_api,
            **{f"worker-{node}": partial(self.start_worker, node) for node in range(self.workers)},
        }
        self.procs.pop(name).wait()
        starts[name]()

    def get(self, path: str) -> object:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float, workers: int | None = None) -> None:
        want = self.workers if workers is None else workers
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with status {proc.returncode}; see {self.data_dir / 'logs'}"
                    )
            try:
                nodes = self.get("/v1/nodes")
                if isinstance(nodes, dict) and len(nodes["items"]) >= want:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the cluster was not ready within {timeout:g}s; see {self.data_dir / 'logs'}"
                )
            time.sleep(0.05)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Workers first (they stop their miniworkers), then the api, then the db."""
        for name in [n for n in self.procs if n.startswith("worker")]:
            self.procs[name].send_signal(signal.SIGTERM)
        for name in [n for n in list(self.procs) if n.startswith("worker")]:
            self.stop_process(name)
        self.stop_process("api")
        self.stop_process("db")
        self.stop_process("keeper")
        if self.driver == "docker":
            subprocess.run(
                ["docker", "network", "rm", self.docker_network], capture_output=True, check=False
            )

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
