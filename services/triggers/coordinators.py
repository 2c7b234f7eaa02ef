"""Executions of durable coordinators: their history, how they wait and resume.

A coordinator is a call (of a callable, through the SDK's built-in function, or of a
deployed function) whose params carry ``durable``: its execution id, its run number and
the history of its steps. Its executor (``fum.durable``) numbers every step it issues;
when it needs a result that is not in the history it ends its call with a
**suspension**: the steps it issued that are new, and the ones it waits for. The db then,
in the transaction that ends the call: marks the call ``WAITING``, records the new
steps and creates their calls (ids ``x.<execution>.s<seq>.<item>``, so a run repeated
after a crash makes none twice), and puts a trigger that joins the end events of the
calls waited for; its action runs the coordinator again with the history (a new call,
``x.<execution>.r<run>``). A run whose awaited calls have all ended resumes at once.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from services.common.errors import BadRequest, NotFound
from services.common.models import FINAL_STATUSES, NewCall, check_name, now

from .events import call_subject
from .triggers import Activation, JoinCondition, ResumeAction, TriggerIn

if TYPE_CHECKING:
    from services.db.store import Store

SUSPEND_KEY = "fum.durable"
_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_STATUSES))
MAX_STEP_CALLS = 100_000
RUN_PREFIX = "x."

_json = msgspec.json.Encoder()


class NewStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seq: int
    kind: str
    identity: str
    function: str
    params: list[msgspec.Raw]


class Suspension(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a coordinator's run ends with when it must wait."""

    steps: list[NewStep]
    wait: list[int]


class _Suspended(msgspec.Struct, frozen=True):
    suspend: Suspension


_suspended = msgspec.json.Decoder(dict[str, _Suspended])


