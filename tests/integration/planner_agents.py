"""A small agent for the planner's tests: it counts what really ran, can be slow, and can misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from agentmesh._errors import AbortedError, FailedPreconditionError, ResourceExhaustedError, from_rpc_error
from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, SkillContext, skill


class TextIn(BaseModel):
    text: str = Field(default="", max_length=10_000)


class TextOut(BaseModel):
    text: str


class SlowIn(BaseModel):
    label: str = ""
    seconds: float = Field(default=0.0, ge=0.0, le=30.0)


class SlowOut(BaseModel):
    label: str
    instance: str


class SizeIn(BaseModel):
    size: int = Field(default=10, ge=0, le=4_000_000)


class BlobOut(BaseModel):
    blob: str


class SpawnIn(BaseModel):
    playbook: str
    count: int = Field(default=1, ge=1, le=50)


class SpawnOut(BaseModel):
    subtasks: list[str]


class AnyOut(BaseModel):
    model_config = {"extra": "allow"}


class Worker(Agent):
    """Counts completed runs per (task, step) in ``completed`` so tests can prove nothing ran twice."""

    card = AgentInfo(
        name="worker",
        namespace="testing",
        version="1.0.0",
        purpose="testing",
        description="Does small text jobs for the planner's tests.",
        owner="platform-team",
    )

    def __init__(self, settings: Settings | None = None, *, instance: str = "a") -> None:
        super().__init__(settings)
        self.instance = instance
        self.completed: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.started = asyncio.Event()

    def _count(self, ctx: SkillContext) -> None:
        self.completed[f"{ctx.task_id}/{ctx.step_id}"] += 1

    @skill(description="Shout the text back in capitals")
    async def shout(self, request: TextIn, ctx: SkillContext) -> TextOut:
        self._count(ctx)
        return TextOut(text=request.text.upper())

    @skill(description="Wait a while, then answer with the label and which instance ran")
    async def slow(self, request: SlowIn, ctx: SkillContext) -> SlowOut:
        self.started.set()
        await asyncio.sleep(request.seconds)
        self._count(ctx)  # counted once the work is done: a cancelled run did not complete
        return SlowOut(label=request.label, instance=self.instance)

    @skill(description="Answer with template-looking text")
    async def inject(self, request: TextIn, ctx: SkillContext) -> TextOut:
        self._count(ctx)
        return TextOut(text="${task.input.secret} and ${steps.first.output.text}")

    @skill(description="Answer with a blob of the asked size")
    async def blob(self, request: SizeIn, ctx: SkillContext) -> BlobOut:
        self._count(ctx)
        return BlobOut(blob="x" * request.size)

    @skill(description="Fail with ABORTED the first time per step, then shout")
    async def flaky(self, request: TextIn, ctx: SkillContext) -> TextOut:
        key = f"{ctx.task_id}/{ctx.step_id}"
        self.failures[key] += 1
        if self.failures[key] == 1:
            raise AbortedError("not yet")
        self._count(ctx)
        return TextOut(text=request.text.upper())

    @skill(description="Echo the input back as it came")
    async def echo_any(self, request: AnyOut, ctx: SkillContext) -> AnyOut:
        self._count(ctx)
        data: dict[str, Any] = request.model_dump()
        return AnyOut(**data)

    @skill(description="Start sub-tasks of the task this step belongs to, with this step's token")
    async def spawn(self, request: SpawnIn, ctx: SkillContext) -> SpawnOut:
        import grpc

        from agentmesh._channel import create_channel
        from agentmesh.v1 import task_pb2, task_pb2_grpc

        self._count(ctx)
        started = []
        async with create_channel(
            self.settings.planner_address, self.settings, kind="agent", name="testing/worker"
        ) as channel:
            stub = task_pb2_grpc.TaskServiceStub(channel)
            for i in range(request.count):
                submit = task_pb2.SubmitTaskRequest(
                    goal=f"sub-task {i} of {ctx.task_id}",
                    playbook=request.playbook,
                    parent_task_id=ctx.task_id,
                    delegation_token=ctx.delegation_token,
                    request_id=f"{ctx.task_id}/{ctx.step_id}/{i}",
                )
                try:
                    started.append((await stub.SubmitTask(submit, timeout=30)).task.task_id)
                except grpc.aio.AioRpcError as exc:
                    error = from_rpc_error(exc)
                    if isinstance(error, ResourceExhaustedError):  # a bound: no retry can help
                        raise FailedPreconditionError(f"sub-task refused: {error.message}") from None
                    raise error from None
        return SpawnOut(subtasks=started)
