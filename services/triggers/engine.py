"""The trigger engine: every stored event goes through the triggers it activates.

It runs in the db, on the store's thread, inside the transaction that stores the event
(a call's end, or a client's publish). So an event is durable before it is acknowledged,
and each trigger processes it exactly once: its context, its count of fired actions and
what its action made (calls, events) commit together with the event, or not at all. A
restart of any service finds the work done or not done, never half. An event that
activates no trigger is stored all the same.

Tables: ``events`` (the stream, ``seq`` in order), ``triggers`` (one row each; ``token``
names one version of a trigger, so a trigger put again starts afresh),
``trigger_activations`` (subject/type -> token, the lookup of every event) and
``trigger_inbox`` (the events a trigger holds until it fires).
"""

from __future__ import annotations

import base64
import pickle
import secrets
import sqlite3
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from services.common.errors import BadRequest, NotFound
from services.common.models import NewCall, check_name, now

from .events import Event, EventIn
from .triggers import (
    MAX_ACTIVATIONS,
    Action,
    Activation,
    Condition,
    InvokeAction,
    JoinCondition,
    PassAction,
    PublishAction,
    PythonAction,
    PythonCondition,
    ResumeAction,
    TerminateAction,
    ThresholdCondition,
    Trigger,
    TriggerIn,
    TrueCondition,
)

if TYPE_CHECKING:
    from services.db.store import Store

log = structlog.get_logger()

EVALUATION = "t.e."  # the uuid prefix of a Python condition's calls: t.e.<token>.<seq>
MAX_DEPTH = 16  # events published by triggers for an event, and so on: deeper ones are kept
MAX_LIST = 1000

_json = msgspec.json.Encoder()
_condition = msgspec.json.Decoder(Condition)
_action = msgspec.json.Decoder(Action)
_activation = msgspec.json.Decoder(list[Activation])
_context = msgspec.json.Decoder(dict[str, Any])

_EVENT_COLUMNS = "seq, id, source, type, subject, time, data"
_TRIGGER_COLUMNS = (
    "id, token, activation, condition, action, context, transient, active, fired, "
    "execution, created_at, updated_at"
)


class _Verdict(msgspec.Struct):
    fired: bool
    context: dict[str, Any]


class _Evaluated(msgspec.Struct):
    """The result of a Python condition's call (the built-in function's ``json`` form)."""

    json: _Verdict


_verdict = msgspec.json.Decoder(_Evaluated)


def _callable_params(call: dict[str, Any], args: tuple[Any, ...], json_out: bool = False) -> bytes:
    """The built-in function's params: the SDK's pickled callable, and these arguments
    (plain data, pickled by the standard library: a service never unpickles anything)."""
    pickled = base64.b64encode(pickle.dumps((args, {}), protocol=4)).decode("ascii")
    return _json.encode({**call, "args": pickled, **({"out": "json"} if json_out else {})})


class _Spec(msgspec.Struct):
    """What never changes in one version (token) of a trigger, decoded once."""

    condition: Condition
    action: Action
    transient: bool
    subjects: frozenset[str] = frozenset()  # a join's subjects, for the lookup of each event


def _event(row: Any) -> Event:
    return Event(
        seq=row[0],
        id=row[1],
        source=row[2],
        type=row[3],
        subject=row[4],
        time=row[5],
        data=msgspec.json.decode(row[6]),
    )