class Step(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    seq: int
    kind: str
    identity: str
    function: str
    call_nums: list[int]
    run: int
    created_at: float


class Execution(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A coordinator's execution: ``runs`` counts the times it ran; ``call_num`` is its
    latest run's call."""

    id: str
    name: str
    function: str
    status: str  # RUNNING, WAITING, DONE, ERROR
    runs: int
    call_num: int | None
    run_calls: list[int] = []
    result: bytes | None = None
    error: str | None = None
    steps: list[Step] = []
    step_function: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None


class ExecutionIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Start an execution: ``function`` runs the coordinator with ``params`` (a JSON
    object); ``stepFunction`` is the built-in function that runs its callables."""

    function: str
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    name: str | None = None
    id: str | None = None
    step_function: str | None = msgspec.field(default=None, name="stepFunction")


class NewExecution(msgspec.Struct, frozen=True, kw_only=True):
    """What the api asks the db to start (``ExecutionIn`` with its params as JSON text)."""

    function: str
    params: bytes
    name: str | None = None
    id: str | None = None
    step_function: str | None = None

    @classmethod
    def of(cls, given: ExecutionIn) -> NewExecution:
        return cls(
            function=given.function,
            params=bytes(given.params),
            name=given.name,
            id=given.id,
            step_function=given.step_function,
        )


def run_uuid(execution: str, run: int) -> str:
    return f"{RUN_PREFIX}{execution}.r{run}"


def run_of(uuid: str) -> tuple[str, int] | None:
    """(execution, run) of a coordinator's run call, from its uuid; None for others."""
    if not uuid.startswith(RUN_PREFIX):
        return None
    execution, _, run = uuid[len(RUN_PREFIX) :].rpartition(".r")
    return (execution, int(run)) if execution and run.isdigit() else None


def suspension_of(result: bytes | None) -> Suspension | str | None:
    """The suspension a run's result holds; None for a plain result; an error text for
    one that says it suspends but is malformed."""
    if result is None or SUSPEND_KEY.encode() not in result[:64]:
        return None
    try:
        return _suspended.decode(result)[SUSPEND_KEY].suspend
    except (msgspec.ValidationError, msgspec.DecodeError, KeyError) as exc:
        return f"the coordinator's suspension is malformed: {exc}"


class Coordinators:
    """Executions in the store's SQLite file, on its thread, in the caller's transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _db(self) -> sqlite3.Connection:
        return self._store.db

    def start(self, given: NewExecution, caller: str | None) -> tuple[Execution, bool]:
        """Start an execution (its first run's call); one of that id started already is
        given back as it is. Whether it is new."""
        execution_id = given.id or secrets.token_hex(8)
        check_name("execution", execution_id)
        self._store.get_function(given.function)
        if given.step_function is not None:
            self._store.get_function(given.step_function)
        raw = given.params
        try:
            params = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"the coordinator's params are not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise BadRequest("the coordinator's params must be a JSON object")
        if self._db.execute("SELECT 1 FROM executions WHERE id = ?", (execution_id,)).fetchone():
            return self.get(execution_id), False  # started already: the same execution
        t = now()
        self._db.execute(
            "INSERT INTO executions (id, name, function, params, step_function, status, runs, "
            "created_at, updated_at, caller) VALUES (?, ?, ?, ?, ?, 'RUNNING', 0, ?, ?, ?)",
            (
                execution_id,
                given.name or given.function,
                given.function,
                raw,
                given.step_function,
                t,
                t,
                caller,
            ),
        )
        self.resume(execution_id)
        return self.get(execution_id), True

    def resume(self, execution_id: str) -> None:
        """Run the coordinator (again): a new call whose params hold the history."""
        row = self._db.execute(
            "SELECT function, params, step_function, runs, caller FROM executions "
            "WHERE id = ? AND status IN ('RUNNING', 'WAITING')",
            (execution_id,),
        ).fetchone()
        if row is None:
            return
        function, params, step_function, runs, caller = row
        run = runs + 1
        history = {
            "execution": execution_id,
            "run": run,
            "stepFunction": step_function,
            "steps": self._history(execution_id),
        }
        body = msgspec.json.decode(params)
        body["durable"] = history
        (call,) = self._store.create_and_place(
            [
                NewCall(
                    uuid=run_uuid(execution_id, run),
                    func_name=function,
                    params=_json.encode(body),
                    created_at=now(),
                    caller=caller,
                )
            ]
        )
        self._db.execute(
            "UPDATE executions SET runs = ?, call_num = ?, status = 'RUNNING', updated_at = ? "
            "WHERE id = ?",
            (run, call.call_num, now(), execution_id),
        )
        self._db.execute(
            "INSERT OR IGNORE INTO execution_runs (execution, run, call_num) VALUES (?, ?, ?)",
            (execution_id, run, call.call_num),
        )

    def _history(self, execution_id: str) -> list[dict[str, Any]]:
        """Every step with its calls' ends, as the coordinator reads them: one query for
        the steps, one for all their calls."""
        rows = [
            (seq, kind, identity, msgspec.json.decode(call_nums))
            for seq, kind, identity, call_nums in self._db.execute(
                "SELECT seq, kind, identity, call_nums FROM execution_steps WHERE execution = ? "
                "ORDER BY seq",
                (execution_id,),
            )
        ]
        ends = {
            num: {
                "callNum": num,
                "status": status,
                "result": None if result is None else msgspec.Raw(result),
                "error": error,
            }
            for num, status, result, error in self._db.execute(
                "SELECT call_num, status, result, error FROM calls "
                "WHERE call_num IN (SELECT value FROM json_each(?))",
                (_json.encode([n for *_, nums in rows for n in nums]).decode(),),
            )
        }
        return [
            {
                "seq": seq,
                "kind": kind,
                "identity": identity,
                "calls": [ends.get(num, {"callNum": num, "status": "PENDING"}) for num in nums],
            }
            for seq, kind, identity, nums in rows
        ]

    def current(self, execution_id: str, run: int) -> tuple[bool, str | None]:
        """Whether ``run`` is the execution's latest and running; and the execution's
        starter (whose calls its steps are)."""
        row = self._db.execute(
            "SELECT runs, status, caller FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            return False, None
        return row[0] == run and row[1] == "RUNNING", row[2]

    def suspend(
        self, execution_id: str, run: int, suspension: Suspension, caller: str | None
    ) -> str | None:
        """Record a run's new steps, make their calls and wait for those it waits on;
        the error that fails the execution instead, if any. Only the steps the run names
        are read (not the whole history), with their calls' numbers."""
        named = {step.seq for step in suspension.steps} | set(suspension.wait)
        known = {
            seq: (identity, msgspec.json.decode(call_nums))
            for seq, identity, call_nums in self._db.execute(
                "SELECT seq, identity, call_nums FROM execution_steps WHERE execution = ? "
                "AND seq IN (SELECT value FROM json_each(?))",
                (execution_id, _json.encode(sorted(named)).decode()),
            )
        }
        total = sum(len(step.params) for step in suspension.steps)
        if total > MAX_STEP_CALLS:
            return f"a coordinator may issue at most {MAX_STEP_CALLS} calls at once"
        open_calls: set[int] = set()  # of the steps made now: none has ended yet
        for step in suspension.steps:
            if step.seq in known:
                if known[step.seq][0] != step.identity:
                    return (
                        f"non-determinism: step {step.seq} was {known[step.seq][0]} and is now "
                        f"{step.identity}"
                    )
                continue
            try:
                self._store.get_function(step.function)
            except NotFound as exc:
                return exc.message
            calls = self._store.create_and_place(
                [
                    NewCall(
                        uuid=f"{RUN_PREFIX}{execution_id}.s{step.seq}.{index}",
                        func_name=step.function,
                        params=bytes(params),
                        created_at=now(),
                        caller=caller,  # the steps are the execution's starter's calls
                    )
                    for index, params in enumerate(step.params)
                ]
            )
            nums = [c.call_num for c in calls]
            self._db.execute(
                "INSERT INTO execution_steps (execution, seq, kind, identity, function, "
                "call_nums, run, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution_id,
                    step.seq,
                    step.kind,
                    step.identity,
                    step.function,
                    _json.encode(nums),
                    run,
                    now(),
                ),
            )
            known[step.seq] = (step.identity, nums)
            open_calls.update(c.call_num for c in calls if c.status not in FINAL_STATUSES)
        missing = [seq for seq in suspension.wait if seq not in known]
        if missing:
            return f"the coordinator waits for steps it never issued: {missing}"
        awaited = [num for seq in suspension.wait for num in known[seq][1]]
        earlier = [num for num in awaited if num not in open_calls]
        if earlier:  # steps of earlier runs (or made twice): which of their calls go on
            open_calls.update(
                num
                for (num,) in self._db.execute(
                    "SELECT call_num FROM calls WHERE call_num IN "
                    f"(SELECT value FROM json_each(?)) AND status NOT IN ({_FINAL_SQL})",
                    (_json.encode(earlier).decode(),),
                )
            )
        self._db.execute(
            "UPDATE executions SET status = 'WAITING', updated_at = ? WHERE id = ?",
            (now(), execution_id),
        )
        waited = [num for num in awaited if num in open_calls]
        if not waited:
            self.resume(execution_id)
            return None
        subjects = [call_subject(num) for num in waited]
        self._store.triggers.put_trigger(
            f"{RUN_PREFIX}{execution_id}.w{run}",
            TriggerIn(
                activation=[Activation(subject) for subject in subjects],
                condition=JoinCondition(subjects=subjects),
                action=ResumeAction(execution_id),
                transient=True,
            ),
            execution=execution_id,
        )
        return None

    def finish(
        self, execution_id: str, status: str, result: bytes | None, error: str | None
    ) -> None:
        t = now()
        self._db.execute(
            "UPDATE executions SET status = ?, result = ?, error = ?, updated_at = ?, "
            "finished_at = ? WHERE id = ? AND status IN ('RUNNING', 'WAITING')",
            (status, result, error, t, t, execution_id),
        )

    def list(self, before: float | None, limit: int) -> list[Execution]:
        """Executions newest first (made before ``before``), without their steps."""
        rows = self._db.execute(
            "SELECT id, name, function, status, runs, call_num, error, step_function, "
            "created_at, updated_at, finished_at FROM executions WHERE created_at < ? "
            "ORDER BY created_at DESC LIMIT ?",
            (1e300 if before is None else before, max(1, min(limit, 1000))),
        )
        return [
            Execution(
                id=r[0],
                name=r[1],
                function=r[2],
                status=r[3],
                runs=r[4],
                call_num=r[5],
                error=r[6],
                step_function=r[7],
                created_at=r[8],
                updated_at=r[9],
                finished_at=r[10],
            )
            for r in rows
        ]

    def get(self, execution_id: str) -> Execution:
        row = self._db.execute(
            "SELECT id, name, function, status, runs, call_num, result, error, step_function, "
            "created_at, updated_at, finished_at FROM executions WHERE id = ?",
            (execution_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no execution {execution_id!r}")
        steps = [
            Step(
                seq=r[0],
                kind=r[1],
                identity=r[2],
                function=r[3],
                call_nums=msgspec.json.decode(r[4]),
                run=r[5],
                created_at=r[6],
            )
            for r in self._db.execute(
                "SELECT seq, kind, identity, function, call_nums, run, created_at "
                "FROM execution_steps WHERE execution = ? ORDER BY seq",
                (execution_id,),
            )
        ]
        run_calls = [
            r[0]
            for r in self._db.execute(
                "SELECT call_num FROM execution_runs WHERE execution = ? ORDER BY run",
                (execution_id,),
            )
        ]
        return Execution(
            id=row[0],
            name=row[1],
            function=row[2],
            status=row[3],
            runs=row[4],
            call_num=row[5],
            run_calls=run_calls,
            result=row[6],
            error=row[7],
            steps=steps,
            step_function=row[8],
            created_at=row[9],
            updated_at=row[10],
            finished_at=row[11],
        )
