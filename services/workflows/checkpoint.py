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

The steps that reach the db together (the ``FinishInstances`` messages one db batch
reads: the steps that returned together on each worker) are done together
(``finish_instances``, ``_Group``), each with the outcome it would have had done alone,
one after the other: what they read is read once for all of them and
what they write is one executemany a table. A step that ends its session or fills a
fan-in's set goes alone, through ``finish_instance``, on what the steps before it wrote.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
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
    NextInstance,
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


def _sent_pending(store: Store, sent: list[int]) -> list[Call]:
    return [c for c in store.get_calls(sent) if c.status == "PENDING"] if sent else []


def look_up(store: Store, session_id: str, instance: str) -> InstanceState:
    session = get_session_row(store.db, session_id)
    row = store.db.execute(
        "SELECT result, sent FROM checkpoints WHERE session = ? AND instance = ?",
        (session_id, instance),
    ).fetchone()
    if row is None:
        return InstanceState(status=session.status)
    return InstanceState(
        status=session.status, checkpoint=row[0], sent=_sent_pending(store, json.loads(row[1]))
    )


def finish_instances(
    store: Store, requests: list[FinishInstance], keep: bool
) -> list[InstanceFinished]:
    """The steps in order, each with the outcome ``finish_instance`` gives it one after
    the other, done in groups (``_Group``): the leading steps that neither end a session
    nor fill a fan-in's set go together; the one that does goes alone, on the state they
    left, and the next group starts after it. A step whose session does not exist gets
    its error alone."""
    finished: list[InstanceFinished] = []
    while len(finished) < len(requests):
        finished.extend(_Group(store, requests[len(finished) :]).run())
        if len(finished) < len(requests):
            finished.append(_alone(store, requests[len(finished)], keep))
    return finished


def _alone(store: Store, request: FinishInstance, keep: bool) -> InstanceFinished:
    try:
        return finish_instance(store, request, keep)
    except NotFound as exc:
        return _no_session(exc.message)


def _no_session(error: str) -> InstanceFinished:
    return InstanceFinished(won=False, call=None, sent=[], session=None, error=error)


class _Open:
    """A session of the group: as read, and how many instances it has open."""

    def __init__(self, session: Session, count: int) -> None:
        self.session = session
        self.count = count


class _Step:
    """A step the group took, and what it did (replied once the group is written)."""

    def __init__(self, request: FinishInstance, session: Session | None) -> None:
        self.request = request
        self.session = session
        self.error: str | None = None  # its session does not exist
        self.won = False
        self.result = b"null"  # won: the instance's one result
        self.update = -1  # its call's update among the group's
        self.sent = (0, 0)  # won: the slice of the group's new calls it made
        self.lost_to: _Step | None = None  # lost to a step of this group...
        self.kept_sent: list[int] = []  # ... or to a checkpoint stored, which sent these


