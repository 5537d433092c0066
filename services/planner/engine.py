"""``TaskEngine``: submit tasks, and run their steps durably from the database.

Each replica runs one claim loop: it claims runnable steps in batches with a lease (``planner_lease_ttl``),
runs each as its own asyncio task (independent steps run in parallel), renews the leases of the calls in
flight every third of the TTL, and records every attempt. A replica that dies stops renewing; once its
leases lapse any replica claims the steps again and the retry carries the same idempotency key to the same
agent instance (see :mod:`dispatch`). A lost lease, a cancelled task or a failed renewal cancels the local
call. Database outages are waited out: loops back off and try again, never exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import struct_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace

from agentmesh import telemetry
from agentmesh._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MeshError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentmesh._group_commit import GroupCommit
from agentmesh._registry_client import RegistryClient
from agentmesh._settings import Settings
from agentmesh.agent import struct_to_dict
from agentmesh.audit import AuditEntry
from agentmesh.services.planner.canaries import Canaries
from agentmesh.services.planner.dispatch import Choice, Dispatcher
from agentmesh.services.planner.planning import ModelPlanner, Planner
from agentmesh.services.planner.plans import StepSpec
from agentmesh.services.planner.playbooks import PlaybookLibrary
from agentmesh.services.planner.rules import OutputRejected, check_output
from agentmesh.services.planner.store import (
    FINAL_TASK_STATES,
    TASK_EVENTS_CHANNEL,
    AttemptEnd,
    AttemptFinish,
    AttemptStart,
    ClaimAhead,
    Claimed,
    PlannerStore,
    Prestart,
    StartRequest,
    TaskRow,
)
from agentmesh.services.planner.templates import Scope, refers_to_steps, resolve
from agentmesh.services.planner.tokens import StepTokens
from agentmesh.storage import connection_lost, fit_text, utcnow
from agentmesh.v1 import agent_pb2

__all__ = ["SubmitRequest", "TaskEngine", "TaskView"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

TaskView = TaskRow

# Agent failures worth another attempt (same idempotency key); anything else fails the step at once.
_RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"})


@dataclass(frozen=True)
class SubmitRequest:
    """A task to submit (see /work/notes/PLANNER_API.md)."""

    goal: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    playbook: str = ""
    conversation_id: str | None = None
    request_id: str = ""
    parent_task_id: str | None = None
    parent_step_id: str = ""
    submitted_by: str = ""
    on_behalf_of: str = ""
    tenant: str = ""
    scopes: tuple[str, ...] = ()
    timeout_seconds: float = 0.0


class TaskEngine:
    """Submission, the claim loop, lease renewal, sweeps and the plain-Python reads the servicer serves."""

    def __init__(
        self,
        settings: Settings,
        store: PlannerStore,
        *,
        registry: RegistryClient | None = None,
        playbooks: PlaybookLibrary | None = None,
        model_planner: ModelPlanner | None = None,
        tokens: StepTokens | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = Dispatcher(settings)
        self._canaries = Canaries(lambda: self.registry, settings.planner_discovery_cache_ttl)
        self.registry: RegistryClient | None = None
        if registry is not None:
            self.attach_registry(registry)
        self.planner = Planner(
            playbooks or PlaybookLibrary.load(settings.planner_playbooks_path), self.dispatcher, model_planner
        )
        self.tokens = tokens if tokens is not None else StepTokens(settings)
        self.identity = f"spiffe://{settings.trust_domain}/service/planner"
        self._wake = asyncio.Event()
        self._running: dict[int, tuple[Claimed, asyncio.Task[None]]] = {}
        # Agent calls in flight by step row: only these are ever cancelled (never a database transaction).
        self._calls: dict[int, asyncio.Future[agent_pb2.InvokeResponse]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._finish_listeners: list[Callable[[TaskRow], Awaitable[None]]] = []
        # Watchers of a task's events (WatchTask): woken when this replica commits a write of that task, so a
        # local change is streamed at once; other replicas' changes are seen by the watcher's own poll.
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        # When a watcher last listened here: the replica LISTENs for other replicas' commits only while it has
        # watchers (and a while after): each notice wakes the listening connection, ~0.3 ms of a step's path.
        self._watched_at = 0.0
        self._watched = asyncio.Event()
        self._outcomes: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=10_000)
        self._stopping = False
        self._starved = False  # the last claim round was cut short by the in-flight bound
        # Group commit: attempt starts, and attempt ends with their audit records, of concurrent steps share
        # one transaction each (a lone step's write starts at once; under load batches grow by themselves).
        self._starts: GroupCommit[AttemptStart, None] = GroupCommit(self._write_starts, name="planner-starts")
        self._finishes: GroupCommit[AttemptFinish, str] = GroupCommit(self._write_finishes, name="planner-finishes")

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def attach_registry(self, registry: RegistryClient) -> None:
        """Discover agents and report outcomes through ``registry`` (its channel belongs to the running loop)."""
        self.registry = registry
        self.dispatcher.registry = registry

    async def start(self) -> None:
        """Start the claim, renewal, sweep and outcome-report loops."""
        self._stopping = False
        for name, loop in (
            ("claim", self._claim_loop),
            ("renew", self._renew_loop),
            ("sweep", self._sweep_loop),
            ("outcomes", self._outcome_loop),
            ("discovery", self.dispatcher.keep_fresh),
            *((("listen", self._listen_loop),) if self.store.postgres else ()),
        ):
            self._loops.append(asyncio.create_task(loop(), name=f"planner-{name}"))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, let running steps finish within ``grace`` seconds, then abandon the rest."""
        self._stopping = True
        self._wake.set()
        running = [t for _, t in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=grace)
        for call in list(self._calls.values()):
            call.cancel()
        running = [t for _, t in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=1.0)
        for _, task in list(self._running.values()):
            task.cancel()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *(t for _, t in self._running.values()), return_exceptions=True)
        self._loops.clear()
        with contextlib.suppress(TimeoutError):  # writes already queued end (bounded: one transaction each)
            await asyncio.wait_for(asyncio.gather(self._starts.close(), self._finishes.close()), timeout=grace)
        await self.dispatcher.close()
        await self._canaries.close()
        await self.store.close()

    def add_finish_listener(self, callback: Callable[[TaskRow], Awaitable[None]]) -> None:
        """Call ``callback(task)`` when a task this process drives reaches a final state."""
        self._finish_listeners.append(callback)

    # ---- submission and reads ----------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> TaskRow:
        """Store a task with its plan and start running it; the same (submitter, request id) returns the same task."""
        if request.request_id and request.parent_task_id:
            # A sub-task's repeat is answered before the fan-out bound counts it again. Any other repeat is
            # caught by the (submitter, request id) unique key when it is stored: no read on the common path.
            existing = await _db(self.store.find_request(request.submitted_by, request.request_id))
            if existing is not None:
                return existing
        if len(request.goal) > 10_000:
            raise InvalidArgumentError("goal is longer than 10000 characters", field="goal")
        depth = 0
        if request.parent_task_id:
            parent = await _db(self.store.get_task(request.parent_task_id))
            depth = parent.depth + 1
            self._check_subtask(parent, depth)
            if await _db(self.store.count_children(parent.task_id)) >= self.settings.planner_max_subtask_fanout:
                raise ResourceExhaustedError(
                    f"task {parent.task_id} already has {self.settings.planner_max_subtask_fanout} sub-tasks "
                    "(the fan-out bound)",
                    reason="SUBTASK_FANOUT_EXCEEDED",
                )
        outcome = await self.planner.plan(request.goal, request.input, request.playbook)
        timeout = request.timeout_seconds or self.settings.planner_task_timeout
        values = {
            "task_id": f"task-{uuid.uuid4().hex}",
            "request_id": request.request_id or None,
            "goal": request.goal,
            "input": request.input,
            "playbook": outcome.plan.get("playbook", ""),
            "conversation_id": request.conversation_id or None,
            "parent_task_id": request.parent_task_id or None,
            "parent_step_id": request.parent_step_id,
            "submitted_by": request.submitted_by,
            "on_behalf_of": request.on_behalf_of,
            "tenant": request.tenant,
            "scopes": " ".join(sorted(request.scopes)),
            "trace_id": telemetry.current_trace_id(),
            "depth": depth,
            "deadline_at": utcnow() + dt.timedelta(seconds=timeout),
        }
        claim = self._claim_ahead()
        task = await _db(
            self.store.create_task(
                values, outcome.plan, reason=outcome.reason, rejections=outcome.rejections, claim=claim
            )
        )
        self._start_claimed(claim)
        if task.state in FINAL_TASK_STATES:
            await self._notify(task)
        return task

    def _check_subtask(self, parent: TaskRow, depth: int) -> None:
        if parent.state in FINAL_TASK_STATES:
            raise FailedPreconditionError(f"parent task {parent.task_id} already ended {parent.state}")
        if depth > self.settings.planner_max_subtask_depth:
            raise ResourceExhaustedError(
                f"sub-task depth {depth} is over the bound of {self.settings.planner_max_subtask_depth}",
                reason="SUBTASK_DEPTH_EXCEEDED",
            )

    async def get(self, task_id: str) -> TaskRow:
        """One task."""
        return await _db(self.store.get_task(task_id))

    def changes(self, task_id: str) -> TaskChanges:
        """This replica's commits of a task's writes, for one watcher (close it when done)."""
        return TaskChanges(self._watchers, task_id, self._watching)

    def _watching(self) -> None:
        self._watched_at = time.monotonic()
        self._watched.set()

    def _touch(self, task_ids: Iterable[str]) -> None:
        """Wake the watchers of tasks whose writes were just committed."""
        if not self._watchers:
            return
        for task_id in set(task_ids):
            for future in self._watchers.pop(task_id, []):
                if not future.done():
                    future.set_result(None)

    async def cancel(self, task_id: str, reason: str, *, by: str = "") -> TaskRow:
        """Cancel a task; calls running here stop at once, other replicas' at their next renewal."""
        task = await _db(self.store.cancel(task_id, reason, by=by))
        for row_id, (claimed, _) in list(self._running.items()):
            if claimed.task_id == task_id:
                self._abandon(row_id)
        await self._notify(task)
        return task

    # ---- the claim loop ----------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        idle = self.settings.planner_poll_interval
        while not self._stopping:
            self._wake.clear()  # before claiming: work that appears during the claim wakes the next round at once
            room = self.settings.planner_max_in_flight - len(self._running)
            self._starved = room < self.settings.planner_claim_batch
            claimed: list[Claimed] = []
            if room > 0:
                try:
                    claimed = await self.store.claim(min(room, self.settings.planner_claim_batch), self.settings.planner_lease_ttl)
                    backoff = 0.1
                except Exception as exc:  # database down: wait it out, never exit
                    logger.warning("claiming steps failed (%s); retrying in %.1fs", _brief(exc), backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
            for step in claimed:
                self._spawn(step)
            if len(claimed) >= self.settings.planner_claim_batch and room > len(claimed):
                continue  # more may be waiting
            # Idle polls (only other replicas' work and lapsed leases can appear unannounced) back off to 4x the
            # interval; local work wakes the loop at once.
            idle = self.settings.planner_poll_interval if claimed else min(idle * 2, 4 * self.settings.planner_poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=idle)

    def _spawn(self, step: Claimed, prestart: Prestart | None = None) -> None:
        """Run one claimed step as its own asyncio task (its attempt already recorded as started with ``prestart``)."""
        self._abandon(step.row_id)  # our own lease lapsed while the call ran: that call is stale
        task = asyncio.create_task(self._execute(step, prestart), name=f"step-{step.task_id}-{step.step_id}")
        self._running[step.row_id] = (step, task)
        task.add_done_callback(functools.partial(self._done, step))

    def _claim_ahead(self, freed: int = 0, batch: int = 0) -> ClaimAhead:
        """What a transition may claim for this replica at once: none while stopped, else the room left (with
        ``freed`` steps about to end), at most ``batch`` (default the claim batch)."""
        running = bool(self._loops) and not self._stopping
        room = self.settings.planner_max_in_flight - len(self._running) + freed if running else 0
        return ClaimAhead(max(0, min(room, batch or self.settings.planner_claim_batch)), self.settings.planner_lease_ttl,
                          prepare=self._prepare)

    def _prepare(self, request: StartRequest) -> Prestart | None:
        """A first attempt's start, made without waiting so the claiming transaction records it: the plan and
        task are cached here and a fresh discovery answer picks the agent. None (the attempt starts on its own,
        as any other) for anything else: a retry (it goes back to its earlier instance), an escalation, a
        template that does not resolve."""
        document = self.store.cached_plan(request.plan_id)
        task = self.store.cached_task(request.task_id)
        if document is None or task is None or request.attempt != 1:
            return None
        spec = document.steps[request.step_id]
        if spec.kind == "escalate":
            return None
        choice = self.dispatcher.peek(spec)
        if choice is None:
            return None
        try:
            step_input, substitutions = resolve(spec.input, Scope(request.task_input, dict(request.outputs), document.aliases))
        except Exception:
            return None
        claimed = Claimed(0, request.task_id, request.plan_id, request.step_id, request.attempt, 0, "", "", "")
        trace_id = task.trace_id if len(task.trace_id) == 32 else ""
        start = AttemptStart(claimed, choice.agent, step_input, trace_id, choice.record(), substitutions)
        call = _Call(choice)
        # The call's request (its signed token above all) is made while the claiming transaction is on its way to
        # the database: the loop runs this once that transaction is sent, not before the call can start.
        asyncio.get_running_loop().call_soon(self._make_call, call, spec, task, claimed, step_input)
        return Prestart(start, call)

    def _make_call(self, call: _Call, spec: StepSpec, task: TaskRow, claimed: Claimed, step_input: dict[str, Any]) -> None:
        if call.request is None:
            call.request = self._invoke_request(spec, task, claimed, step_input, call.choice, utcnow())

    def _start_claimed(self, claim: ClaimAhead) -> None:
        """Run the steps a transition claimed; wake the claim loop for runnable steps it left behind."""
        for step in claim.steps:
            self._spawn(step, claim.prestarted.get((step.plan_id, step.step_id)))
        if claim.ready_left:
            self._wake.set()

    def _abandon(self, row_id: int) -> None:
        """Stop the agent call of a step this replica no longer owns (the step task then ends unrecorded)."""
        call = self._calls.pop(row_id, None)
        if call is not None:
            call.cancel()

    def _done(self, step: Claimed, _: object = None) -> None:
        current = self._running.get(step.row_id)
        if current is not None and current[0] is step:
            del self._running[step.row_id]
        if self._starved:  # room for steps the last claim round had to leave
            self._wake.set()

    async def _renew_loop(self) -> None:
        interval = self.settings.planner_lease_ttl / 3
        while not self._stopping:
            await asyncio.sleep(interval)
            held_here = {row_id: claimed for row_id, (claimed, _) in self._running.items()}
            if not held_here:
                continue
            try:
                held = await self.store.renew(list(held_here), self.settings.planner_lease_ttl)
            except Exception as exc:
                logger.warning("renewing %d step leases failed (%s)", len(held_here), _brief(exc))
                continue  # the calls go on; if the outage outlasts the lease, the finish is refused
            for row_id in set(held_here) - held:
                entry = self._running.get(row_id)
                if entry is not None and entry[0] is held_here[row_id]:
                    logger.info("lease of step %s/%s lost or the task ended; abandoning the call",
                                entry[0].task_id, entry[0].step_id)
                    self._abandon(row_id)

    async def _listen_loop(self) -> None:
        """PostgreSQL: wake this replica's watchers at once when another replica commits events of their tasks
        (without it they learn of them at their next poll, up to a second later). Listens only while there are
        watchers here, and for ``_LISTEN_LINGER`` seconds after the last one left."""
        import psycopg

        url = self.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = 0.5
        while not self._stopping:
            await self._watched.wait()
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {TASK_EVENTS_CHANNEL}")
                    backoff = 0.5
                    while self._watchers or time.monotonic() - self._watched_at < _LISTEN_LINGER:
                        async for note in conn.notifies(timeout=1.0):
                            task_id, _, origin = note.payload.partition(" ")
                            if origin != self.store.owner:
                                self._touch((task_id,))
                        if self._watchers:
                            self._watched_at = time.monotonic()
                    self._watched.clear()  # a watcher arriving from here on sets it again
            except Exception as exc:  # database away: watchers poll meanwhile; listen again once it is back
                logger.debug("listening for task events paused (%s)", _brief(exc))
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            try:
                if await self.store.sweep():
                    self._wake.set()
            except Exception as exc:
                logger.warning("sweeping approvals and deadlines failed (%s)", _brief(exc))

    async def _outcome_loop(self) -> None:
        while True:
            batch = [await self._outcomes.get()]
            # Reports wait a moment: the step transitions that follow a reply go first, and the reports made
            # meanwhile go out together (each is its own call: ReportOutcome has no batch form).
            await asyncio.sleep(_OUTCOME_DELAY)
            while not self._outcomes.empty() and len(batch) < _OUTCOME_BATCH:
                batch.append(self._outcomes.get_nowait())
            if self.registry is not None:
                await asyncio.gather(*(self._send_outcome(self.registry, *outcome) for outcome in batch))

    async def _send_outcome(self, registry: RegistryClient, namespace: str, name: str, version: str, instance_id: str,
                            success: bool, code: str, latency: float) -> None:
        try:
            rolled_back = await registry.report_outcome(namespace, name, version, success=success,
                                                        instance_id=instance_id, error_code=code, latency=latency,
                                                        deadline=2.0)
        except Exception:  # a lost report only delays a canary rollback
            return
        if rolled_back:  # this report rolled the canary back: stop sending steps to it now, not at the cache's end
            logger.warning("%s/%s %s was rolled back by its error rate; discovery is asked again", namespace, name,
                           version)
            self.dispatcher.forget_version(namespace, name, version)

    # ---- one attempt -------------------------------------------------------------------------------------

    async def _execute(self, claimed: Claimed, prestart: Prestart | None = None) -> None:
        tracer = telemetry.get_tracer()
        parent = self._task_trace(claimed.task_id)
        with tracer.start_as_current_span(f"step {claimed.step_id}", context=parent,
                                          attributes={"task_id": claimed.task_id}):
            facts: dict[str, str] = {}
            try:
                end = await self._attempt(claimed, facts, prestart)
            except _Abandoned:
                # Lease lost or task cancelled: the step is someone else's now (or no one's); the attempt still
                # ends in the execution log and the audit trail (planner stopping: the lease lapses as in a crash).
                if not self._stopping:
                    end = AttemptEnd("FAILED", error_code="ABORTED",
                                     error_message="the call was abandoned: the step's lease was lost or the task ended")
                    with contextlib.suppress(Exception):
                        await self._finishes.submit(AttemptFinish(claimed, end, self._audit_entry(claimed, end, facts)))
                return
            except Exception as exc:  # database trouble before the call: the lease lapses and it is retried
                logger.warning("step %s/%s attempt %d could not start (%s)", claimed.task_id, claimed.step_id,
                               claimed.attempt, _brief(exc))
                return
            if end is None:
                return
            await self._record(claimed, end, self._audit_entry(claimed, end, facts))

    def _task_trace(self, task_id: str) -> otel_context.Context:
        """The trace a step's span belongs to: its task's (the submission's trace id, as stored), whichever
        transaction claimed it; a new trace when the task is not cached here. Sampled as a new trace of that
        id would be (the ratio sampler's rule), so a task's steps are all sampled or none."""
        task = self.store.cached_task(task_id)
        if task is None or len(task.trace_id) != 32:
            return otel_context.Context()
        trace_id = int(task.trace_id, 16)
        sampled = (trace_id & 0xFFFFFFFFFFFFFFFF) < round(self.settings.trace_sampling * 2**64)
        span = trace.NonRecordingSpan(trace.SpanContext(
            trace_id=trace_id, span_id=random.getrandbits(64) or 1, is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT),
        ))
        return trace.set_span_in_context(span, otel_context.Context())

    def _audit_entry(self, claimed: Claimed, end: AttemptEnd, facts: dict[str, str]) -> AuditEntry:
        """The audit record of one attempt: who ran it for whom, on which agent and models, and how it ended."""
        models = [(str(u.get("model", "")), str(u.get("version", ""))) for u in end.model_usages]
        detail: dict[str, Any] = {"attempt": claimed.attempt, "state": end.state}
        if facts.get("agent"):
            detail["agent"] = facts["agent"]
        if len(models) > 1:
            detail["models"] = [f"{name}@{version}" for name, version in models]
        return AuditEntry(
            "step.attempt",
            resource=f"tasks/{claimed.task_id}/steps/{claimed.step_id}",
            outcome="OK" if end.state == "SUCCEEDED" else (end.error_code or "UNKNOWN"),
            actor=self.identity,
            on_behalf_of=facts.get("on_behalf_of", ""),
            trace_id=facts.get("trace_id", ""),
            model_name=models[0][0] if models else "",
            model_version=models[0][1] if models else "",
            detail=detail,
        )

    async def _attempt(self, claimed: Claimed, facts: dict[str, str], prestart: Prestart | None = None) -> AttemptEnd | None:
        document = await self.store.plan(claimed.plan_id)
        spec = document.steps[claimed.step_id]
        if prestart is not None:  # recorded as started by the transaction that claimed the step
            task = self.store.cached_task(claimed.task_id) or await self.store.get_task(claimed.task_id)
        else:
            task, scope = await self.store.step_inputs(claimed, outputs=refers_to_steps(spec.input))
        trace_id = telemetry.current_trace_id()
        facts.update(on_behalf_of=task.on_behalf_of, trace_id=trace_id)
        now = utcnow()
        if task.deadline_at is not None and task.deadline_at <= now:
            return AttemptEnd("FAILED", error_code="DEADLINE_EXCEEDED", error_message="the task's deadline passed")
        if claimed.attempt > claimed.max_attempts + 2:
            return AttemptEnd("FAILED", error_code="ABORTED",
                              error_message=f"{claimed.attempt - 1} attempts were lost with their planners")
        request: agent_pb2.InvokeRequest | None = None
        if prestart is not None:
            made: _Call = prestart.call
            choice, step_input, request = made.choice, prestart.start.step_input, made.request
        else:
            step_input, substitutions = resolve(spec.input, scope)
            if spec.kind == "escalate":
                agent = {"namespace": "planner", "name": "escalate", "version": "", "endpoint": "", "instance_id": ""}
                await self._starts.submit(AttemptStart(claimed, agent, step_input, trace_id, None, substitutions))
                return AttemptEnd("SUCCEEDED", output={**step_input, "escalated": True})
            try:
                choice = await self.dispatcher.choose(spec, previous_instance_id=claimed.previous_instance_id)
            except MeshError as exc:
                # No agent to call (none discovered, registry away): recorded as an attempt without an agent.
                miss = {"query": self.dispatcher.query_of(spec), "candidates": [], "chosen": {}, "reason": exc.message}
                await self._starts.submit(AttemptStart(claimed, {}, step_input, trace_id, miss, substitutions))
                retryable = isinstance(exc, UnavailableError | FailedPreconditionError)
                return AttemptEnd("FAILED", error_code=exc.code.name, error_message=exc.message, retryable=retryable,
                                  backoff=spec.retry.backoff(claimed.attempt))
            await self._starts.submit(
                AttemptStart(claimed, choice.agent, step_input, trace_id, choice.record(), substitutions)
            )
        facts["agent"] = f"{choice.namespace}/{choice.name}@{choice.version}"
        timeout = self._step_timeout(spec, task, now)
        if request is None:
            request = self._invoke_request(spec, task, claimed, step_input, choice, now)
        request.idempotency_key = claimed.idempotency_key
        started = time.monotonic()
        call = asyncio.ensure_future(self.dispatcher.invoke(choice, request, timeout))
        self._calls[claimed.row_id] = call
        try:
            reply = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if call.cancelled() and not (current is not None and current.cancelling()):
                raise _Abandoned() from None
            raise
        except MeshError as exc:
            self._report(choice.agent, False, exc.code.name, time.monotonic() - started)
            if exc.code.name == "UNAVAILABLE":
                self.dispatcher.forget(spec)
            retryable = exc.code.name in _RETRYABLE
            return AttemptEnd("FAILED", error_code=exc.code.name, error_message=exc.message, retryable=retryable,
                              backoff=spec.retry.backoff(claimed.attempt))
        finally:
            if self._calls.get(claimed.row_id) is call:
                del self._calls[claimed.row_id]
        self._report(choice.agent, True, "", time.monotonic() - started)
        usages = _model_usages(reply)
        output = struct_to_dict(reply.output)
        try:
            check_output(output, size=reply.output.ByteSize(), max_bytes=self.settings.planner_max_output_bytes,
                         schema=spec.accept_schema, rule=spec.accept_rule)
        except OutputRejected as exc:
            return AttemptEnd("FAILED", error_code="FAILED_PRECONDITION", error_message=str(exc),
                              model_usages=usages, replayed=reply.replayed)
        return AttemptEnd("SUCCEEDED", output=output, model_usages=usages, replayed=reply.replayed)

    def _step_timeout(self, spec: StepSpec, task: TaskRow, now: dt.datetime) -> float:
        """Seconds the step's call may take: its own timeout, cut to what is left of the task's deadline."""
        timeout = spec.timeout or self.settings.planner_step_timeout
        if task.deadline_at is not None:
            timeout = min(timeout, (task.deadline_at - now).total_seconds())
        return timeout

    def _invoke_request(self, spec: StepSpec, task: TaskRow, claimed: Claimed, step_input: dict[str, Any],
                        choice: Choice, now: dt.datetime) -> agent_pb2.InvokeRequest:
        """A step's Invoke (its idempotency key set by the caller), with a step token for the chosen agent that
        carries the task's end user."""
        return agent_pb2.InvokeRequest(
            skill=spec.skill,
            input=_struct(step_input),
            task_id=claimed.task_id,
            step_id=claimed.step_id,
            conversation_id=task.conversation_id or "",
            delegation_token=self.tokens.mint(
                audience=choice.spiffe_id,
                subject=task.on_behalf_of or task.submitted_by,
                tenant=task.tenant,
                scopes=task.scopes.split(),
                task_id=claimed.task_id,
                step_id=claimed.step_id,
                actor_chain=(self.identity,),
                ttl_seconds=self._step_timeout(spec, task, now) + 30,
            ),
        )

    async def _record(self, claimed: Claimed, end: AttemptEnd, audit: AuditEntry) -> None:
        """Record the end of an attempt (group commit), retrying through a database outage while the lease could
        still hold. Returns once it is committed, so nothing depends on a result that is not."""
        backoff = 0.1
        give_up = time.monotonic() + max(30.0, 6 * self.settings.planner_lease_ttl)
        while True:
            try:
                recorded = await self._finishes.submit(AttemptFinish(claimed, end, audit))
                break
            except Exception as exc:
                if _is_data_error(exc) and end.state == "SUCCEEDED":
                    # The database refuses what the agent answered (retrying, or running the step again, would
                    # be refused the same way forever): the attempt fails with why, and the task moves on.
                    logger.warning("step %s/%s: the agent's reply cannot be stored (%s)", claimed.task_id,
                                   claimed.step_id, _brief(exc))
                    end = AttemptEnd("FAILED", error_code="FAILED_PRECONDITION", replayed=end.replayed,
                                     error_message=f"the agent's reply cannot be stored: {_brief(exc)}".replace("\x00", "\ufffd"))
                    audit = dataclasses.replace(audit, outcome="FAILED_PRECONDITION", model_name="", model_version="",
                                                detail={**audit.detail, "state": "FAILED"})
                    continue
                if time.monotonic() > give_up:
                    logger.warning("could not record step %s/%s (%s); another replica will retry it",
                                   claimed.task_id, claimed.step_id, _brief(exc))
                    return
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
        if recorded == "ended":
            with contextlib.suppress(Exception):
                task = await self.store.ended_task(claimed.task_id)
                if task.state in FINAL_TASK_STATES:
                    await self._notify(task)

    async def _write_starts(self, starts: Sequence[AttemptStart]) -> list[None]:
        await self.store.start_attempts(starts)
        self._touch(start.claimed.task_id for start in starts)
        return [None] * len(starts)

    async def _write_finishes(self, finishes: Sequence[AttemptFinish]) -> list[str]:
        """One transaction for the ends of many attempts; then run what it claimed and tell who waits."""
        claim = self._claim_ahead(freed=len(finishes), batch=self.settings.planner_max_in_flight)
        results = await self.store.finish_attempts(finishes, claim)
        self._start_claimed(claim)  # first: the next steps' calls go out before watchers read what changed
        self._touch(finish.claimed.task_id for finish in finishes)
        told: set[str] = set()  # a task that ended is announced by one of its steps only
        for index, finish in enumerate(finishes):
            if results[index] == "ended":
                if finish.claimed.task_id in told:
                    results[index] = "recorded"
                told.add(finish.claimed.task_id)
        return results

    def _report(self, agent: dict[str, str], success: bool, code: str, latency: float) -> None:
        if not self._canaries.counted(agent["namespace"], agent["name"], agent["version"]):
            return  # not a canary under a rollback rule: the registry would count nothing
        with contextlib.suppress(asyncio.QueueFull):
            self._outcomes.put_nowait(
                (agent["namespace"], agent["name"], agent["version"], agent["instance_id"], success, code, latency)
            )

    async def _notify(self, task: TaskRow) -> None:
        self._touch((task.task_id,))
        for callback in self._finish_listeners:
            try:
                await callback(task)
            except Exception:
                logger.exception("finish listener failed for task %s", task.task_id)

    # ---- approvals ---------------------------------------------------------------------------------------

    async def decide(self, task_id: str, step_id: str, *, approve: bool, by: str, comment: str) -> dict[str, Any]:
        """Approve or reject a step waiting for approval."""
        approval = await _db(self.store.decide(task_id, step_id, approve=approve, by=by, comment=comment))
        self._wake.set()
        if not approve:
            await self._notify(await self.get(task_id))
        return approval


