"""The db side of workflows: sessions, checkpoints and the sets of the fan-ins.

Each function here runs on the store's thread inside the db's batch transaction (like the
store's own methods), so each request is atomic. ``finish_instance`` is the heart of it:

1. the call's final state is written, and its checkpoint is a conditional insert
   (``ON CONFLICT DO NOTHING``, unum's ``attribute_not_exists``): one result per instance;
2. only the run that won the insert sends on: the next instances' calls are created
   PENDING (by uuid: the same instance twice is one call), and its slot in each fan-in's
   set is taken; the step that fills a set creates the fan-in's call, with the sources'
   checkpointed outputs in slot order as its input: exactly once, whatever the order;
3. the session counts its open instances; when none is left it is DONE, its result the
   outputs of the instances that sent nothing on, and its checkpoints and sets are
   removed (unum's GC), unless ``keep`` (a setting, for debugging).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgspec

from services.common.db_protocol import (
    FinishInstance,
    InstanceFinished,
    InstanceState,
    SessionReply,
)
from services.common.errors import BadRequest, NotFound
from services.common.models import (
    Call,
    CallUpdate,
    NewCall,
    Session,
    SessionInstance,
    check_name,
    now,
)
from services.db.store import Store

_SESSION_COLUMNS = "id, app, status, created_at, finished_at, error, result"
_json = msgspec.json.Encoder()


def _session(row: Any) -> Session:
    return Session(
        id=row[0],
        app=row[1],
        status=row[2],
        created_at=row[3],
        finished_at=row[4],
        error=row[5],
        result=row[6],
    )


def get_session_row(db: sqlite3.Connection, session_id: str) -> Session:
    row = db.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no session {session_id!r}")
    return _session(row)


def start_session(store: Store, session: Session, instance: str, new: NewCall) -> Call:
    """Store a RUNNING session with one open instance, its Start, and that call."""
    check_name("app", session.app)
    check_name("function", new.func_name)
    db = store.db
    if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session.id,)).fetchone():
        raise BadRequest(f"session {session.id!r} exists")
    (call,) = store.create_calls([new])
    db.execute(
        "INSERT INTO sessions (id, app, status, open, created_at) VALUES (?, ?, 'RUNNING', 1, ?)",
        (session.id, session.app, session.created_at),
    )
    db.execute(
        "INSERT INTO instances (session, name, call_num) VALUES (?, ?, ?)",
        (session.id, instance, call.call_num),
    )
    return call


def _sent_pending(store: Store, sent: str) -> list[Call]:
    return [c for c in store.get_calls(json.loads(sent)) if c.status == "PENDING"]


def look_up(store: Store, session_id: str, instance: str) -> InstanceState:
    session = get_session_row(store.db, session_id)
    row = store.db.execute(
        "SELECT result, sent FROM checkpoints WHERE session = ? AND instance = ?",
        (session_id, instance),
    ).fetchone()
    if row is None:
        return InstanceState(status=session.status)
    return InstanceState(
        status=session.status, checkpoint=row[0], sent=_sent_pending(store, row[1])
    )


def finish_instances(
    store: Store, requests: list[FinishInstance], keep: bool
) -> list[InstanceFinished]:
    """Each step in turn; one whose session does not exist gets its error alone."""
    finished = []
    for request in requests:
        try:
            finished.append(finish_instance(store, request, keep))
        except NotFound as exc:
            finished.append(
                InstanceFinished(won=False, call=None, sent=[], session=None, error=exc.message)
            )
    return finished


def finish_instance(store: Store, request: FinishInstance, keep: bool) -> InstanceFinished:
    db = store.db
    session = get_session_row(db, request.session)
    update = request.update
    if update.status != "DONE":
        store.update_calls([update])
        if session.status == "RUNNING":
            error = f"{request.instance} (call {update.call_num}): {update.error or update.status}"
            session = _end(store, session, "ERROR", keep, error=error)
        return InstanceFinished(
            won=False, call=store.get_call(update.call_num), sent=[], session=session
        )
    result = update.result if update.result is not None else b"null"
    inserted = db.execute(
        "INSERT INTO checkpoints (session, instance, result, sent) VALUES (?, ?, ?, '[]') "
        "ON CONFLICT DO NOTHING",
        (request.session, request.instance, result),
    ).rowcount
    if not inserted:
        # A duplicate run lost: its call says the one result; it re-sends what the
        # winner sent (still PENDING: the winner's worker may have died before it could).
        kept, was_sent = db.execute(
            "SELECT result, sent FROM checkpoints WHERE session = ? AND instance = ?",
            (request.session, request.instance),
        ).fetchone()
        store.update_calls([msgspec.structs.replace(update, result=kept)])
        return InstanceFinished(
            won=False,
            call=store.get_call(update.call_num),
            sent=_sent_pending(store, was_sent),
            session=session,
        )
    (applied,) = store.update_calls([update])
    ends = not request.calls and not request.fan_ins
    opened = -db.execute(
        "UPDATE instances SET finished = 1, ends = ? WHERE session = ? AND name = ? "
        "AND finished = 0",
        (ends, request.session, request.instance),
    ).rowcount
    sent: list[Call] = []
    if session.status == "RUNNING" and not ends:
        sent, created = _send_on(store, request)
        opened += created
        db.execute(
            "UPDATE checkpoints SET sent = ? WHERE session = ? AND instance = ?",
            (_json.encode([c.call_num for c in sent]).decode(), request.session, request.instance),
        )
    (left,) = db.execute(
        "UPDATE sessions SET open = open + ? WHERE id = ? RETURNING open",
        (opened, request.session),
    ).fetchone()
    if left <= 0 and session.status == "RUNNING":
        short = db.execute(
            "SELECT target, filled, size FROM fan_ins WHERE session = ? AND filled < size LIMIT 1",
            (request.session,),
        ).fetchone()
        if short is None:
            session = _end(store, session, "DONE", keep)
        else:  # nothing left to run, and a fan-in still waits: it never will
            target, filled, size = short
            error = f"fan-in {target} got {filled} of its {size} inputs: the others never came"
            session = _end(store, session, "ERROR", keep, error=error)
    return InstanceFinished(
        won=True,
        call=None if applied else store.get_call(update.call_num),
        sent=[c for c in sent if c.status == "PENDING"],
        session=session,
    )


def _send_on(store: Store, request: FinishInstance) -> tuple[list[Call], int]:
    """Create the next instances' calls and take the fan-in slots; the calls sent, and how
    many instances that makes open in the session."""
    db, created_at = store.db, now()
    nexts = list(request.calls)
    for fan_in in request.fan_ins:
        target = fan_in.target
        taken = db.execute(
            "INSERT INTO fan_in_slots (session, target, slot, instance) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (request.session, target.instance, fan_in.slot, request.instance),
        ).rowcount
        if not taken:
            continue
        (filled,) = db.execute(
            "INSERT INTO fan_ins (session, target, filled, size) VALUES (?, ?, 1, ?) "
            "ON CONFLICT DO UPDATE SET filled = filled + 1 RETURNING filled",
            (request.session, target.instance, fan_in.size),
        ).fetchone()
        if filled == fan_in.size:  # this step completed the set: it alone sends
            nexts.append(
                msgspec.structs.replace(
                    target,
                    params=_fan_in_params(store, request.session, target.params, target.instance),
                )
            )
    calls = store.create_calls(
        [
            NewCall(uuid=n.uuid, func_name=n.func_name, params=n.params, created_at=created_at)
            for n in nexts
        ]
    )
    opened = 0
    for nxt, call in zip(nexts, calls, strict=True):
        opened += db.execute(
            "INSERT INTO instances (session, name, call_num) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (request.session, nxt.instance, call.call_num),
        ).rowcount
    return calls, opened


def _fan_in_params(store: Store, session: str, meta: bytes, target: str) -> bytes:
    """The fan-in's payload: ``meta`` with the sources' outputs, in slot order, as Data."""
    outputs = [
        msgspec.Raw(row[0])
        for row in store.db.execute(
            "SELECT c.result FROM fan_in_slots s JOIN checkpoints c "
            "ON c.session = s.session AND c.instance = s.instance "
            "WHERE s.session = ? AND s.target = ? ORDER BY s.slot",
            (session, target),
        )
    ]
    payload = {"Data": {"Source": "http", "Value": outputs}, **msgspec.json.decode(meta)}
    return _json.encode(payload)


def _end(
    store: Store, session: Session, status: str, keep: bool, error: str | None = None
) -> Session:
    """End a session: its result, its instances not started yet stopped, its
    checkpoints and sets removed (unless ``keep``)."""
    db = store.db
    result = None
    if status == "DONE":
        outputs = [
            row[0]
            for row in db.execute(
                "SELECT c.result FROM instances i JOIN checkpoints c "
                "ON c.session = i.session AND c.instance = i.name "
                "WHERE i.session = ? AND i.ends = 1 ORDER BY i.call_num",
                (session.id,),
            )
        ]
        result = outputs[0] if len(outputs) == 1 else b"[" + b",".join(outputs) + b"]"
    finished_at = now()
    db.execute(
        "UPDATE sessions SET status = ?, result = ?, error = ?, finished_at = ? WHERE id = ?",
        (status, result, error, finished_at, session.id),
    )
    pending = [
        row[0]
        for row in db.execute(
            "SELECT c.call_num FROM instances i JOIN calls c ON c.call_num = i.call_num "
            "WHERE i.session = ? AND c.status = 'PENDING'",
            (session.id,),
        )
    ]
    store.update_calls(
        [
            CallUpdate(
                call_num=num,
                status="ERROR",
                error=f"session {session.id} ended {status} before this instance did",
                finished_at=finished_at,
            )
            for num in pending
        ]
    )
    if not keep:
        db.execute("DELETE FROM checkpoints WHERE session = ?", (session.id,))
        db.execute("DELETE FROM fan_in_slots WHERE session = ?", (session.id,))
        db.execute("DELETE FROM fan_ins WHERE session = ?", (session.id,))
    return msgspec.structs.replace(
        session, status=status, result=result, error=error, finished_at=finished_at
    )


def cancel_session(store: Store, session_id: str, keep: bool) -> SessionReply:
    session = get_session_row(store.db, session_id)
    if session.status == "RUNNING":
        _end(store, session, "CANCELLED", keep, error="cancelled")
    return get_session(store, session_id)


def get_session(store: Store, session_id: str) -> SessionReply:
    session = get_session_row(store.db, session_id)
    rows = store.db.execute(
        "SELECT i.name, i.call_num, c.func_name, c.status, c.result, c.error, i.ends "
        "FROM instances i JOIN calls c ON c.call_num = i.call_num "
        "WHERE i.session = ? ORDER BY i.call_num",
        (session_id,),
    )
    instances = [
        SessionInstance(
            name=r[0],
            call_num=r[1],
            func_name=r[2],
            status=r[3],
            result=r[4],
            error=r[5],
            ends=bool(r[6]),
        )
        for r in rows
    ]
    return SessionReply(session=session, instances=instances)


def list_sessions(store: Store, app: str, before: float | None, limit: int) -> list[Session]:
    rows = store.db.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE app = ? AND created_at < ? "
        "ORDER BY created_at DESC LIMIT ?",
        (app, before if before is not None else float("inf"), max(1, min(limit, 1000))),
    )
    return [_session(row) for row in rows]
