"""The SQLite store of runtimes, functions and calls, on aiosqlite.

This process is the only writer. Transactions are opened by the caller (the server runs a
whole batch of requests in one), so the write methods here assume one is open; each of
them validates with reads first and then writes, and the server wraps each request in a
SAVEPOINT so that a failing request leaves the rest of its batch intact.

Every ``await`` here is a hop to aiosqlite's thread, so the call paths that carry load
(``create_calls``, ``update_calls``) take a whole batch and do it in two statements.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import structlog

from services.common.errors import BadRequest, Conflict, FumError, NotFound
from services.common.models import (
    FINAL_STATUSES,
    STATUSES,
    Call,
    CallUpdate,
    Function,
    Limits,
    NewCall,
    Runtime,
    check_name,
    now,
)

from .settings import DbSettings

log = structlog.get_logger()

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
)

SCHEMA_VERSION = len(MIGRATIONS)

_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))

_RUNTIME_COLUMNS = "name, image, run, path, dependencies, created_at, updated_at"
_FUNCTION_COLUMNS = "name, runtime, sha256, filename, size, limits, created_at, updated_at"
_CALL_COLUMNS = (
    "call_num, uuid, func_name, params, status, result, error, node_id, attempts, start, "
    "init_ms, created_at, started_at, finished_at"
)

_PUT_RUNTIME = f"""
    INSERT INTO runtimes ({_RUNTIME_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        image = excluded.image, run = excluded.run, path = excluded.path,
        dependencies = excluded.dependencies, updated_at = excluded.updated_at
"""
_PUT_FUNCTION = f"""
    INSERT INTO functions ({_FUNCTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET
        runtime = excluded.runtime, sha256 = excluded.sha256, filename = excluded.filename,
        size = excluded.size, limits = excluded.limits, updated_at = excluded.updated_at
"""
_INSERT_CALL = """
    INSERT INTO calls (call_num, uuid, func_name, params, status, attempts, created_at)
    VALUES (?, ?, ?, ?, 'PENDING', 0, ?)
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

_json = msgspec.json.Encoder()
_limits = msgspec.json.Decoder(Limits)


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
    )


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise BadRequest(f"invalid call status {status!r}: use one of {', '.join(STATUSES)}")
    return status


class Store:
    """Runtimes, functions and calls in one SQLite file (WAL, foreign keys on)."""

    def __init__(self, conn: aiosqlite.Connection, next_call_num: int) -> None:
        self._conn = conn
        self._next_call_num = next_call_num

    @classmethod
    async def open(cls, settings: DbSettings) -> Store:
        """Open (or create) the database, apply the start policy and the migrations."""
        if settings.db_path != ":memory:":
            Path(settings.db_path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(settings.db_path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {settings.db_sync.upper()}")
            await conn.execute("PRAGMA busy_timeout = 5000")
            if settings.db_start_policy == "wipe":
                await _wipe(conn)
            await conn.execute("PRAGMA foreign_keys = ON")
            version = await _migrate(conn)
            rows = await conn.execute_fetchall("SELECT MAX(call_num) FROM calls")
        except BaseException:
            await conn.close()
            raise
        next_call_num = (next(iter(rows))[0] or 0) + 1
        log.info(
            "db.store_opened",
            path=settings.db_path,
            schema_version=version,
            start_policy=settings.db_start_policy,
            sync=settings.db_sync,
            next_call_num=next_call_num,
        )
        return cls(conn, next_call_num)

    async def close(self) -> None:
        await self._conn.close()

    # ---- transactions

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def begin(self) -> None:
        await self._conn.execute("BEGIN")

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already, and resync the call counter."""
        if self._conn.in_transaction:
            await self._conn.execute("ROLLBACK")
        rows = await self._conn.execute_fetchall("SELECT MAX(call_num) FROM calls")
        self._next_call_num = (next(iter(rows))[0] or 0) + 1

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Run a block so that, if it raises, none of its writes stay in the transaction."""
        next_call_num = self._next_call_num
        await self._conn.execute("SAVEPOINT request")
        try:
            yield
        except BaseException:
            self._next_call_num = next_call_num
            await self._conn.execute("ROLLBACK TO request")
            await self._conn.execute("RELEASE request")
            raise
        await self._conn.execute("RELEASE request")

    # ---- runtimes

    async def put_runtime(self, runtime: Runtime) -> tuple[Runtime, bool]:
        """Insert or replace a runtime, keeping its creation time; say whether it is new."""
        check_name("runtime", runtime.name)
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT created_at FROM runtimes WHERE name = ?", (runtime.name,)
            )
        )
        updated_at = now()
        created_at = rows[0][0] if rows else updated_at
        stored = msgspec.structs.replace(runtime, created_at=created_at, updated_at=updated_at)
        await self._conn.execute(
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
        return stored, not rows

    async def get_runtime(self, name: str) -> Runtime:
        rows = list(
            await self._conn.execute_fetchall(
                f"SELECT {_RUNTIME_COLUMNS} FROM runtimes WHERE name = ?", (name,)
            )
        )
        if not rows:
            raise NotFound(f"no runtime named {name!r}")
        return _runtime(rows[0])

    async def list_runtimes(self) -> list[Runtime]:
        rows = await self._conn.execute_fetchall(
            f"SELECT {_RUNTIME_COLUMNS} FROM runtimes ORDER BY name"
        )
        return [_runtime(row) for row in rows]

    async def delete_runtime(self, name: str) -> None:
        """Delete a runtime; ``Conflict`` while functions still use it."""
        users = [
            row[0]
            for row in await self._conn.execute_fetchall(
                "SELECT name FROM functions WHERE runtime = ? ORDER BY name LIMIT 6", (name,)
            )
        ]
        if users:
            shown = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
            raise Conflict(f"runtime {name!r} is used by functions: {shown}")
        try:
            cursor = await self._conn.execute("DELETE FROM runtimes WHERE name = ?", (name,))
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"runtime {name!r} is still in use: {exc}") from None
        if cursor.rowcount == 0:
            raise NotFound(f"no runtime named {name!r}")

    # ---- functions

    async def put_function(self, function: Function) -> tuple[Function, bool]:
        """Insert or replace a function of a known runtime; say whether it is new."""
        check_name("function", function.name)
        known = await self._conn.execute_fetchall(
            "SELECT 1 FROM runtimes WHERE name = ?", (function.runtime,)
        )
        if not list(known):
            raise NotFound(f"no runtime named {function.runtime!r}")
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT created_at FROM functions WHERE name = ?", (function.name,)
            )
        )
        updated_at = now()
        created_at = rows[0][0] if rows else updated_at
        stored = msgspec.structs.replace(function, created_at=created_at, updated_at=updated_at)
        await self._conn.execute(
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
            ),
        )
        return stored, not rows

    async def get_function(self, name: str) -> Function:
        rows = list(
            await self._conn.execute_fetchall(
                f"SELECT {_FUNCTION_COLUMNS} FROM functions WHERE name = ?", (name,)
            )
        )
        if not rows:
            raise NotFound(f"no function named {name!r}")
        return _function(rows[0])

    async def list_functions(self) -> list[Function]:
        rows = await self._conn.execute_fetchall(
            f"SELECT {_FUNCTION_COLUMNS} FROM functions ORDER BY name"
        )
        return [_function(row) for row in rows]

    async def delete_function(self, name: str) -> None:
        """Delete a function; its calls stay, as history."""
        cursor = await self._conn.execute("DELETE FROM functions WHERE name = ?", (name,))
        if cursor.rowcount == 0:
            raise NotFound(f"no function named {name!r}")

    # ---- calls

    async def create_calls(self, new_calls: Sequence[NewCall]) -> list[Call]:
        """Create calls in order, numbered from the counter; a known uuid returns its call.

        Two statements whatever the count: one lookup of the uuids, one executemany.
        """
        if not new_calls:
            return []
        by_uuid: dict[str, Call] = {
            call.uuid: call
            for call in map(
                _call,
                await self._conn.execute_fetchall(
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
                call = Call(
                    call_num=next_call_num,
                    uuid=new.uuid,
                    func_name=new.func_name,
                    params=new.params,
                    created_at=new.created_at,
                )
                by_uuid[new.uuid] = call
                rows.append((next_call_num, new.uuid, new.func_name, new.params, new.created_at))
                next_call_num += 1
            calls.append(call)
        if rows:
            await self._conn.executemany(_INSERT_CALL, rows)
            self._next_call_num = next_call_num
        return calls

    async def update_calls(self, updates: Sequence[CallUpdate]) -> list[bool]:
        """Apply updates in order to calls that are not final yet; say which applied.

        A call that has reached a final status never changes again, so a call cannot be
        reported DONE twice with two results. The current statuses are read once and the
        batch is replayed on them here, so one executemany writes every applied update.
        """
        if not updates:
            return []
        statuses: dict[int, str] = {
            row[0]: row[1]
            for row in await self._conn.execute_fetchall(
                "SELECT call_num, status FROM calls "
                "WHERE call_num IN (SELECT value FROM json_each(?))",
                (_json.encode([update.call_num for update in updates]).decode(),),
            )
        }
        applied: list[bool] = []
        rows: list[tuple[Any, ...]] = []
        for update in updates:
            status = statuses.get(update.call_num)
            if status is None or status in FINAL_STATUSES:
                applied.append(False)
                continue
            statuses[update.call_num] = update.status
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
            await self._conn.executemany(_UPDATE_CALL, rows)
        return applied

    async def get_call(self, call_num: int) -> Call:
        rows = list(
            await self._conn.execute_fetchall(
                f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_num = ?", (call_num,)
            )
        )
        if not rows:
            raise NotFound(f"no call number {call_num}")
        return _call(rows[0])

    async def get_calls(self, call_nums: list[int]) -> list[Call]:
        """The calls that exist among ``call_nums``, in call-number order."""
        rows = await self._conn.execute_fetchall(
            f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_num IN "
            "(SELECT value FROM json_each(?)) ORDER BY call_num",
            (json.dumps(call_nums),),
        )
        return [_call(row) for row in rows]

    async def get_call_logs(self, call_num: int) -> str:
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT logs FROM calls WHERE call_num = ?", (call_num,)
            )
        )
        if not rows:
            raise NotFound(f"no call number {call_num}")
        return rows[0][0] or ""

    async def list_calls(
        self,
        *,
        func_name: str | None = None,
        status: str | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Call]:
        """Calls newest first, filtered; ``before``/``after`` bound the call number."""
        clauses: list[str] = []
        params: list[Any] = []
        if func_name is not None:
            clauses.append("func_name = ?")
            params.append(func_name)
        if status is not None:
            clauses.append("status = ?")
            params.append(check_status(status))
        if before is not None:
            clauses.append("call_num < ?")
            params.append(before)
        if after is not None:
            clauses.append("call_num > ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        params.append(max(1, min(limit, MAX_LIST)))
        rows = await self._conn.execute_fetchall(
            f"SELECT {_CALL_COLUMNS} FROM calls {where}ORDER BY call_num DESC LIMIT ?", params
        )
        return [_call(row) for row in rows]


async def _wipe(conn: aiosqlite.Connection) -> None:
    """Drop every table (start policy ``wipe``); the migrations then rebuild the schema."""
    await conn.execute("PRAGMA foreign_keys = OFF")
    await conn.execute("BEGIN")
    try:
        tables = [
            row[0]
            for row in await conn.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            await conn.execute(f"DROP TABLE {_quote(table)}")
        await conn.execute("PRAGMA user_version = 0")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("VACUUM")
    log.info("db.wiped", tables=tables)


async def _migrate(conn: aiosqlite.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``, one transaction per migration."""
    version: int = next(iter(await conn.execute_fetchall("PRAGMA user_version")))[0]
    if version > SCHEMA_VERSION:
        raise FumError(
            f"database schema version {version} is newer than this db service knows "
            f"({SCHEMA_VERSION}); refusing to open it"
        )
    for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        await conn.execute("BEGIN")
        try:
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {target}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        log.info("db.migrated", schema_version=target)
        version = target
    return version


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