_LISTEN_LINGER = 5.0  # seconds the replica keeps listening for other replicas' commits after its last watcher
_OUTCOME_DELAY = 0.005  # seconds a call outcome waits before it is reported to the registry
_OUTCOME_BATCH = 64  # reports sent at once at most


class TaskChanges:
    """The commits of one task's writes on this replica, as one watcher sees them. ``arm`` before each read and
    ``wait`` after it: a commit made while the read ran is not missed (it wakes the wait at once)."""

    def __init__(self, watchers: dict[str, list[asyncio.Future[None]]], task_id: str,
                 on_arm: Callable[[], None] = lambda: None) -> None:
        self._watchers, self._task_id, self._on_arm = watchers, task_id, on_arm
        self._future: asyncio.Future[None] | None = None

    def arm(self) -> None:
        """Listen for the next commit (still listening when a wait timed out)."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
            self._watchers.setdefault(self._task_id, []).append(self._future)
            self._on_arm()

    async def wait(self, within: float) -> None:
        """Return at the first commit since ``arm``, or after ``within`` seconds."""
        if self._future is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._future), timeout=within)

    def close(self) -> None:
        """Stop listening."""
        watchers = self._watchers.get(self._task_id)
        if watchers is not None and self._future is not None:
            with contextlib.suppress(ValueError):
                watchers.remove(self._future)
            if not watchers:
                del self._watchers[self._task_id]
        self._future = None


@dataclass
class _Call:
    """A prestarted attempt's call: the instance chosen, and its request once made (see ``_prepare``)."""

    choice: Choice
    request: agent_pb2.InvokeRequest | None = None