class _Group:
    """Steps done together as they would be one after the other: what
    they read (their sessions, checkpoints, instances, fan-in slots and sets) is read
    once for all of them, their outcomes are worked out on it in order, and their writes
    are one executemany a table (their sessions' counts one row each).

    The checkpoint stays a conditional insert: a step wins it only where neither the db
    (read in this transaction, on the db's only writing connection) nor an earlier step
    of the group holds one, and the insert has no ON CONFLICT: were that bookkeeping ever
    wrong, the insert would fail the request rather than keep two results.

    ``run`` stops before the first step that would end its session (its call failed, or
    its session has nothing left open) or fill a fan-in's set: that step needs the state
    the group leaves written (the fan-in's inputs, the session's result), so
    ``finish_instances`` does it alone, after the group's writes."""

    def __init__(self, store: Store, requests: list[FinishInstance]) -> None:
        self._store = store
        self._requests = requests
        db = store.db
        self._sessions = {
            row[0]: _Open(_session(row), row[7])
            for row in db.execute(
                f"SELECT {_SESSION_COLUMNS}, open FROM sessions "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (_json.encode(sorted({r.session for r in requests})).decode(),),
            )
        }
        own = [[r.session, r.instance] for r in requests]
        names = own + [[r.session, n.instance] for r in requests for n in r.calls]
        self._checkpoints: dict[tuple[str, str], _Step] = {}
        self._stored: dict[tuple[str, str], tuple[bytes, str]] = {
            (row[0], row[1]): (row[2], row[3])
            for row in db.execute(
                "SELECT c.session, c.instance, c.result, c.sent FROM json_each(?) j "
                "JOIN checkpoints c ON c.session = json_extract(j.value, '$[0]') "
                "AND c.instance = json_extract(j.value, '$[1]')",
                (_json.encode(own).decode(),),
            )
        }
        self._finished: dict[tuple[str, str], int] = {
            (row[0], row[1]): row[2]
            for row in db.execute(
                "SELECT i.session, i.name, i.finished FROM json_each(?) j "
                "JOIN instances i ON i.session = json_extract(j.value, '$[0]') "
                "AND i.name = json_extract(j.value, '$[1]')",
                (_json.encode(names).decode(),),
            )
        }
        slots = [[r.session, f.target.instance, f.slot] for r in requests for f in r.fan_ins]
        self._slots: set[tuple[str, str, int]] = set()
        self._filled: dict[tuple[str, str], tuple[int, int]] = {}
        if slots:  # (a chain's steps feed no fan-in)
            self._read_sets(db, slots)
        # what the group writes
        self._updates: list[CallUpdate] = []
        self._new: list[NextInstance] = []
        self._instances: list[tuple[str, str, int]] = []  # (session, name, index in _new)
        self._finishing: list[tuple[bool, str, str]] = []
        self._taken: list[tuple[str, str, int, str]] = []
        self._sets: dict[tuple[str, str], tuple[int, int]] = {}  # fan-ins' sets, as filled
        self._counted: set[str] = set()  # sessions whose count changed
        self._winners: list[_Step] = []

    def _read_sets(self, db: sqlite3.Connection, slots: list[list[Any]]) -> None:
        """The fan-in slots among ``slots`` taken already, and their sets as filled."""
        self._slots = {
            (row[0], row[1], row[2])
            for row in db.execute(
                "SELECT s.session, s.target, s.slot FROM json_each(?) j "
                "JOIN fan_in_slots s ON s.session = json_extract(j.value, '$[0]') "
                "AND s.target = json_extract(j.value, '$[1]') "
                "AND s.slot = json_extract(j.value, '$[2]')",
                (_json.encode(slots).decode(),),
            )
        }
        self._filled = {
            (row[0], row[1]): (row[2], row[3])
            for row in db.execute(
                "SELECT f.session, f.target, f.filled, f.size FROM json_each(?) j "
                "JOIN fan_ins f ON f.session = json_extract(j.value, '$[0]') "
                "AND f.target = json_extract(j.value, '$[1]')",
                (_json.encode([s[:2] for s in slots]).decode(),),
            )
        }

    def run(self) -> list[InstanceFinished]:
        """Take the leading steps that go together, write them, and their replies."""
        steps: list[_Step] = []
        for request in self._requests:
            step = self._take(request)
            if step is None:
                break
            steps.append(step)
        if not steps:
            return []
        applied, calls = self._write()
        return [self._reply(step, applied, calls) for step in steps]

    def _update(self, step: _Step, update: CallUpdate) -> _Step:
        step.update = len(self._updates)
        self._updates.append(update)
        return step

    def _take(self, request: FinishInstance) -> _Step | None:
        """The step's outcome, as ``finish_instance`` would find it here; None (and
        nothing changed) if it must go alone."""
        found = self._sessions.get(request.session)
        if found is None:
            step = _Step(request, None)
            step.error = f"no session {request.session!r}"
            return step
        session, update = found.session, request.update
        if update.status != "DONE":
            if session.status == "RUNNING":
                return None  # it ends its session ERROR
            return self._update(_Step(request, session), update)
        key = (request.session, request.instance)
        step = _Step(request, session)
        winner, stored = self._checkpoints.get(key), self._stored.get(key)
        if winner is not None or stored is not None:
            # A duplicate run lost: its call says the one result; it re-sends what the
            # winner sent (still PENDING: the winner's worker may have died before it could).
            step.lost_to = winner
            if stored is not None:
                kept, sent = stored
                step.kept_sent = json.loads(sent)
            else:
                assert winner is not None
                kept = winner.result
            return self._update(step, msgspec.structs.replace(update, result=kept))
        # Worked out first, written only if the step goes in the group.
        ends = not request.calls and not request.fan_ins
        finishes = self._finished.get(key) == 0
        opened = -1 if finishes else 0
        nexts: list[NextInstance] = []
        taken: list[tuple[str, str, int]] = []
        filled: dict[tuple[str, str], tuple[int, int]] = {}
        created: dict[tuple[str, str], int] = {}
        if session.status == "RUNNING" and not ends:
            nexts = list(request.calls)
            for fan_in in request.fan_ins:
                slot = (request.session, fan_in.target.instance, fan_in.slot)
                if slot in self._slots or slot in taken:
                    continue
                target = slot[:2]
                count, size = filled.get(target) or self._filled.get(target) or (0, fan_in.size)
                if count + 1 == fan_in.size:
                    return None  # it completes the set: it alone sends the fan-in's call
                taken.append(slot)
                filled[target] = (count + 1, size)
            for i, nxt in enumerate(nexts):
                name = (request.session, nxt.instance)
                if name not in self._finished and name not in created:
                    created[name] = len(self._new) + i
            opened += len(created)
        if found.count + opened <= 0 and session.status == "RUNNING":
            return None  # nothing left open: it ends its session
        # The step goes in the group: its writes.
        if opened:
            found.count += opened
            self._counted.add(request.session)
        step.won, step.result = True, update.result if update.result is not None else b"null"
        self._checkpoints[key] = step
        self._winners.append(step)
        self._update(step, update)
        if finishes:
            self._finished[key] = 1
            self._finishing.append((ends, *key))
        for slot in taken:
            self._slots.add(slot)
            self._taken.append((*slot, request.instance))
        self._filled.update(filled)
        self._sets.update(filled)
        for name, index in created.items():
            self._finished[name] = 0
            self._instances.append((*name, index))
        step.sent = (len(self._new), len(self._new) + len(nexts))
        self._new.extend(nexts)
        return step

    def _write(self) -> tuple[list[bool], list[Call]]:
        store, db = self._store, self._store.db
        applied = store.update_calls(self._updates)
        created_at = now()
        calls = store.create_calls(
            [
                NewCall(uuid=n.uuid, func_name=n.func_name, params=n.params, created_at=created_at)
                for n in self._new
            ]
        )
        writes: dict[str, Sequence[tuple[Any, ...]]] = {
            "INSERT INTO checkpoints (session, instance, result, sent) VALUES (?, ?, ?, ?)": [
                (
                    s.request.session,
                    s.request.instance,
                    s.result,
                    _json.encode([c.call_num for c in calls[s.sent[0] : s.sent[1]]]).decode(),
                )
                for s in self._winners
            ],
            "UPDATE instances SET finished = 1, ends = ? WHERE session = ? AND name = ? "
            "AND finished = 0": self._finishing,
            "INSERT INTO instances (session, name, call_num) VALUES (?, ?, ?)": [
                (session, name, calls[i].call_num) for session, name, i in self._instances
            ],
            "INSERT INTO fan_in_slots (session, target, slot, instance) VALUES (?, ?, ?, ?)": (
                self._taken
            ),
            "INSERT INTO fan_ins (session, target, filled, size) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET filled = excluded.filled": [
                (*target, count, size) for target, (count, size) in self._sets.items()
            ],
            "UPDATE sessions SET open = ? WHERE id = ?": [
                (self._sessions[session_id].count, session_id) for session_id in self._counted
            ],
        }
        for sql, rows in writes.items():
            if rows:
                db.executemany(sql, rows)
        return applied, calls

    def _reply(self, step: _Step, applied: list[bool], calls: list[Call]) -> InstanceFinished:
        if step.error is not None:
            return _no_session(step.error)
        store, update = self._store, self._updates[step.update]
        try:
            if step.won:
                return InstanceFinished(
                    won=True,
                    call=None if applied[step.update] else store.get_call(update.call_num),
                    sent=[c for c in calls[step.sent[0] : step.sent[1]] if c.status == "PENDING"],
                    session=step.session,
                )
            sent = step.kept_sent
            if step.lost_to is not None:
                sent = [c.call_num for c in calls[step.lost_to.sent[0] : step.lost_to.sent[1]]]
            return InstanceFinished(
                won=False,
                call=store.get_call(update.call_num),
                sent=_sent_pending(store, sent),
                session=step.session,
            )
        except NotFound as exc:
            return _no_session(exc.message)


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
            sent=_sent_pending(store, json.loads(was_sent)),
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
