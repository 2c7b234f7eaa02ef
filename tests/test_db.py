"""The db service as a real process on a real socket, through DbClient and raw ZeroMQ."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from services.common.curve import ClusterKeys
from services.common.db_client import DbClient
from services.common.db_protocol import (
    DB_PROTOCOL,
    CallReply,
    CallsCreated,
    CallsUpdated,
    CreateCalls,
    DeleteFunction,
    FinishInstance,
    FinishInstances,
    GetCall,
    GetRuntime,
    InstancesFinished,
    Ping,
    Pong,
    PutFunction,
    PutRuntime,
    RuntimeReply,
    UpdateCalls,
)
from services.common.errors import BadRequest, Conflict, NotFound, Unavailable
from services.common.models import (
    CallUpdate,
    Function,
    Limits,
    NewCall,
    NextInstance,
    Runtime,
    Session,
)
from services.common.proc import python_module
from services.common.protocol import Error, Message
from services.db.store import MIGRATIONS, SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent
START_DEADLINE = 20.0
STOP_DEADLINE = 10.0


def free_port() -> int:
    """A loopback port free right now (the db binds it moments later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class DbProcess:
    endpoint: str
    path: Path
    log: Path
    process: asyncio.subprocess.Process

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def batch_sizes(self, event: str = "db.batch") -> list[int]:
        """How many requests each batch logged with ``event`` had, in order."""
        lines = [line for line in self.log_text().splitlines() if line.startswith("{")]
        return [
            entry["requests"] for entry in map(json.loads, lines) if entry.get("event") == event
        ]


@dataclass
class DbLauncher:
    """Starts db processes in a test's folder; stops every one it started."""

    tmp_path: Path
    ctx: zmq.asyncio.Context
    keys: ClusterKeys  # the db's and its clients' (made before the db starts)
    started: list[DbProcess] = field(default_factory=list)

    async def start(
        self,
        *,
        path: Path | None = None,
        policy: str = "keep",
        sync: str = "normal",
        settings: dict[str, str] | None = None,
    ) -> DbProcess:
        port = free_port()
        db = DbProcess(
            endpoint=f"tcp://127.0.0.1:{port}",
            path=path or self.tmp_path / "fum.sqlite3",
            log=self.tmp_path / f"db-{port}.log",
            process=None,  # type: ignore[arg-type]  # started just below
        )
        env = {
            **os.environ,
            "FUM_DB_BIND": db.endpoint,
            "FUM_DB_PATH": str(db.path),
            "FUM_DB_START_POLICY": policy,
            "FUM_DB_SYNC": sync,
            "FUM_KEYS_DIR": str(self.keys.folder),
            "FUM_LOG_LEVEL": "debug",
            **(settings or {}),
        }
        with db.log.open("wb") as log:
            db.process = await asyncio.create_subprocess_exec(
                *python_module("services.db"), cwd=REPO, env=env, stderr=log
            )
        self.started.append(db)
        await self.wait_ready(db)
        return db

    async def wait_ready(self, db: DbProcess) -> None:
        """Ping until the db answers, or fail with its log if it died or took too long."""
        client = DbClient(self.ctx, db.endpoint, self.keys)
        try:
            deadline = time.monotonic() + START_DEADLINE
            while True:
                if db.process.returncode is not None:
                    pytest.fail(f"db exited with {db.process.returncode}:\n{db.log_text()}")
                try:
                    await client.ping(deadline=0.25)
                    return
                except Unavailable:
                    if time.monotonic() > deadline:
                        pytest.fail(f"db did not answer a ping in time:\n{db.log_text()}")
        finally:
            await client.close()

    async def stop(self, db: DbProcess, sig: int = signal.SIGTERM) -> int:
        if db.process.returncode is None:
            db.process.send_signal(sig)
        return await asyncio.wait_for(db.process.wait(), STOP_DEADLINE)

    async def close(self) -> None:
        for db in self.started:
            if db.process.returncode is None:
                db.process.kill()
            await asyncio.wait_for(db.process.wait(), STOP_DEADLINE)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def keys(tmp_path: Path) -> ClusterKeys:
    return ClusterKeys.open(tmp_path / "keys")


@pytest.fixture
async def launcher(
    tmp_path: Path, ctx: zmq.asyncio.Context, keys: ClusterKeys
) -> AsyncIterator[DbLauncher]:
    launcher = DbLauncher(tmp_path, ctx, keys)
    try:
        yield launcher
    finally:
        await launcher.close()


@pytest.fixture
async def db(launcher: DbLauncher) -> DbProcess:
    return await launcher.start()


@pytest.fixture
async def client(
    ctx: zmq.asyncio.Context, keys: ClusterKeys, db: DbProcess
) -> AsyncIterator[DbClient]:
    client = DbClient(ctx, db.endpoint, keys, timeout=10.0)
    yield client
    await client.close()


@pytest.fixture
async def dealer(
    ctx: zmq.asyncio.Context, keys: ClusterKeys, db: DbProcess
) -> AsyncIterator[zmq.asyncio.Socket]:
    sock = keys.client(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(db.endpoint)
    yield sock
    sock.close()


def runtime(name: str = "python3") -> Runtime:
    return Runtime(name=name, image="python:3.12-slim", run="python main.py", path="/ws")


def function(name: str = "hello", runtime: str = "python3") -> Function:
    return Function(
        name=name,
        runtime=runtime,
        sha256="ab" * 32,
        filename=f"{name}.zip",
        size=123,
        limits=Limits(timeout=5.0, memory=256, cpus=0.5, pids=64),
    )


def new_call(func_name: str = "hello", params: bytes = b'{"x": 1}') -> NewCall:
    return NewCall(
        uuid=str(uuid.uuid4()), func_name=func_name, params=params, created_at=time.time()
    )


async def request_all(
    sock: zmq.asyncio.Socket, messages: list[Message], timeout: float = 30.0
) -> list[Message]:
    """Pipeline every message on one DEALER, then match each reply to its request id."""
    for number, message in enumerate(messages):
        await sock.send_multipart([number.to_bytes(4, "big"), DB_PROTOCOL.encode(message)])
    return await replies_to(sock, messages, timeout)


async def request_one_batch(
    db: DbProcess, sock: zmq.asyncio.Socket, messages: list[Message]
) -> list[Message]:
    """Like ``request_all``, but the db surely reads ``messages`` as one batch.

    The write lock of the file is held here while a first request, sent alone, waits for
    it inside the db (a DELETE, whose lock wait SQLite retries up to the busy timeout);
    the rest queue up at the db meanwhile, and are all waiting when the lock goes.
    """
    gate = DeleteFunction(name="gate")
    lock = sqlite3.connect(db.path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        await sock.send_multipart([len(messages).to_bytes(4, "big"), DB_PROTOCOL.encode(gate)])
        await asyncio.sleep(0.2)
        for number, message in enumerate(messages):
            await sock.send_multipart([number.to_bytes(4, "big"), DB_PROTOCOL.encode(message)])
        await asyncio.sleep(0.2)
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    *replies, opened = await replies_to(sock, [*messages, gate])
    assert isinstance(opened, Error)
    assert opened.code == "not_found"
    return replies


async def replies_to(
    sock: zmq.asyncio.Socket, messages: list[Message], timeout: float = 30.0
) -> list[Message]:
    """The replies to ``messages``, sent with their index as request id, in their order."""
    replies: dict[int, Message] = {}
    async with asyncio.timeout(timeout):
        while len(replies) < len(messages):
            request_id, payload = await sock.recv_multipart()
            number = int.from_bytes(request_id, "big")
            assert number not in replies, "a request got two replies"
            replies[number] = DB_PROTOCOL.decode(payload)
    return [replies[number] for number in range(len(messages))]


# ---- runtimes and functions


async def test_runtime_crud(client: DbClient) -> None:
    stored, created = await client.put_runtime(runtime())
    assert created
    assert stored.created_at > 0
    assert stored.updated_at == stored.created_at

    again, created = await client.put_runtime(msgspec.structs.replace(runtime(), image="py:2"))
    assert not created
    assert again.image == "py:2"
    assert again.created_at == stored.created_at
    assert again.updated_at >= stored.updated_at

    assert await client.get_runtime("python3") == again
    await client.put_runtime(runtime("alpha"))
    assert [r.name for r in await client.list_runtimes()] == ["alpha", "python3"]

    await client.delete_runtime("python3")
    with pytest.raises(NotFound):
        await client.get_runtime("python3")
    with pytest.raises(NotFound):
        await client.delete_runtime("python3")
    assert [r.name for r in await client.list_runtimes()] == ["alpha"]


async def test_function_crud_and_errors(client: DbClient) -> None:
    with pytest.raises(NotFound, match="runtime"):
        await client.put_function(function())
    with pytest.raises(NotFound):
        await client.get_function("hello")
    with pytest.raises(NotFound):
        await client.delete_function("hello")

    await client.put_runtime(runtime())
    stored, created = await client.put_function(function())
    assert created
    assert stored.limits == Limits(timeout=5.0, memory=256, cpus=0.5, pids=64)
    assert await client.get_function("hello") == stored

    replaced, created = await client.put_function(msgspec.structs.replace(function(), size=9))
    assert not created
    assert replaced.size == 9
    assert replaced.created_at == stored.created_at
    await client.put_function(function("bye"))
    assert [f.name for f in await client.list_functions()] == ["bye", "hello"]

    with pytest.raises(Conflict, match="bye, hello"):
        await client.delete_runtime("python3")
    assert await client.get_runtime("python3")

    await client.delete_function("hello")
    await client.delete_function("bye")
    assert await client.list_functions() == []
    await client.delete_runtime("python3")
    assert await client.list_runtimes() == []


async def test_invalid_names_are_bad_requests(client: DbClient) -> None:
    with pytest.raises(BadRequest):
        await client.put_runtime(runtime("../etc"))
    await client.put_runtime(runtime())
    with pytest.raises(BadRequest):
        await client.put_function(function("a b"))
    with pytest.raises(BadRequest):
        await client.create_call(new_call("no/slash"))


# ---- calls


async def test_concurrent_creates_are_coalesced(client: DbClient) -> None:
    first = await client.create_call(new_call())
    sent = client.requests_sent
    calls = await asyncio.gather(*(client.create_call(new_call()) for _ in range(500)))
    assert client.requests_sent == sent + 1, "500 creates in one iteration: one message"
    numbers = [call.call_num for call in calls]
    assert numbers == list(range(first.call_num + 1, first.call_num + 501))
    assert all(call.status == "PENDING" and call.attempts == 0 for call in calls)
    stored = await client.get_call(calls[123].call_num)
    assert stored == calls[123]


async def test_create_is_idempotent_by_uuid(client: DbClient) -> None:
    call = new_call()
    first = await client.create_call(call)
    retried = await client.create_call(msgspec.structs.replace(call, params=b'{"other": 1}'))
    assert retried == first
    # The same uuid twice in one message, beside a new one.
    twin = new_call()
    a, b, c = await asyncio.gather(
        client.create_call(twin), client.create_call(call), client.create_call(twin)
    )
    assert a == c
    assert b == first
    assert a.call_num == first.call_num + 1
    assert len(await client.list_calls()) == 2


async def test_update_semantics(client: DbClient) -> None:
    call = await client.create_call(new_call())
    num = call.call_num

    assert await client.update_call(
        CallUpdate(call_num=num, status="RUNNING", node_id=3, attempts=1, started_at=10.0)
    )
    running = await client.get_call(num)
    assert (running.status, running.node_id, running.attempts) == ("RUNNING", 3, 1)

    assert await client.update_call(
        CallUpdate(
            call_num=num,
            status="DONE",
            result=b'{"y": 2}',
            start="warm",
            init_ms=1.5,
            finished_at=11.0,
        )
    )
    done = await client.get_call(num)
    assert done.status == "DONE"
    assert done.result == b'{"y": 2}'
    assert done.node_id == 3, "fields left None keep the stored value"
    assert (done.started_at, done.finished_at) == (10.0, 11.0)
    assert (done.start, done.init_ms) == ("warm", 1.5)

    assert not await client.update_call(CallUpdate(call_num=num, status="DONE", result=b"9"))
    assert not await client.update_call(CallUpdate(call_num=num, status="ERROR", error="x"))
    assert not await client.update_call(CallUpdate(call_num=num, status="RUNNING", node_id=4))
    assert await client.get_call(num) == done

    assert not await client.update_call(CallUpdate(call_num=999_999, status="RUNNING"))
    with pytest.raises(BadRequest):
        await client.update_call(CallUpdate(call_num=num, status="FINISHED"))


async def test_two_results_in_one_message_only_first_applies(client: DbClient) -> None:
    call = await client.create_call(new_call())
    sent = client.requests_sent
    applied = await asyncio.gather(
        client.update_call(CallUpdate(call_num=call.call_num, status="RUNNING")),
        client.update_call(CallUpdate(call_num=call.call_num, status="DONE", result=b"1")),
        client.update_call(CallUpdate(call_num=call.call_num, status="DONE", result=b"2")),
        client.update_call(CallUpdate(call_num=call.call_num, status="TIMEOUT")),
    )
    assert client.requests_sent == sent + 1
    assert applied == [True, True, False, False]
    assert (await client.get_call(call.call_num)).result == b"1"


async def test_update_carrying_the_call_creates_it(client: DbClient) -> None:
    """A blocking call the api did not store: its worker's write creates it, once; the
    api's later create of the same call (by uuid) finds it and changes nothing."""
    first = await client.reserve_call_nums(3)
    new = msgspec.structs.replace(new_call(), call_num=first)
    done = CallUpdate(call_num=first, status="DONE", result=b"1", attempts=1, new=new)
    sent = client.requests_sent
    applied = await asyncio.gather(
        client.update_call(msgspec.structs.replace(done, status="RUNNING", result=None)),
        client.update_call(done),
        client.update_call(msgspec.structs.replace(done, result=b"2")),
    )
    assert client.requests_sent == sent + 1 and applied == [True, True, False]
    stored = await client.get_call(first)
    assert (stored.status, stored.result, stored.uuid) == ("DONE", b"1", new.uuid)
    assert (stored.params, stored.created_at) == (new.params, new.created_at)
    assert await client.create_call(new) == stored
    assert not await client.update_call(done)
    # Stored by the api first (a long call): the worker's write is a plain update.
    later = msgspec.structs.replace(new_call(), call_num=first + 1)
    await client.create_call(later)
    assert await client.update_call(
        CallUpdate(call_num=first + 1, status="ERROR", error="x", new=later)
    )
    assert (await client.get_call(first + 1)).error == "x"
    # A call whose number was never set aside is not created: its update applies nowhere,
    # and the others sent with it still apply.
    bad = msgspec.structs.replace(new_call(), call_num=10**9)
    later = msgspec.structs.replace(new_call(), call_num=first + 2)
    applied = await asyncio.gather(
        client.update_call(CallUpdate(call_num=10**9, status="DONE", new=bad)),
        client.update_call(CallUpdate(call_num=first + 2, status="DONE", new=later)),
    )
    assert applied == [False, True]
    with pytest.raises(NotFound):
        await client.get_call(10**9)


async def test_requeue_before_final(client: DbClient) -> None:
    call = await client.create_call(new_call())
    assert await client.update_call(CallUpdate(call_num=call.call_num, status="RUNNING"))
    assert await client.update_call(
        CallUpdate(call_num=call.call_num, status="PENDING", attempts=1)
    )
    assert (await client.get_call(call.call_num)).status == "PENDING"


async def test_logs(client: DbClient) -> None:
    call = await client.create_call(new_call())
    assert await client.get_call_logs(call.call_num) == ""
    await client.update_call(
        CallUpdate(call_num=call.call_num, status="ERROR", error="boom", logs="line 1\nline 2\n")
    )
    assert await client.get_call_logs(call.call_num) == "line 1\nline 2\n"
    assert (await client.get_call(call.call_num)).error == "boom"
    with pytest.raises(NotFound):
        await client.get_call_logs(424242)
    with pytest.raises(NotFound):
        await client.get_call(424242)


async def test_list_calls_filters_and_paging(client: DbClient) -> None:
    created = await client.create_calls([new_call("alpha" if n % 2 else "beta") for n in range(20)])
    nums = [call.call_num for call in created]
    alpha = [call.call_num for call in created if call.func_name == "alpha"]
    done = alpha[:3]
    await client.update_calls([CallUpdate(call_num=n, status="DONE") for n in done])

    everything = await client.list_calls()
    assert [c.call_num for c in everything] == nums[::-1], "newest first"

    by_func = await client.list_calls(func_name="alpha")
    assert [c.call_num for c in by_func] == alpha[::-1]
    by_status = await client.list_calls(status="DONE")
    assert [c.call_num for c in by_status] == done[::-1]
    both = await client.list_calls(func_name="beta", status="DONE")
    assert both == []
    assert len(await client.list_calls(func_name="alpha", status="PENDING")) == len(alpha) - 3
    assert await client.list_calls(func_name="nobody") == []

    # Page back with ``before``, five at a time, until nothing is left.
    pages: list[int] = []
    before: int | None = None
    while page := await client.list_calls(limit=5, before=before):
        assert len(page) <= 5
        pages.extend(c.call_num for c in page)
        before = page[-1].call_num
    assert pages == nums[::-1]

    newer = await client.list_calls(after=nums[15])
    assert [c.call_num for c in newer] == nums[16:][::-1]
    window = await client.list_calls(after=nums[4], before=nums[8])
    assert [c.call_num for c in window] == nums[5:8][::-1]

    with pytest.raises(BadRequest):
        await client.list_calls(status="SLEEPING")


async def test_list_limit_is_clamped(client: DbClient) -> None:
    await client.create_calls([new_call() for _ in range(1005)])
    assert len(await client.list_calls(limit=0)) == 1
    assert len(await client.list_calls(limit=-5)) == 1
    assert len(await client.list_calls(limit=5000)) == 1000


# ---- the socket: bad input, many in flight, one failure in a batch


async def test_bad_messages_get_error_replies(
    ctx: zmq.asyncio.Context, keys: ClusterKeys, db: DbProcess
) -> None:
    sock = keys.client(ctx.socket(zmq.REQ))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(db.endpoint)
    cases = [
        ({"msgType": "nope", "content": {}}, "unknown_message"),
        ({"msgType": "getCall", "content": {"callNum": "x"}}, "bad_request"),
        ({"msgType": "pong", "content": {"startedAt": 1.0}}, "unknown_message"),
        ({"msgType": "getCall", "content": {"callNum": 1}}, "not_found"),
    ]
    try:
        async with asyncio.timeout(10):
            for raw, code in cases:
                await sock.send(msgspec.msgpack.encode(raw))
                reply = DB_PROTOCOL.decode(await sock.recv())
                assert isinstance(reply, Error), raw
                assert reply.code == code, reply
            await sock.send(b"\xc1 definitely not msgpack")
            reply = DB_PROTOCOL.decode(await sock.recv())
            assert isinstance(reply, Error)
            assert reply.code == "bad_request"
            await sock.send(DB_PROTOCOL.encode(Ping()))
            assert isinstance(DB_PROTOCOL.decode(await sock.recv()), Pong)
    finally:
        sock.close()


async def test_many_requests_in_flight_on_one_dealer(
    client: DbClient, dealer: zmq.asyncio.Socket
) -> None:
    created = await client.create_calls([new_call() for _ in range(200)])
    messages: list[Message] = []
    for n in range(3000):
        if n % 3 == 0:
            messages.append(Ping())
        else:
            messages.append(GetCall(call_num=created[n % 200].call_num))
    replies = await request_all(dealer, messages)
    for message, reply in zip(messages, replies, strict=True):
        if isinstance(message, GetCall):
            assert isinstance(reply, CallReply)
            assert reply.call.call_num == message.call_num
        else:
            assert isinstance(reply, Pong)


async def test_failing_request_leaves_its_batch_intact(
    client: DbClient, dealer: zmq.asyncio.Socket, db: DbProcess
) -> None:
    messages: list[Message] = [CreateCalls(calls=[new_call(), new_call()]) for _ in range(60)]
    messages[20] = CreateCalls(calls=[new_call(), new_call("bad name")])
    messages[40] = PutFunction(function=function(runtime="missing"))
    messages[50] = PutRuntime(runtime=runtime())
    replies = await request_one_batch(db, dealer, messages)

    assert isinstance(replies[20], Error)
    assert replies[20].code == "bad_request"
    assert isinstance(replies[40], Error)
    assert replies[40].code == "not_found"
    assert isinstance(replies[50], RuntimeReply)
    assert await client.get_runtime("python3") == replies[50].runtime
    created = [
        call.call_num
        for reply in replies
        if isinstance(reply, CallsCreated)
        for call in reply.calls
    ]
    assert len(created) == 57 * 2
    assert created == sorted(created)
    assert len(set(created)) == len(created)
    stored = await client.list_calls(limit=1000)
    assert sorted(c.call_num for c in stored) == created
    assert created == list(range(1, len(created) + 1)), "a failed create takes no number"
    assert (await client.create_call(new_call())).call_num == len(created) + 1
    # Logged after the replies went, but before the db read the next request.
    assert 60 in db.batch_sizes(), "the requests ran as one batch"


async def test_finish_instances_of_one_batch_go_together_each_answered(
    client: DbClient, dealer: zmq.asyncio.Socket, db: DbProcess
) -> None:
    """Workers' FinishInstances that the db reads together are done as one group, in
    order (a step of one message loses to the same instance's in an earlier one), and
    each message gets its own steps back; a malformed one fails alone."""
    session = Session(id=uuid.uuid4().hex, app="m", created_at=time.time())
    start = await client.start_session(session, "Start", new_call("m.Start"))
    nexts = [
        NextInstance(instance=name, uuid=uuid.uuid4().hex, func_name="m.Next", params=b"{}")
        for name in ("A", "B")
    ]
    (started,) = await client.finish_instances(
        [
            FinishInstance(
                session=session.id,
                instance="Start",
                update=CallUpdate(call_num=start.call_num, status="DONE", result=b"0"),
                calls=nexts,
            )
        ]
    )
    a, b = started.sent

    def done(instance: str, call_num: int, result: bytes, status: str = "DONE") -> FinishInstance:
        update = CallUpdate(call_num=call_num, status=status, result=result)
        return FinishInstance(session=session.id, instance=instance, update=update)

    replies = await request_one_batch(
        db,
        dealer,
        [
            FinishInstances(steps=[done("A", a.call_num, b"1")]),
            FinishInstances(steps=[done("B", b.call_num, b"2", status="FINE")]),
            FinishInstances(steps=[done("A", a.call_num, b"3"), done("B", b.call_num, b"2")]),
        ],
    )
    await client.list_runtimes()  # the batch is logged after its replies, before the next
    assert 3 in db.batch_sizes(), "the requests ran as one batch"
    first, malformed, last = replies
    assert isinstance(first, InstancesFinished) and [s.won for s in first.steps] == [True]
    assert isinstance(malformed, Error) and malformed.code == "bad_request"
    assert isinstance(last, InstancesFinished)
    lost, ended = last.steps
    assert not lost.won and lost.call is not None and lost.call.result == b"1"
    assert ended.won and ended.session is not None
    assert (ended.session.status, ended.session.result) == ("DONE", b"[1,2]")


def deferred_call_check(path: Path) -> None:
    """A database at the current schema where a call must name a stored function, checked
    only at COMMIT: a create of an unknown function makes its batch's commit fail."""
    column = "func_name TEXT NOT NULL,"
    checked = "func_name TEXT NOT NULL REFERENCES functions (name) DEFERRABLE INITIALLY DEFERRED,"
    statements = [statement for migration in MIGRATIONS for statement in migration]
    # the calls table: made by migration 1, rebuilt by 4 (WAITING); the last one counts
    assert sum(column in statement for statement in statements) == 2
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            db.execute(statement.replace(column, checked))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        db.close()


async def test_failed_commit_fails_the_whole_batch(
    launcher: DbLauncher, ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    deferred_call_check(tmp_path / "deferred.sqlite3")
    db = await launcher.start(path=tmp_path / "deferred.sqlite3")
    client = DbClient(ctx, db.endpoint, launcher.keys)
    sock = launcher.keys.client(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(db.endpoint)
    try:
        await client.put_runtime(runtime())
        await client.put_function(function())
        # A lone writer whose commit fails.
        with pytest.raises(Unavailable, match="not committed"):
            await client.create_call(new_call("ghost"))

        # Three writers (each in its savepoint) and a read: every statement succeeds, the
        # commit does not, and no request of the batch may be answered as done.
        replies = await request_one_batch(
            db,
            sock,
            [
                CreateCalls(calls=[new_call()]),
                PutRuntime(runtime=runtime("other")),
                GetRuntime(name="python3"),
                CreateCalls(calls=[new_call("ghost")]),
            ],
        )
        for reply in replies:
            assert isinstance(reply, Error), reply
            assert reply.code == "unavailable"
            assert "FOREIGN KEY" in reply.message
        assert db.batch_sizes("db.batch_failed") == [1, 4]

        # All rolled back, the call counter too, and the db serves on.
        assert await client.list_calls() == []
        with pytest.raises(NotFound):
            await client.get_runtime("other")
        assert (await client.create_call(new_call())).call_num == 1
    finally:
        sock.close()
        await client.close()


async def test_pipelined_requests_see_each_other_in_order(
    client: DbClient, dealer: zmq.asyncio.Socket
) -> None:
    num = (await client.create_call(new_call())).call_num + 1
    replies = await request_all(
        dealer,
        [
            GetCall(call_num=num),
            CreateCalls(calls=[new_call()]),
            GetCall(call_num=num),
            UpdateCalls(updates=[CallUpdate(call_num=num, status="DONE", result=b"7")]),
            GetCall(call_num=num),
            UpdateCalls(updates=[CallUpdate(call_num=num, status="DONE", result=b"8")]),
            GetCall(call_num=num),
        ],
    )
    assert isinstance(replies[0], Error)
    assert replies[0].code == "not_found"
    assert isinstance(replies[1], CallsCreated)
    assert replies[1].calls[0].call_num == num
    assert isinstance(replies[2], CallReply)
    assert replies[2].call.status == "PENDING"
    assert replies[3] == CallsUpdated(applied=[True])
    assert isinstance(replies[4], CallReply)
    assert replies[4].call.result == b"7"
    assert replies[5] == CallsUpdated(applied=[False])
    assert replies[6] == replies[4]


# ---- restarts: durability and start policies


async def test_reserved_call_numbers(launcher: DbLauncher, ctx: zmq.asyncio.Context) -> None:
    """Numbers set aside are created with as asked, never given twice (a restart
    included), and a number that was not set aside is refused."""
    db = await launcher.start()
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:
        before = await client.create_call(new_call())
        first = await client.reserve_call_nums(10)
        assert first == before.call_num + 1
        mine = msgspec.structs.replace(new_call(), call_num=first + 3)
        assert (await client.create_call(mine)).call_num == first + 3
        assert (await client.create_call(mine)).call_num == first + 3  # idempotent
        assert (await client.create_call(new_call())).call_num == first + 10  # after the block
        for bad in (first + 11, 10**9, 0):
            with pytest.raises(BadRequest):
                await client.create_call(msgspec.structs.replace(new_call(), call_num=bad))
        db.process.kill()
    finally:
        await client.close()
    await launcher.stop(db)
    db = await launcher.start(path=db.path, policy="keep")
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:  # a block not used up stays set aside
        assert await client.reserve_call_nums(5) == first + 11
    finally:
        await client.close()


async def test_keep_policy_survives_kill(launcher: DbLauncher, ctx: zmq.asyncio.Context) -> None:
    db = await launcher.start()
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:
        await client.put_runtime(runtime())
        fn, _ = await client.put_function(function())
        calls = await asyncio.gather(*(client.create_call(new_call()) for _ in range(50)))
        result = CallUpdate(call_num=calls[0].call_num, status="DONE", result=b"42", logs="ok\n")
        # The last replies arrive, and the process dies at once: nothing may be lost.
        applied, more = await asyncio.gather(
            client.update_call(result),
            asyncio.gather(*(client.create_call(new_call()) for _ in range(50))),
        )
        db.process.kill()
    finally:
        await client.close()
    assert applied
    assert await launcher.stop(db) == -signal.SIGKILL

    db = await launcher.start(path=db.path, policy="keep")
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:
        assert (await client.get_runtime("python3")).image == runtime().image
        assert await client.get_function("hello") == fn
        stored = {call.call_num: call for call in await client.list_calls(limit=1000)}
        assert len(stored) == 100
        for call in [*calls[1:], *more]:
            assert stored[call.call_num] == call
        done = stored[calls[0].call_num]
        assert (done.status, done.result) == ("DONE", b"42")
        assert await client.get_call_logs(calls[0].call_num) == "ok\n"
        following = await client.create_call(new_call())
        assert following.call_num == max(stored) + 1
    finally:
        await client.close()


async def test_wipe_policy_starts_empty(launcher: DbLauncher, ctx: zmq.asyncio.Context) -> None:
    db = await launcher.start()
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:
        await client.put_runtime(runtime())
        await client.put_function(function())
        await client.create_calls([new_call() for _ in range(10)])
    finally:
        await client.close()
    assert await launcher.stop(db) == 0

    db = await launcher.start(path=db.path, policy="wipe")
    client = DbClient(ctx, db.endpoint, launcher.keys)
    try:
        assert await client.list_runtimes() == []
        assert await client.list_functions() == []
        assert await client.list_calls() == []
        assert (await client.create_call(new_call())).call_num == 1
    finally:
        await client.close()


async def test_sigterm_drains_and_every_reply_is_durable(
    launcher: DbLauncher, ctx: zmq.asyncio.Context
) -> None:
    db = await launcher.start(sync="full")
    sock = launcher.keys.client(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.LINGER, 0)
    # Take every reply while the test waits for the db to stop, as the services' clients
    # do (rpc.make_socket): with the default high-water mark of 1,000, this socket stops
    # reading, and replies still queued in the db when its linger ends are lost with it.
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(db.endpoint)
    replied: set[int] = set()
    try:
        for n in range(20_000):
            payload = DB_PROTOCOL.encode(CreateCalls(calls=[new_call()]))
            await sock.send_multipart([n.to_bytes(4, "big"), payload])

        async def take_reply() -> None:
            _, payload = await sock.recv_multipart()
            reply = DB_PROTOCOL.decode(payload)
            assert isinstance(reply, CallsCreated), reply
            replied.update(call.call_num for call in reply.calls)

        async with asyncio.timeout(20):
            await take_reply()  # the db is at work: now ask it to stop
        assert await launcher.stop(db, signal.SIGTERM) == 0, db.log_text()
        assert '"db.draining"' in db.log_text()

        # Restart elsewhere, so the requests the old db never read cannot reach it.
        restarted = await launcher.start(path=db.path)
        client = DbClient(ctx, restarted.endpoint, launcher.keys)
        try:
            stored: list[int] = []
            before: int | None = None
            while page := await client.list_calls(limit=1000, before=before):
                stored.extend(call.call_num for call in page)
                before = page[-1].call_num
        finally:
            await client.close()
        async with asyncio.timeout(20):
            while len(replied) < len(stored):
                await take_reply()
        assert replied == set(stored), "replied exactly to what was committed"
    finally:
        sock.close()


async def test_sigint_stops_cleanly(launcher: DbLauncher) -> None:
    db = await launcher.start()
    assert await launcher.stop(db, signal.SIGINT) == 0
    assert '"db.stopped"' in db.log_text()


# ---- retention


def file_pages(path: Path) -> tuple[int, int, int]:
    """The file's auto_vacuum mode, its pages, and how many of them are free."""
    db = sqlite3.connect(path)
    try:
        mode, pages, free = (
            db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("auto_vacuum", "page_count", "freelist_count")
        )
        return mode, pages, free
    finally:
        db.close()


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.1)


async def test_retention_keeps_the_newest_calls_and_compacts(
    launcher: DbLauncher, ctx: zmq.asyncio.Context
) -> None:
    db = await launcher.start()
    client = DbClient(ctx, db.endpoint, launcher.keys, timeout=10.0)
    try:
        calls = await client.create_calls(
            [new_call(params=b'"%s"' % (b"x" * 2000)) for _ in range(1500)]
        )
        nums = [c.call_num for c in calls]
        unfinished = nums[3]  # old, but not finished: never deleted
        done = [CallUpdate(call_num=n, status="DONE", result=b"1") for n in nums if n != unfinished]
        assert all(await client.update_calls(done))
    finally:
        await client.close()
    await launcher.stop(db)
    mode, pages, _ = file_pages(db.path)
    assert mode == 2  # a new file is made compactable

    db = await launcher.start(
        path=db.path, settings={"FUM_DB_KEEP_CALLS": "5", "FUM_DB_RETENTION_INTERVAL": "0.2"}
    )
    client = DbClient(ctx, db.endpoint, launcher.keys, timeout=10.0)
    try:

        async def swept() -> bool:
            return len(await client.list_calls(limit=1000)) == 6

        await wait_for(swept, "retention deleted the old calls")
        kept = [c.call_num for c in await client.list_calls(limit=1000)]
        assert kept == [*reversed(nums[-5:]), unfinished]

        async def compacted() -> bool:
            return file_pages(db.path)[2] == 0

        await wait_for(compacted, "the free pages given back")
        assert file_pages(db.path)[1] < pages / 5
        assert (await client.create_call(new_call())).call_num == nums[-1] + 1
    finally:
        await client.close()


async def test_retention_by_age_never_gives_a_number_again(
    launcher: DbLauncher, ctx: zmq.asyncio.Context
) -> None:
    settings = {"FUM_DB_KEEP_DAYS": "1", "FUM_DB_RETENTION_INTERVAL": "0.2"}
    db = await launcher.start(settings=settings)
    client = DbClient(ctx, db.endpoint, launcher.keys, timeout=10.0)
    two_days_ago = time.time() - 2 * 86400
    try:
        old = [msgspec.structs.replace(new_call(), created_at=two_days_ago) for _ in range(20)]
        calls = await client.create_calls(old)
        fresh = await client.create_call(new_call())
        done = [CallUpdate(call_num=c.call_num, status="DONE") for c in [*calls, fresh]]
        assert all(await client.update_calls(done))

        async def swept() -> bool:
            return [c.call_num for c in await client.list_calls()] == [fresh.call_num]

        await wait_for(swept, "retention deleted the calls older than a day")
        # the newest calls all deleted: the numbers still go on after a restart
        last = await client.create_calls(
            [msgspec.structs.replace(new_call(), created_at=two_days_ago)]
        )
        assert await client.update_calls([CallUpdate(call_num=last[0].call_num, status="DONE")])

        async def all_gone() -> bool:
            return [c.call_num for c in await client.list_calls()] == [fresh.call_num]

        await wait_for(all_gone, "the newest call deleted too")
        db.process.kill()
    finally:
        await client.close()
    await launcher.stop(db)
    db = await launcher.start(path=db.path)
    client = DbClient(ctx, db.endpoint, launcher.keys, timeout=10.0)
    try:
        assert (await client.create_call(new_call())).call_num == last[0].call_num + 1
    finally:
        await client.close()


async def test_retention_settings_are_checked(launcher: DbLauncher) -> None:
    with pytest.raises(pytest.fail.Exception, match="db_keep_calls"):
        await launcher.start(settings={"FUM_DB_KEEP_CALLS": "-1"})


# ---- the writer's connection: batches on the loop's thread, checkpoints beside them


async def test_batches_run_on_the_loop_and_checkpoints_keep_the_wal_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``normal`` a batch runs on the calling thread; the WAL is copied into the file
    beside the writes (SQLite's own checkpoint is off), and as those copies never catch
    up with writes that go on, the writer copies the rest once the WAL outgrows WAL_LIMIT:
    it starts afresh instead of growing with every commit."""
    import threading

    from services.db import store as store_module
    from services.db.settings import DbSettings

    monkeypatch.setattr(store_module, "CHECKPOINT_CHANGES", 20)
    monkeypatch.setattr(store_module, "WAL_LIMIT", 40)
    seen: list[tuple[str, int]] = []
    checkpoint = store_module._wal_checkpoint

    def slow(db: sqlite3.Connection) -> tuple[int, int]:
        frames, copied = checkpoint(db)
        seen.append((threading.current_thread().name, frames))
        if threading.current_thread().name.startswith("db-checkpoint"):
            time.sleep(0.02)  # writes go on meanwhile
        return frames, copied

    monkeypatch.setattr(store_module, "_wal_checkpoint", slow)
    store = await store_module.Store.open(DbSettings(db_path=str(tmp_path / "fum.sqlite3")))
    threads: list[str] = []

    def batch(n: int) -> None:
        threads.append(threading.current_thread().name)
        with store.transaction():
            store.put_runtime(runtime(f"r{n}"))

    try:
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        for n in range(400):
            await store.write(batch, n)
            await asyncio.sleep(0.001)
        while store._checkpointing is not None:
            await store._checkpointing
        on_loop = threads.count(threading.current_thread().name)
        assert on_loop > 300  # the others waited for a copy by the writer, and ran there
        assert set(threads) <= {threading.current_thread().name, "db-writer_0"}
        passes = [frames for thread, frames in seen if thread.startswith("db-checkpoint")]
        by_writer = [frames for thread, frames in seen if thread == "db-writer_0"]
        assert len(passes) >= 10 and by_writer
        # Without the writer's copies the WAL would hold every commit's pages (a thousand
        # frames and more); with them it starts afresh every WAL_LIMIT or so.
        assert max(passes) < 300, seen
    finally:
        await store.close()
    reopened = sqlite3.connect(tmp_path / "fum.sqlite3")
    try:
        assert reopened.execute("SELECT count(*) FROM runtimes").fetchone() == (400,)
    finally:
        reopened.close()


async def test_batches_that_fsync_run_on_the_writers_thread(tmp_path: Path) -> None:
    import threading

    from services.db.settings import DbSettings
    from services.db.store import Store

    store = await Store.open(DbSettings(db_path=str(tmp_path / "fum.sqlite3"), db_sync="full"))
    try:
        names = [await store.write(lambda: threading.current_thread().name) for _ in range(3)]
        assert names == ["db-writer_0"] * 3
    finally:
        await store.close()


async def test_a_large_batch_runs_on_the_writers_thread(tmp_path: Path) -> None:
    """A small batch runs on the loop's thread; one of more than INLINE_BYTES (a map's
    calls) on the writer's, so the listings ending meanwhile are answered."""
    import threading

    from services.db import server as server_module
    from services.db.settings import DbSettings
    from services.db.store import Store

    store = await Store.open(DbSettings(db_path=str(tmp_path / "fum.sqlite3")))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("inproc://db")
    server = server_module.DbServer(sock, store)
    ran: list[str] = []
    run_units = server._run_units

    def recorded(*args: Any) -> None:
        ran.append(threading.current_thread().name)
        run_units(*args)

    server._run_units = recorded  # type: ignore[method-assign]
    try:
        await server._run_batch([[b"me", DB_PROTOCOL.encode(PutRuntime(runtime=runtime()))]])
        await server._run_batch([[b"me", DB_PROTOCOL.encode(PutFunction(function=function()))]])
        big = b'{"pad": "%s"}' % (b"x" * 1000)
        calls = [
            NewCall(uuid=str(uuid.uuid4()), func_name="hello", params=big, created_at=1.0)
            for _ in range(100)
        ]
        await server._run_batch([[b"me", DB_PROTOCOL.encode(CreateCalls(calls=calls))]])
        assert ran == [threading.current_thread().name] * 2 + ["db-writer_0"]
        assert len(store.get_calls(list(range(1, 101)))) == 100
    finally:
        server.close()
        ctx.term()
        await store.close()