class _Abandoned(Exception):
    """The step's agent call was cancelled because this replica no longer owns the step."""


_MAX_USAGES = 64  # model usages kept per attempt (an agent's own report: bounded like any of its words)


def _model_usages(reply: agent_pb2.InvokeResponse) -> list[dict[str, Any]]:
    """The models an agent says it used, as stored: names without NUL (no PostgreSQL text holds one), at most 200
    characters each, at most ``_MAX_USAGES``."""
    return [
        {"model": fit_text(u.model_name, 200), "version": fit_text(u.model_version, 200),
         "latency": u.latency.ToNanoseconds() / 1e9}
        for u in reply.model_usages[:_MAX_USAGES]
    ]


def _is_data_error(exc: BaseException) -> bool:
    """Whether the database refused a value as such (SQLSTATE class 22), which no retry changes."""
    from psycopg import errors as pg_errors
    from sqlalchemy.exc import DataError

    return isinstance(exc, DataError | pg_errors.DataError)


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


async def _db(call: Awaitable[_T]) -> _T:
    """Run a store call; a database that cannot be reached is UNAVAILABLE to the caller (safe to retry)."""
    try:
        return await call
    except Exception as exc:
        if not (isinstance(exc, OSError) or connection_lost(exc)):
            raise
        # The driver's words name the database's host and port: for the log, not for the caller.
        logger.warning("the planner's database cannot be reached (%s)", _brief(exc))
        raise UnavailableError("the planner cannot reach its database right now; retry in a few seconds") from None