class TriggerEngine:
    """Events and triggers in the store's SQLite file; every method runs on its thread
    inside the caller's transaction."""

    def __init__(self, store: Store, resume: Callable[[str], None]) -> None:
        self._store = store
        self._resume = resume
        self._specs: dict[str, _Spec] = {}

    @property
    def _db(self) -> sqlite3.Connection:
        return self._store.db

    # ---- events

    def publish(self, events: list[EventIn]) -> list[Event]:
        """Store clients' events (an id already stored is that event) and process them."""
        stored = []
        for given in events:
            event = Event(
                id=given.id or f"e-{secrets.token_hex(12)}",
                source=given.source,
                type=given.type,
                subject=given.subject,
                time=now(),
                data=given.data,
            )
            stored.append(self.store_event(event))
        return stored

    def store_event(self, event: Event, depth: int = 0) -> Event:
        """Append an event to the stream and run it through its triggers; an id already
        stored returns the stored event, processed already."""
        inserted = self._insert(event)
        if inserted is None:
            row = self._db.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ?", (event.id,)
            ).fetchone()
            return _event(row)
        self._drain([inserted], depth)
        return inserted

    def _drain(self, events: list[Event], depth: int) -> None:
        """Process stored events, and the events their triggers publish, and so on."""
        queue: deque[tuple[Event, int]] = deque((event, depth) for event in events)
        while queue:
            current, level = queue.popleft()
            if level > MAX_DEPTH:
                log.warning("triggers.too_deep", event=current.id, depth=level)
                continue
            for published in self._process(current):
                queue.append((published, level + 1))

    def _insert(self, event: Event) -> Event | None:
        """Append an event to the stream, numbered; None if its id is stored already."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO events (id, source, type, subject, time, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.source,
                event.type,
                event.subject,
                event.time,
                _json.encode(event.data),
            ),
        )
        if cursor.rowcount == 0:
            return None
        return msgspec.structs.replace(event, seq=cursor.lastrowid or 0)

    def list_events(
        self,
        *,
        subject: str | None = None,
        type: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[Event]:
        clauses, params = _filters(subject=subject, type=type)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        params.append(max(1, min(limit, MAX_LIST)))
        rows = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events {where}ORDER BY seq DESC LIMIT ?", params
        )
        return [_event(row) for row in rows]

    # ---- triggers

    def put_trigger(
        self, trigger_id: str, given: TriggerIn, execution: str | None = None
    ) -> tuple[Trigger, bool]:
        """Create or replace a trigger (a new version: context as given, nothing joined)."""
        check_name("trigger", trigger_id)
        if not 1 <= len(given.activation) <= MAX_ACTIVATIONS:
            raise BadRequest(f"a trigger needs 1 to {MAX_ACTIVATIONS} activation events")
        condition, action = given.condition, given.action
        if isinstance(condition, JoinCondition) and (condition.count is None) == (
            condition.subjects is None
        ):
            raise BadRequest("a join condition takes either 'count' or 'subjects'")
        if isinstance(action, ResumeAction) and execution is None:
            raise BadRequest("resume actions are made by coordinators, not by clients")
        for part in (action, condition):
            if isinstance(part, InvokeAction | PythonAction | PythonCondition):
                self._store.get_function(part.function)  # NotFound for an unknown one
        old = self._db.execute(
            "SELECT token, created_at FROM triggers WHERE id = ?", (trigger_id,)
        ).fetchone()
        if old is not None:
            self._drop(old[0])
        token = secrets.token_hex(8)
        t = now()
        trigger = Trigger(
            id=trigger_id,
            activation=given.activation,
            condition=condition,
            action=action,
            context=given.context,
            transient=given.transient,
            execution=execution,
            created_at=old[1] if old else t,
            updated_at=t,
        )
        self._db.execute(
            f"INSERT OR REPLACE INTO triggers ({_TRIGGER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?, ?)",
            (
                trigger_id,
                token,
                _json.encode(trigger.activation),
                _json.encode(condition),
                _json.encode(action),
                _json.encode(trigger.context),
                int(trigger.transient),
                execution,
                trigger.created_at,
                trigger.updated_at,
            ),
        )
        self._db.executemany(
            "INSERT INTO trigger_activations (token, subject, type) VALUES (?, ?, ?)",
            [(token, a.subject, a.type) for a in given.activation],
        )
        return trigger, old is None

    def get_trigger(self, trigger_id: str) -> Trigger:
        row = self._db.execute(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE id = ?", (trigger_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no trigger named {trigger_id!r}")
        return self._trigger(row)

    def list_triggers(
        self,
        *,
        active: bool | None = None,
        subject: str | None = None,
        execution: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Trigger]:
        """Triggers by id; ``subject``: those an event of it activates."""
        clauses: list[str] = []
        params: list[Any] = []
        if active is not None:
            clauses.append("active = ?")
            params.append(int(active))
        if execution is not None:
            clauses.append("execution = ?")
            params.append(execution)
        if subject is not None:
            clauses.append("token IN (SELECT token FROM trigger_activations WHERE subject = ?)")
            params.append(subject)
        if after is not None:
            clauses.append("id > ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        params.append(max(1, min(limit, MAX_LIST)))
        rows = self._db.execute(
            f"SELECT {_TRIGGER_COLUMNS} FROM triggers {where}ORDER BY id LIMIT ?", params
        )
        return [self._trigger(row) for row in rows]

    def delete_trigger(self, trigger_id: str) -> None:
        row = self._db.execute("SELECT token FROM triggers WHERE id = ?", (trigger_id,)).fetchone()
        if row is None:
            raise NotFound(f"no trigger named {trigger_id!r}")
        self._drop(row[0])
        self._db.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,))

    def _trigger(self, row: Any) -> Trigger:
        joined = [
            r[0]
            for r in self._db.execute(
                "SELECT e.id FROM trigger_inbox i JOIN events e ON e.seq = i.seq "
                "WHERE i.token = ? ORDER BY i.seq",
                (row[1],),
            )
        ]
        return Trigger(
            id=row[0],
            activation=_activation.decode(row[2]),
            condition=_condition.decode(row[3]),
            action=_action.decode(row[4]),
            context=_context.decode(row[5]),
            transient=bool(row[6]),
            active=bool(row[7]),
            fired=row[8],
            events=joined,
            execution=row[9],
            created_at=row[10],
            updated_at=row[11],
        )

    def _drop(self, token: str) -> None:
        """A version of a trigger takes no more events: its lookups and inbox go."""
        self._db.execute("DELETE FROM trigger_activations WHERE token = ?", (token,))
        self._db.execute("DELETE FROM trigger_inbox WHERE token = ?", (token,))
        self._db.execute("DELETE FROM trigger_queue WHERE token = ?", (token,))
        self._specs.pop(token, None)

    def _spec(self, token: str, row: Any) -> _Spec:
        spec = self._specs.get(token)
        if spec is None:
            condition = _condition.decode(row[1])
            subjects = frozenset(
                condition.subjects
                if isinstance(condition, JoinCondition) and condition.subjects
                else ()
            )
            spec = _Spec(condition, _action.decode(row[2]), bool(row[3]), subjects)
            if len(self._specs) > 10_000:
                self._specs.clear()
            self._specs[token] = spec
        return spec

    # ---- processing

    def _process(self, event: Event) -> list[Event]:
        """Run one stored event through every active trigger it activates; the events
        their actions published (to be processed next)."""
        published: list[Event] = []
        rows = self._db.execute(
            "SELECT t.id, t.condition, t.action, t.transient, t.token, t.context, t.fired, "
            "t.evaluating FROM triggers t WHERE t.active = 1 AND t.token IN ("
            "SELECT token FROM trigger_activations WHERE subject = ? "
            "AND (type IS NULL OR type = ?)) ORDER BY t.created_at, t.id",
            (event.subject, event.type),
        ).fetchall()
        for row in rows:
            trigger_id, token, fired = row[0], row[4], row[6]
            spec = self._spec(token, row)
            context = _context.decode(row[5])
            if isinstance(spec.condition, PythonCondition):
                if row[7] is None:
                    self._evaluate(spec.condition, token, context, event)
                else:  # one evaluation at a time: each sees the context the last left
                    self._db.execute(
                        "INSERT INTO trigger_queue (token, seq) VALUES (?, ?)", (token, event.seq)
                    )
                continue
            fires = self._condition(spec, token, context, event)
            published.extend(self._settle(spec, trigger_id, token, fired, context, fires))
        return published

    def _settle(
        self,
        spec: _Spec,
        trigger_id: str,
        token: str,
        fired: int,
        context: dict[str, Any],
        fires: bool,
    ) -> list[Event]:
        """Keep a trigger's context after an event, and fire it if ``fires``."""
        if not fires:
            self._db.execute(
                "UPDATE triggers SET context = ? WHERE token = ?", (_json.encode(context), token)
            )
            return []
        joined = self._take_inbox(token)
        fired += 1
        published = self._act(spec.action, trigger_id, token, fired, context, joined)
        done = spec.transient or isinstance(spec.action, TerminateAction)
        self._db.execute(
            "UPDATE triggers SET context = ?, fired = ?, active = ?, updated_at = ? "
            "WHERE token = ?",
            (_json.encode(context), fired, int(not done), now(), token),
        )
        if done:
            self._drop(token)
        return published

    # ---- Python conditions: a call per event, one at a time

    def _evaluate(
        self, condition: PythonCondition, token: str, context: dict[str, Any], event: Event
    ) -> None:
        """Make the call that evaluates ``condition`` on ``event`` (which joins the inbox:
        what the action gets when it fires); the trigger waits for it."""
        self._db.execute(
            "INSERT INTO trigger_inbox (token, seq, subject) VALUES (?, ?, ?)",
            (token, event.seq, event.subject),
        )
        self._store.create_and_place(
            [
                NewCall(
                    uuid=f"{EVALUATION}{token}.{event.seq}",
                    func_name=condition.function,
                    params=_callable_params(
                        condition.call, (context, msgspec.to_builtins(event)), json_out=True
                    ),
                    created_at=now(),
                )
            ]
        )
        self._db.execute("UPDATE triggers SET evaluating = ? WHERE token = ?", (event.seq, token))

    def evaluated(self, uuid: str, status: str, result: bytes | None) -> None:
        """A call has ended: if it evaluated a Python condition, fire or not (a call that
        failed does not fire and changes nothing), then evaluate the next event."""
        if not uuid.startswith(EVALUATION):
            return
        token, _, seq = uuid[len(EVALUATION) :].rpartition(".")
        row = self._db.execute(
            "SELECT id, condition, action, transient, token, context, fired FROM triggers "
            "WHERE token = ? AND active = 1 AND evaluating = ?",
            (token, int(seq) if seq.isdigit() else -1),
        ).fetchone()
        if row is None:
            return  # the trigger was replaced or deleted meanwhile
        spec = self._spec(token, row)
        context = _context.decode(row[5])
        fires = False
        if status == "DONE" and result is not None:
            try:
                verdict = _verdict.decode(result).json
                context, fires = verdict.context, verdict.fired
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("triggers.bad_verdict", trigger=row[0], error=str(exc))
        else:
            log.warning("triggers.condition_failed", trigger=row[0], status=status)
        self._db.execute("UPDATE triggers SET evaluating = NULL WHERE token = ?", (token,))
        published = self._settle(spec, row[0], token, row[6], context, fires)
        following = self._db.execute(
            f"SELECT {', '.join('e.' + c.strip() for c in _EVENT_COLUMNS.split(','))} "
            "FROM trigger_queue q JOIN events e ON e.seq = q.seq WHERE q.token = ? "
            "ORDER BY q.seq LIMIT 1",
            (token,),
        ).fetchone()
        active = self._db.execute(
            "SELECT 1 FROM triggers WHERE token = ? AND active = 1", (token,)
        ).fetchone()
        if following is not None and active is not None:
            nxt = _event(following)
            self._db.execute(
                "DELETE FROM trigger_queue WHERE token = ? AND seq = ?", (token, nxt.seq)
            )
            assert isinstance(spec.condition, PythonCondition)
            self._evaluate(spec.condition, token, context, nxt)
        self._drain(published, 1)

    def _condition(self, spec: _Spec, token: str, context: dict[str, Any], event: Event) -> bool:
        """Whether the trigger fires on ``event``; updates its context and inbox."""
        condition = spec.condition
        if isinstance(condition, JoinCondition) and condition.subjects is not None:
            if event.subject not in spec.subjects:
                return False
            seen = self._db.execute(
                "SELECT 1 FROM trigger_inbox WHERE token = ? AND subject = ?",
                (token, event.subject),
            ).fetchone()
            if seen is not None:
                return False
        self._db.execute(
            "INSERT INTO trigger_inbox (token, seq, subject) VALUES (?, ?, ?)",
            (token, event.seq, event.subject),
        )
        if isinstance(condition, TrueCondition):
            return True
        if isinstance(condition, JoinCondition):
            count = int(context.get("count", 0)) + 1
            context["count"] = count
            wanted = condition.count if condition.count is not None else len(spec.subjects)
            if count < wanted:
                return False
            context["count"] = 0
            return True
        assert isinstance(condition, ThresholdCondition)
        value = context.get(condition.key, 0)
        value = (value if isinstance(value, int) else 0) + 1
        context[condition.key] = value
        if value < condition.value:
            return False
        context[condition.key] = 0
        return True

    def _take_inbox(self, token: str) -> list[Event]:
        rows = self._db.execute(
            f"SELECT {', '.join('e.' + c.strip() for c in _EVENT_COLUMNS.split(','))} "
            "FROM trigger_inbox i JOIN events e ON e.seq = i.seq WHERE i.token = ? "
            "ORDER BY i.seq",
            (token,),
        ).fetchall()
        self._db.execute("DELETE FROM trigger_inbox WHERE token = ?", (token,))
        return [_event(row) for row in rows]

    def _act(
        self,
        action: Action,
        trigger_id: str,
        token: str,
        fired: int,
        context: dict[str, Any],
        events: list[Event],
    ) -> list[Event]:
        """Do a trigger's action: its ids come from the trigger's version and fired count,
        so the same firing can never make two calls or two events."""
        if isinstance(action, InvokeAction):
            params = _json.encode({"events": events, "context": context, "trigger": trigger_id})
            self._store.create_and_place(
                [
                    NewCall(
                        uuid=f"t.{token}.{fired}",
                        func_name=action.function,
                        params=params,
                        created_at=now(),
                    )
                ]
            )
        elif isinstance(action, PublishAction):
            event = Event(
                id=f"t.{token}.{fired}",
                source=f"fum/triggers/{trigger_id}",
                type=action.event.type,
                subject=action.event.subject,
                time=now(),
                data={"trigger": trigger_id, "events": [e.id for e in events]},
            )
            inserted = self._insert(event)
            if inserted is not None:
                return [inserted]
        elif isinstance(action, PythonAction):
            events_data = [msgspec.to_builtins(e) for e in events]
            self._store.create_and_place(
                [
                    NewCall(
                        uuid=f"t.{token}.{fired}",
                        func_name=action.function,
                        params=_callable_params(action.call, (context, events_data)),
                        created_at=now(),
                    )
                ]
            )
        elif isinstance(action, ResumeAction):
            self._resume(action.execution)
        else:
            assert isinstance(action, PassAction | TerminateAction)
        return []


def _filters(**equal: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return clauses, params
