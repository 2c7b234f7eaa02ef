"""The SQLite store of runtimes, functions and calls.

This process is the only writer, through one sqlite3 connection used by one thread at a
time. Nothing here awaits statement by statement: the server hands a whole batch to
``Store.write``, which calls the plain synchronous methods here from BEGIN to COMMIT or
ROLLBACK. A commit that costs no fsync (``db_sync=normal``) takes tens of microseconds,
less than the trip to a thread and back (queue, thread wake-up, wake-up of the loop:
each can cost milliseconds on a busy machine), so such a batch runs on the event loop's
thread; with ``full`` (an fsync per commit) it runs on the writer's own thread
(``SqliteThread``), and so does all other work of the writer (``Store.run``: retention),
one at a time.

The WAL is copied into the file (a checkpoint, with its fsyncs: milliseconds) on a third
connection with a thread of its own, beside the writes, not by SQLite inside a commit
(which holds up the replies of its batch). Such a copy cannot start the WAL afresh while
writes go on, so when it has grown beyond ``WAL_LIMIT`` the writer copies the rest
itself, between two batches (module constants).

Listings (``list_calls``, ``list_functions``, ``list_runtimes``) run on a second
connection with a thread of its own (``Store.read``): under WAL a reader sees the last
commit and never blocks the writer, so a page of a large listing does not hold up the
batches of small requests behind it.

Transactions are opened by the caller (the server runs a whole batch of requests in
one), so the write methods here assume one is open; each of them validates with reads
first and then writes, and the server wraps each request in a SAVEPOINT (when its batch
has several writers) so that a failing request leaves the rest of its batch intact.
``create_calls`` and ``update_calls`` take the requests of a whole group at once and do
them in two statements.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import msgspec
import structlog

from services.common.db_protocol import ListCalls
from services.common.errors import BadRequest, Conflict, FumError, NotFound
from services.common.models import (
    FINAL_STATUSES,
    STATUSES,
    Build,
    Call,
    CallUpdate,
    Function,
    Limits,
    NewCall,
    Runtime,
    Step,
    check_name,
    now,
)
from services.triggers.coordinators import Coordinators, run_of, suspension_of
from services.triggers.engine import TriggerEngine
from services.triggers.events import call_event

from .settings import DbSettings

log = structlog.get_logger()

P = ParamSpec("P")
T = TypeVar("T")

# Migration i (0-based) takes the schema from version i to i + 1 (PRAGMA user_version).
# Append new ones; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE runtimes (
            name TEXT PRIMARY KEY,
            image TEXT NOT NULL,
            run TEXT NOT NULL,
            path TEXT NOT NULL,
            dependencies TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE functions (
            name TEXT PRIMARY KEY,
            runtime TEXT NOT NULL REFERENCES runtimes (name),
            sha256 TEXT NOT NULL,
            filename TEXT NOT NULL,
            size INTEGER NOT NULL,
            limits TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX functions_by_runtime ON functions (runtime)",
        # Calls outlive their function (history), so func_name is not a foreign key.
        # Small columns first: list queries never read the trailing large ones they skip.
        """
        CREATE TABLE calls (
            call_num INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            func_name TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('PENDING', 'RUNNING', 'DONE', 'ERROR', 'TIMEOUT')),
            node_id INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            start TEXT,
            init_ms REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            params BLOB NOT NULL,
            result BLOB,
            logs TEXT
        )
        """,
        "CREATE INDEX calls_by_func ON calls (func_name, call_num DESC)",
        "CREATE INDEX calls_by_status ON calls (status, call_num DESC)",
    ),
    # 2: call numbers reserved by the api (ReserveCallNums) are never given again, even
    # unused and across restarts: the next free number is kept, not derived from the calls.
    ("CREATE TABLE call_numbers (next INTEGER NOT NULL)",),
    # 3: the name of the API key that created a call
    ("ALTER TABLE calls ADD COLUMN caller TEXT",),
    # 4: events, triggers and durable coordinators (services/triggers/); a call may end
    # WAITING (a coordinator's run), so the calls table is rebuilt for its CHECK.
    (
        """
        CREATE TABLE calls_v4 (
            call_num INTEGER PRIMARY KEY,
            uuid TEXT NOT NULL UNIQUE,
            func_name TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('PENDING', 'RUNNING', 'DONE', 'ERROR', 'TIMEOUT', 'WAITING')),
            node_id INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            start TEXT,
            init_ms REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            params BLOB NOT NULL,
            result BLOB,
            logs TEXT,
            caller TEXT
        )
        """,
        """
        INSERT INTO calls_v4 SELECT call_num, uuid, func_name, status, node_id, attempts,
            start, init_ms, created_at, started_at, finished_at, error, params, result, logs,
            caller FROM calls
        """,
        "DROP TABLE calls",
        "ALTER TABLE calls_v4 RENAME TO calls",
        "CREATE INDEX calls_by_func ON calls (func_name, call_num DESC)",
        "CREATE INDEX calls_by_status ON calls (status, call_num DESC)",
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            source TEXT NOT NULL,
            type TEXT NOT NULL,
            subject TEXT NOT NULL,
            time REAL NOT NULL,
            data TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_by_subject ON events (subject, seq DESC)",
        "CREATE INDEX events_by_type ON events (type, seq DESC)",
        """
        CREATE TABLE triggers (
            id TEXT PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            activation TEXT NOT NULL,
            condition TEXT NOT NULL,
            action TEXT NOT NULL,
            context TEXT NOT NULL,
            transient INTEGER NOT NULL,
            active INTEGER NOT NULL,
            fired INTEGER NOT NULL,
            evaluating INTEGER,
            execution TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX triggers_by_execution ON triggers (execution)",
        "CREATE TABLE trigger_activations (token TEXT NOT NULL, subject TEXT NOT NULL, type TEXT)",
        "CREATE INDEX trigger_activations_by_subject ON trigger_activations (subject)",
        "CREATE INDEX trigger_activations_by_token ON trigger_activations (token)",
        """
        CREATE TABLE trigger_inbox (
            token TEXT NOT NULL,
            seq INTEGER NOT NULL,
            subject TEXT NOT NULL,
            PRIMARY KEY (token, seq)
        )
        """,
        "CREATE INDEX trigger_inbox_by_subject ON trigger_inbox (token, subject)",
        # events waiting for a Python condition's evaluation of the one before
        """
        CREATE TABLE trigger_queue (
            token TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (token, seq)
        )
        """,
        """
        CREATE TABLE executions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            function TEXT NOT NULL,
            params BLOB NOT NULL,
            step_function TEXT,
            status TEXT NOT NULL,
            runs INTEGER NOT NULL,
            call_num INTEGER,
            result BLOB,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            caller TEXT
        )
        """,
        """
        CREATE TABLE execution_steps (
            execution TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            identity TEXT NOT NULL,
            function TEXT NOT NULL,
            call_nums TEXT NOT NULL,
            run INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (execution, seq)
        )
        """,
        """
        CREATE TABLE execution_runs (
            execution TEXT NOT NULL,
            run INTEGER NOT NULL,
            call_num INTEGER NOT NULL,
            PRIMARY KEY (execution, run)
        )
        """,
    ),
    # 5: every listing filter has an index that also gives its order (a rare function's
    # DONE calls were found by scanning every DONE call), and retention by age finds the
    # oldest calls without a scan.
    (
        "CREATE INDEX calls_by_func_status ON calls (func_name, status, call_num DESC)",
        "CREATE INDEX calls_by_created ON calls (created_at)",
    ),
    # 6: workflow apps (services/workflows/): a function's step, sessions, their instances,
    # checkpoints (one result per instance) and the sets of the fan-ins
    (
        "ALTER TABLE functions ADD COLUMN workflow TEXT",
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            app TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('RUNNING', 'DONE', 'ERROR', 'CANCELLED')),
            open INTEGER NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL,
            error TEXT,
            result BLOB
        )
        """,
        "CREATE INDEX sessions_by_app ON sessions (app, created_at DESC)",
        """
        CREATE TABLE instances (
            session TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            call_num INTEGER NOT NULL,
            finished INTEGER NOT NULL DEFAULT 0,
            ends INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session, name)
        )
        """,
        """
        CREATE TABLE checkpoints (
            session TEXT NOT NULL,
            instance TEXT NOT NULL,
            result BLOB NOT NULL,
            sent TEXT NOT NULL,
            PRIMARY KEY (session, instance)
        )
        """,
        """
        CREATE TABLE fan_in_slots (
            session TEXT NOT NULL,
            target TEXT NOT NULL,
            slot INTEGER NOT NULL,
            instance TEXT NOT NULL,
            PRIMARY KEY (session, target, slot)
        )
        """,
        """
        CREATE TABLE fan_ins (
            session TEXT NOT NULL,
            target TEXT NOT NULL,
            filled INTEGER NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (session, target)
        )
        """,
    ),
    # 7: the build of a function's dependencies (models.Build, as JSON; NULL: none)
    ("ALTER TABLE functions ADD COLUMN build TEXT",),
    # 8: the listings of executions and triggers through indexes that give their order
    # (executions were sorted whole; fired triggers are kept, and the active ones were
    # found by scanning them all)
    (
        "CREATE INDEX executions_by_created ON executions (created_at)",
        "DROP INDEX triggers_by_execution",
        "CREATE INDEX triggers_by_execution ON triggers (execution, id)",
        "CREATE INDEX triggers_by_active ON triggers (active, id)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))

_RUNTIME_COLUMNS = "name, image, run, path, dependencies, created_at, updated_at"
_FUNCTION_COLUMNS = (
    "name, runtime, sha256, filename, size, limits, created_at, updated_at, workflow, build"
)
_CALL_COLUMNS = (
    "call_num, uuid, func_name, params, status, result, error, node_id, attempts, start, "
    "init_ms, created_at, started_at, finished_at, caller"
)

_PUT_RUNTIME = f"""
    INSERT INTO runtimes ({_RUNTIME_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        image = excluded.image, run = excluded.run, path = excluded.path,
        dependencies = excluded.dependencies, updated_at = excluded.updated_at
"""
_PUT_FUNCTION = f"""
    INSERT INTO functions ({_FUNCTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        runtime = excluded.runtime, sha256 = excluded.sha256, filename = excluded.filename,
        size = excluded.size, limits = excluded.limits, updated_at = excluded.updated_at,
        workflow = excluded.workflow,
        build = excluded.build
"""
_INSERT_CALL = """
    INSERT INTO calls (call_num, uuid, func_name, params, status, attempts, created_at, caller)
    VALUES (?, ?, ?, ?, 'PENDING', 0, ?, ?)
"""
# The status guard repeats in SQL what update_calls decides in Python: a final call is
# never changed again, whatever a bug upstream of this statement might think.
_UPDATE_CALL = f"""
    UPDATE calls SET
        status = ?,
        node_id = COALESCE(?, node_id),
        attempts = COALESCE(?, attempts),
        result = COALESCE(?, result),
        error = COALESCE(?, error),
        logs = COALESCE(?, logs),
        start = COALESCE(?, start),
        init_ms = COALESCE(?, init_ms),
        started_at = COALESCE(?, started_at),
        finished_at = COALESCE(?, finished_at)
    WHERE call_num = ? AND status NOT IN ({_FINAL_SQL})
"""

MAX_LIST = 1000
# The WAL is copied into the file (module docstring) after so many rows changed, a
# rough measure of the pages written (SQLite's own checkpoint comes every 1,000 pages,
# a few to a few hundred commits); the writer copies the rest itself, which starts the
# WAL afresh, only when it holds more than WAL_LIMIT frames (pages): the copies beside
# the writes can never finish it while writes go on, but they need no gap to go on.
CHECKPOINT_CHANGES = 2_000
WAL_LIMIT = 8_192
_INCREMENTAL = 2  # PRAGMA auto_vacuum: free pages stay in the file until incremental_vacuum

_json = msgspec.json.Encoder()
_limits = msgspec.json.Decoder(Limits)
_step = msgspec.json.Decoder(Step)
_build = msgspec.json.Decoder(Build)


def _runtime(row: Sequence[Any]) -> Runtime:
    return Runtime(
        name=row[0],
        image=row[1],
        run=row[2],
        path=row[3],
        dependencies=row[4],
        created_at=row[5],
        updated_at=row[6],
    )


def _function(row: Sequence[Any]) -> Function:
    return Function(
        name=row[0],
        runtime=row[1],
        sha256=row[2],
        filename=row[3],
        size=row[4],
        limits=_limits.decode(row[5]),
        created_at=row[6],
        updated_at=row[7],
        workflow=None if row[8] is None else _step.decode(row[8]),
        build=_build.decode(row[9]) if row[9] else None,
    )


def _call(row: Sequence[Any]) -> Call:
    return Call(
        call_num=row[0],
        uuid=row[1],
        func_name=row[2],
        params=row[3],
        status=row[4],
        result=row[5],
        error=row[6],
        node_id=row[7],
        attempts=row[8],
        start=row[9],
        init_ms=row[10],
        created_at=row[11],
        started_at=row[12],
        finished_at=row[13],
        caller=row[14],
    )


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise BadRequest(f"invalid call status {status!r}: use one of {', '.join(STATUSES)}")
    return status


class RollbackFailed(Exception):
    """A failed transaction could not be rolled back either: the connection is in an
    unknown state, so the process must stop rather than run another batch on it."""


class SqliteThread:
    """A sqlite3 connection on a thread of its own: ``run`` takes a function there.

    sqlite3 releases the GIL while SQLite works, so the event loop runs on meanwhile.
    A function runs in a copy of the caller's context: the thread has its own, and the
    log lines it writes would lose what is bound in this one (the service's name).
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; only for code that ``run`` runs."""
        assert self._db is not None, "not open"
        return self._db

    async def open(self, path: str, shared: bool = False) -> None:
        """``shared``: the connection may also be used on the caller's thread (never at
        the same time as on this one)."""
        self._db = await self.run(
            sqlite3.connect, path, isolation_level=None, check_same_thread=not shared
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        if self._db is not None:
            await self.run(self._db.close)
            self._db = None
        self._executor.shutdown()


class Store:
    """Runtimes, functions and calls in one SQLite file (WAL, foreign keys on).

    Every method but ``open``, ``close``, ``run``, ``write`` and ``read`` is synchronous:
    the listings run on the reader's thread, inside a function given to ``read``; the rest
    inside a function given to ``write`` (a batch) or ``run`` (on the writer's thread); so
    does every change to the call counter.
    """

    def __init__(
        self,
        writer: SqliteThread,
        reader: SqliteThread,
        next_call_num: int,
        checkpointer: SqliteThread | None = None,
        inline: bool = False,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._db = writer.db
        self._rdb = reader.db
        self._next_call_num = next_call_num
        # Without one (":memory:"), SQLite checkpoints in the commits, as by default.
        self._checkpointer = checkpointer
        self._inline = inline  # batches may run on the loop's thread (``write``)
        self._turn = asyncio.Lock()  # held while the writer's thread has the connection
        self._changes = 0  # the connection's total_changes at the last checkpoint
        self.checkpoints = 0
        self._checkpointing: asyncio.Task[None] | None = None
        # Calls made PENDING by triggers' actions in the running request, for the api to
        # place (the server hands them back in the reply: CallsUpdated.placed, ...).
        self.placed: list[Call] = []
        self.coordinators = Coordinators(self)
        self.triggers = TriggerEngine(self, self.coordinators.resume)

    @property
    def db(self) -> sqlite3.Connection:
        """The sqlite3 connection, for the systems kept in this file, on its thread within
        its transactions (services/triggers, services/workflows/checkpoint.py)."""
        return self._db

    def take_placed(self) -> list[Call]:
        placed, self.placed = self.placed, []
        return placed

    def create_and_place(self, new_calls: Sequence[NewCall]) -> list[Call]:
        """Create calls (as ``create_calls``) that the api must place: new PENDING ones
        go to ``placed``."""
        calls = self.create_calls(new_calls)
        known = {c.call_num for c in self.placed}
        self.placed.extend(c for c in calls if c.status == "PENDING" and c.call_num not in known)
        return calls

    @classmethod
    async def open(cls, settings: DbSettings) -> Store:
        """Open (or create) the database, apply the start policy and the migrations."""
        memory = settings.db_path == ":memory:"
        if not memory:
            Path(settings.db_path).parent.mkdir(parents=True, exist_ok=True)
        writer = SqliteThread("db-writer")
        # A second connection to ":memory:" would be a second, empty database.
        reader = writer if memory else SqliteThread("db-reader")
        checkpointer = None if memory else SqliteThread("db-checkpoint")
        try:
            await writer.open(settings.db_path, shared=not memory)
            version, next_call_num = await writer.run(_prepare, writer.db, settings)
            if checkpointer is not None:
                await writer.run(writer.db.execute, "PRAGMA wal_autocheckpoint = 0")
                await checkpointer.open(settings.db_path)
            if reader is not writer:
                await reader.open(settings.db_path)
                await reader.run(_prepare_reader, reader.db)
        except BaseException:
            await writer.close()
            await reader.close()
            if checkpointer is not None:
                await checkpointer.close()
            raise
        log.info(
            "db.store_opened",
            path=settings.db_path,
            schema_version=version,
            start_policy=settings.db_start_policy,
            sync=settings.db_sync,
            next_call_num=next_call_num,
        )
        return cls(
            writer,
            reader,
            next_call_num,
            checkpointer,
            inline=not memory and settings.db_sync == "normal",
        )

    async def close(self) -> None:
        if self._checkpointing is not None:
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        await self._reader.close()
        if self._checkpointer is not None:
            await self._checkpointer.close()
        await self._writer.close()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the writer's thread and give its result: one trip there,
        however many statements ``fn`` runs through this store's methods."""
        async with self._turn:
            result = await self._writer.run(fn, *args, **kwargs)
        self._after_commits()
        return result

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a batch of requests (as ``run``): on this thread if its commit costs no
        fsync and the writer's thread does not have the connection, else there."""
        if not self._inline or self._turn.locked():
            return await self.run(fn, *args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            self._after_commits()

    def _after_commits(self) -> None:
        if (
            self._checkpointer is None
            or self._db.total_changes - self._changes < CHECKPOINT_CHANGES
            or self._checkpointing is not None
        ):
            return
        self._changes = self._db.total_changes
        self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Copy the WAL into the file beside the writes (what was committed when the copy
        began); if the WAL has grown beyond WAL_LIMIT, copy the rest on the writer's
        thread between two batches, so that the next commit starts it afresh."""
        assert self._checkpointer is not None
        started = time.perf_counter()
        try:
            frames, copied = await self._checkpointer.run(_wal_checkpoint, self._checkpointer.db)
            writer = frames > WAL_LIMIT
            if writer:
                frames, copied = await self.run(_wal_checkpoint, self._db)
            self.checkpoints += 1
            log.debug(
                "db.checkpoint",
                frames=frames,
                copied=copied,
                writer=writer,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        except sqlite3.Error as exc:  # the next one tries again; the WAL grows meanwhile
            log.warning("db.checkpoint_failed", error=str(exc))
        finally:
            self._checkpointing = None

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn``, which may only use the listings, on the reader's thread: it sees
        what was committed, and writes go on meanwhile."""
        return await self._reader.run(fn, *args, **kwargs)

    # ---- transactions

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def begin(self) -> None:
        self._db.execute("BEGIN")

    def rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already, and resync the call counter."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._next_call_num = _first_free_call_num(self._db)
        self.placed.clear()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run a block in one transaction: committed if it returns, rolled back if it or
        the commit raises (and the exception goes on, or ``RollbackFailed`` over it)."""
        self.begin()
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            try:
                self.rollback()
            except Exception as failure:
                raise RollbackFailed(f"db: could not roll back: {failure}") from failure
            raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Run a block so that, if it raises, none of its writes stay in the transaction."""
        next_call_num, placed = self._next_call_num, len(self.placed)
        self._db.execute("SAVEPOINT request")
        try:
            yield
        except BaseException:
            self._next_call_num = next_call_num
            del self.placed[placed:]
            self._db.execute("ROLLBACK TO request")
            self._db.execute("RELEASE request")
            raise
        self._db.execute("RELEASE request")

    # ---- runtimes

    def put_runtime(self, runtime: Runtime) -> tuple[Runtime, bool]:
        """Insert or replace a runtime, keeping its creation time; say whether it is new."""
        check_name("runtime", runtime.name)
        row = self._db.execute(
            "SELECT created_at FROM runtimes WHERE name = ?", (runtime.name,)
        ).fetchone()
        updated_at = now()
        created_at = row[0] if row else updated_at
        stored = msgspec.structs.replace(runtime, created_at=created_at, updated_at=updated_at)
        self._db.execute(
            _PUT_RUNTIME,
            (
                stored.name,
                stored.image,
                stored.run,
                stored.path,
                stored.dependencies,
                stored.created_at,
                stored.updated_at,
            ),
        )
        return stored, row is None

    def get_runtime(self, name: str) -> Runtime:
        row = self._db.execute(
            f"SELECT {_RUNTIME_COLUMNS} FROM runtimes WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no runtime named {name!r}")
        return _runtime(row)

    def list_runtimes(self) -> list[Runtime]:
        rows = self._rdb.execute(f"SELECT {_RUNTIME_COLUMNS} FROM runtimes ORDER BY name")
        return [_runtime(row) for row in rows]

    def delete_runtime(self, name: str) -> None:
        """Delete a runtime; ``Conflict`` while functions still use it."""
        users = [
            row[0]
            for row in self._db.execute(
                "SELECT name FROM functions WHERE runtime = ? ORDER BY name LIMIT 6", (name,)
            )
        ]
        if users:
            shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
            raise Conflict(f"runtime {name!r} is used by functions: {shown}")
        try:
            cursor = self._db.execute("DELETE FROM runtimes WHERE name = ?", (name,))
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"runtime {name!r} is still in use: {exc}") from None
        if cursor.rowcount == 0:
            raise NotFound(f"no runtime named {name!r}")

    # ---- functions

    def put_function(self, function: Function) -> tuple[Function, bool]:
        """Insert or replace a function of a known runtime; say whether it is new."""
        check_name("function", function.name)
        known = self._db.execute(
            "SELECT 1 FROM runtimes WHERE name = ?", (function.runtime,)
        ).fetchone()
        if known is None:
            raise NotFound(f"no runtime named {function.runtime!r}")
        row = self._db.execute(
            "SELECT created_at FROM functions WHERE name = ?", (function.name,)
        ).fetchone()
        updated_at = now()
        created_at = row[0] if row else updated_at
        stored = msgspec.structs.replace(function, created_at=created_at, updated_at=updated_at)
        self._db.execute(
            _PUT_FUNCTION,
            (
                stored.name,
                stored.runtime,
                stored.sha256,
                stored.filename,
                stored.size,
                _json.encode(stored.limits).decode(),
                stored.created_at,
                stored.updated_at,
                None if stored.workflow is None else _json.encode(stored.workflow).decode(),
                None if stored.build is None else _json.encode(stored.build).decode(),
            ),
        )
        return stored, row is None

    def get_function(self, name: str) -> Function:
        row = self._db.execute(
            f"SELECT {_FUNCTION_COLUMNS} FROM functions WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no function named {name!r}")
        return _function(row)

    def list_functions(self) -> list[Function]:
        rows = self._rdb.execute(f"SELECT {_FUNCTION_COLUMNS} FROM functions ORDER BY name")
        return [_function(row) for row in rows]

    def delete_function(self, name: str) -> None:
        """Delete a function; its calls stay, as history."""
        cursor = self._db.execute("DELETE FROM functions WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise NotFound(f"no function named {name!r}")

    # ---- calls

    def create_calls(self, new_calls: Sequence[NewCall]) -> list[Call]:
        """Create calls in order, numbered from the counter; a known uuid returns its call.

        Two statements whatever the count: one lookup of the uuids, one executemany.
        """
        if not new_calls:
            return []
        by_uuid: dict[str, Call] = {
            call.uuid: call
            for call in map(
                _call,
                self._db.execute(
                    f"SELECT {_CALL_COLUMNS} FROM calls "
                    "WHERE uuid IN (SELECT value FROM json_each(?))",
                    (_json.encode([new.uuid for new in new_calls]).decode(),),
                ),
            )
        }
        calls: list[Call] = []
        rows: list[tuple[Any, ...]] = []
        next_call_num = self._next_call_num
        for new in new_calls:
            call = by_uuid.get(new.uuid)
            if call is None:
                self.check_reserved(new.call_num)
                num = next_call_num if new.call_num is None else new.call_num
                call = new.pending(num)
                by_uuid[new.uuid] = call
                rows.append((num, new.uuid, new.func_name, new.params, new.created_at, new.caller))
                if new.call_num is None:
                    next_call_num += 1
            calls.append(call)
        if rows:
            self._db.executemany(_INSERT_CALL, rows)
            self._next_call_num = next_call_num
        return calls

    def reserved(self, call_num: int) -> bool:
        """Whether ``reserve_call_nums`` (or a create) has given out ``call_num``."""
        return 0 < call_num < self._next_call_num

    def check_reserved(self, call_num: int | None) -> None:
        """A number a create names must have been given out by ``reserve_call_nums``."""
        if call_num is not None and not self.reserved(call_num):
            raise BadRequest(f"call number {call_num} was not reserved")

    def reserve_call_nums(self, count: int) -> int:
        """Set ``count`` numbers aside (kept in the db, so a restart never gives them);
        return the first."""
        if not 0 < count <= 1_000_000:
            raise BadRequest(f"cannot reserve {count} call numbers")
        first = self._next_call_num
        self._db.execute("DELETE FROM call_numbers")
        self._db.execute("INSERT INTO call_numbers (next) VALUES (?)", (first + count,))
        self._next_call_num = first + count
        return first

    def update_calls(self, updates: Sequence[CallUpdate]) -> list[bool]:
        """Apply updates in order to calls that are not final yet; say which applied.

        A call that has reached a final status never changes again, so a call cannot be
        reported DONE twice with two results. The current statuses are read once and the
        batch is replayed on them here, so one executemany writes every applied update.
        An update that carries ``new`` creates its call first if it is not stored (and
        applies nowhere if its number was never set aside: its siblings still apply).

        Each call that ends here ends as an event (``fum.call.done``/``failed``), stored
        and run through its triggers in this same transaction; a coordinator's run that
        ends with a suspension is stored WAITING (services/triggers/coordinators.py).
        """
        if not updates:
            return []
        known: dict[int, tuple[str, str, str]] = {
            row[0]: (row[1], row[2], row[3])
            for row in self._db.execute(
                "SELECT call_num, status, uuid, func_name FROM calls "
                "WHERE call_num IN (SELECT value FROM json_each(?))",
                (_json.encode([update.call_num for update in updates]).decode(),),
            )
        }
        missing = {
            u.call_num: u.new
            for u in updates
            if u.new is not None
            and u.call_num not in known
            and u.new.call_num == u.call_num
            and self.reserved(u.call_num)
        }
        for call in self.create_calls(list(missing.values())):
            known[call.call_num] = (call.status, call.uuid, call.func_name)
        applied: list[bool] = []
        rows: list[tuple[Any, ...]] = []
        ended: list[tuple[CallUpdate, str, str]] = []
        for update in updates:
            found = known.get(update.call_num)
            if found is None or found[0] in FINAL_STATUSES:
                applied.append(False)
                continue
            _, uuid, func_name = found
            if update.status in FINAL_STATUSES:
                update = self._coordinator_end(update, uuid)
                ended.append((update, uuid, func_name))
            known[update.call_num] = (update.status, uuid, func_name)
            applied.append(True)
            rows.append(
                (
                    update.status,
                    update.node_id,
                    update.attempts,
                    update.result,
                    update.error,
                    update.logs,
                    update.start,
                    update.init_ms,
                    update.started_at,
                    update.finished_at,
                    update.call_num,
                )
            )
        if rows:
            self._db.executemany(_UPDATE_CALL, rows)
        for update, uuid, func_name in ended:
            self._ended(update, uuid, func_name)
        return applied

    def _coordinator_end(self, update: CallUpdate, uuid: str) -> CallUpdate:
        """A coordinator's run that ends suspended is WAITING, not DONE."""
        if update.status != "DONE" or run_of(uuid) is None:
            return update
        suspension = suspension_of(update.result)
        if suspension is None:
            return update
        if isinstance(suspension, str):
            return msgspec.structs.replace(update, status="ERROR", error=suspension)
        return msgspec.structs.replace(update, status="WAITING")

    def _ended(self, update: CallUpdate, uuid: str, func_name: str) -> None:
        """What a call's end sets going: its execution's next move, or its trigger's (a
        Python condition's), then its event."""
        self.triggers.evaluated(uuid, update.status, update.result)
        run = run_of(uuid)
        current, caller = (False, None) if run is None else self.coordinators.current(*run)
        if run is not None and current:
            execution = run[0]
            if update.status == "WAITING":
                suspension = suspension_of(update.result)
                assert suspension is not None and not isinstance(suspension, str)
                error = self.coordinators.suspend(execution, run[1], suspension, caller)
                if error is not None:
                    self.coordinators.finish(execution, "ERROR", None, error)
                    self._db.execute(
                        "UPDATE calls SET status = 'ERROR', error = ? WHERE call_num = ?",
                        (error, update.call_num),
                    )
                    update = msgspec.structs.replace(update, status="ERROR", error=error)
            elif update.status == "DONE":
                self.coordinators.finish(execution, "DONE", update.result, None)
            else:
                self.coordinators.finish(execution, "ERROR", None, update.error or update.status)
        result: Any = None
        if update.result is not None and update.status != "WAITING":
            try:
                result = msgspec.json.decode(update.result)
                msgspec.msgpack.encode(result)  # the wire's integers: 64 bits at most
            except (msgspec.DecodeError, OverflowError):
                result = update.result.decode(errors="replace")  # kept as its JSON text
        self.triggers.store_event(
            call_event(
                update.call_num,
                func_name,
                update.status,
                result,
                update.error,
                update.finished_at or now(),
            )
        )

    def get_call(self, call_num: int) -> Call:
        row = self._db.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_num = ?", (call_num,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no call number {call_num}")
        return _call(row)

    def get_calls(self, call_nums: list[int]) -> list[Call]:
        """The calls that exist among ``call_nums``, in call-number order."""
        rows = self._db.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_num IN "
            "(SELECT value FROM json_each(?)) ORDER BY call_num",
            (json.dumps(call_nums),),
        )
        return [_call(row) for row in rows]

    def find_calls(self, uuids: list[str]) -> list[Call]:
        """The calls that exist among ``uuids`` (an idempotent invoke's), in call-number
        order."""
        rows = self._db.execute(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE uuid IN "
            "(SELECT value FROM json_each(?)) ORDER BY call_num",
            (json.dumps(uuids),),
        )
        return [_call(row) for row in rows]

    def get_call_logs(self, call_num: int) -> str:
        row = self._db.execute("SELECT logs FROM calls WHERE call_num = ?", (call_num,)).fetchone()
        if row is None:
            raise NotFound(f"no call number {call_num}")
        return row[0] or ""

    # ---- retention

    def newest_beyond(self, keep: int) -> int:
        """The number of the newest call beyond the newest ``keep`` (0 if there are not
        that many), on the reader's thread."""
        row = self._rdb.execute(
            "SELECT call_num FROM calls ORDER BY call_num DESC LIMIT 1 OFFSET ?", (keep,)
        ).fetchone()
        return int(row[0]) if row else 0

    def delete_old_calls(self, older: Literal["count", "age"], bound: float, limit: int) -> int:
        """Delete up to ``limit`` finished calls numbered up to ``bound`` (``count``) or
        created before it (``age``), in a transaction of their own; how many went.

        The call counter is written down first: the newest calls may be among those
        deleted, and a restart must not give their numbers again.
        """
        with self.transaction():
            (kept,) = self._db.execute("SELECT MAX(next) FROM call_numbers").fetchone()
            if (kept or 0) < self._next_call_num:
                self._db.execute("DELETE FROM call_numbers")
                self._db.execute(
                    "INSERT INTO call_numbers (next) VALUES (?)", (self._next_call_num,)
                )
            cursor = self._db.execute(
                f"DELETE FROM calls WHERE call_num IN ({retention_query(older)})", (bound, limit)
            )
        return cursor.rowcount

    def compact(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system; how many stay free."""
        self._db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
        return int(self._db.execute("PRAGMA freelist_count").fetchone()[0])

    def list_calls(self, request: ListCalls) -> list[Call]:
        """A page of calls (``ListCalls``), on the reader's thread."""
        return [_call(row) for row in self._rdb.execute(*list_calls_query(request))]


# The number of the first call made at or after a time (one past every number if none is).
_FIRST_MADE_AT = (
    "COALESCE((SELECT call_num FROM calls WHERE created_at >= ? ORDER BY created_at LIMIT 1),"
    " 9223372036854775807)"
)


def list_calls_query(request: ListCalls) -> tuple[str, list[Any]]:
    """The SQL of a page of calls and its parameters: newest first (or oldest first),
    filtered, ``before``/``after`` bounding the call number. Each filter has an index in
    that order, so a page costs what it holds, not the calls that do not match."""
    clauses: list[str] = []
    params: list[Any] = []
    if request.func_name is not None:
        clauses.append("func_name = ?")
        params.append(request.func_name)
    if request.status is not None:
        clauses.append("status = ?")
        params.append(check_status(request.status))
    if request.before is not None:
        clauses.append("call_num < ?")
        params.append(request.before)
    if request.after is not None:
        clauses.append("call_num > ?")
        params.append(request.after)
    # A time window is first a range of call numbers: numbers are given in the order calls
    # are made, so the first call made at or after each bound (one step down the index by
    # time) bounds the range, which the order's own index then walks. The times are
    # checked too (with ``+``, so that no index is chosen for them), for calls made on
    # hosts whose clocks disagree.
    for op, value in ((">=", request.since), ("<", request.until)):
        if value is not None:
            clauses.append(f"call_num {op} {_FIRST_MADE_AT}")
            clauses.append(f"+created_at {op} ?")
            params.extend([value, value])
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    params.append(max(1, min(request.limit, MAX_LIST)))
    order = "ASC" if request.oldest_first else "DESC"
    return f"SELECT {_CALL_COLUMNS} FROM calls {where}ORDER BY call_num {order} LIMIT ?", params


# Which finished calls retention deletes: beyond the newest N (``count``: numbered up to
# a bound), or older than N days (``age``: created before a time). The ``+`` keeps SQLite
# from reading them through the status index (every DONE call) instead of these orders.
_OLD_CALLS = {"count": "call_num <= ?", "age": "created_at < ?"}
RETENTION_QUERY = (
    "SELECT call_num FROM calls WHERE {older} AND +status IN (" + _FINAL_SQL + ") LIMIT ?"
)


def retention_query(older: Literal["count", "age"]) -> str:
    """The SQL that picks a batch of calls for retention to delete (bound, limit)."""
    return RETENTION_QUERY.format(older=_OLD_CALLS[older])


def _prepare(db: sqlite3.Connection, settings: DbSettings) -> tuple[int, int]:
    """Set the connection up, apply the start policy and the migrations (on the
    connection's thread); the schema version and the next call number."""
    _compactable(db, settings.retention)  # first: WAL mode would make a new file's header
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {settings.db_sync.upper()}")
    db.execute("PRAGMA busy_timeout = 5000")
    if settings.db_start_policy == "wipe":
        _wipe(db)
    db.execute("PRAGMA foreign_keys = ON")
    return _migrate(db), _first_free_call_num(db)


def _wal_checkpoint(db: sqlite3.Connection) -> tuple[int, int]:
    """A passive checkpoint (it never waits for the writer): the WAL's frames, how many
    of them are in the file now."""
    _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames), int(copied)


def _prepare_reader(db: sqlite3.Connection) -> None:
    """Set the reader's connection up: it may not write, and waits out a checkpoint."""
    db.execute("PRAGMA query_only = ON")
    db.execute("PRAGMA busy_timeout = 5000")


def _compactable(db: sqlite3.Connection, retention: bool) -> None:
    """Make the file give back the pages of deleted rows on ``compact`` (SQLite's
    incremental auto-vacuum). A new file is made so; an older one is rewritten once
    (VACUUM, before the db serves) when retention is turned on for it."""
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
        return
    db.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")
    empty = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    if not empty and retention:
        log.info("db.vacuuming", reason="retention on, the file not yet compactable")
        db.execute("VACUUM")


def _first_free_call_num(db: sqlite3.Connection) -> int:
    """The number the next created call gets: one past the highest stored or reserved."""
    (highest,) = db.execute("SELECT MAX(call_num) FROM calls").fetchone()
    (reserved,) = db.execute("SELECT MAX(next) FROM call_numbers").fetchone()
    return max(int(highest or 0) + 1, int(reserved or 0))


def _wipe(db: sqlite3.Connection) -> None:
    """Drop every table (start policy ``wipe``); the migrations then rebuild the schema."""
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("BEGIN")
    try:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            db.execute(f"DROP TABLE {_quote(table)}")
        db.execute("PRAGMA user_version = 0")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")  # applied by the VACUUM
    db.execute("VACUUM")
    log.info("db.wiped", tables=tables)


def _migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``, one transaction per migration."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise FumError(
            f"database schema version {version} is newer than this db service knows "
            f"({SCHEMA_VERSION}); refusing to open it"
        )
    for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN")
        try:
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("db.migrated", schema_version=target)
        version = target
    return version


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
