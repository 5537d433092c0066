"""A small agent for the SDK's tests: it counts its runs, can be held mid-call, and can misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic import BaseModel, Field

from agentmesh._settings import Settings
from agentmesh.agent import Agent, AgentInfo, ModelUsage, SkillContext, skill


class Customer(BaseModel):
    email: str = Field(min_length=3)


class EchoIn(BaseModel):
    text: str = Field(min_length=1, max_length=200)
    times: int = Field(default=1, ge=1, le=5)
    customer: Customer | None = None


class EchoOut(BaseModel):
    text: str
    caller: str = ""
    task_id: str = ""


class HoldIn(BaseModel):
    label: str


class HoldOut(BaseModel):
    label: str
    steps: int


class EchoAgent(Agent):
    """Echoes text; every run is counted in ``runs`` so tests can see what really executed."""

    card = AgentInfo(
        name="echo",
        namespace="testing",
        version="1.2.0",
        purpose="echo",
        description="Repeats what it is told; used to test the Agent SDK.",
        policies=("pii:none",),
        labels={"team": "platform"},
        owner="platform-team",
    )

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.runs: Counter[str] = Counter()
        self.entered = asyncio.Event()  # set when `hold` starts
        self.release = asyncio.Event()  # `hold` finishes once this is set
        self.cancelled = asyncio.Event()  # set when a `hold` run was cancelled (its caller went away)
        self.stopped = False

    @skill(tags=("text",))
    async def echo(self, request: EchoIn, ctx: SkillContext) -> EchoOut:
        """Repeat the text ``times`` times.

        This second paragraph is not part of the description.
        """
        self.runs["echo"] += 1
        await asyncio.sleep(0.02)  # long enough for a concurrent duplicate to arrive while this runs
        ctx.record_model_usage(ModelUsage(model_name="echo-model", model_version="3", latency=0.25))
        return EchoOut(text=" ".join([request.text] * request.times), caller=ctx.caller, task_id=ctx.task_id)

    @skill(description="Report progress, then wait until the test releases the call")
    async def hold(self, request: HoldIn, ctx: SkillContext) -> HoldOut:
        self.runs["hold"] += 1
        await ctx.progress("started", 0.1, label=request.label)
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await ctx.progress("released", 0.9)
        return HoldOut(label=request.label, steps=2)

    @skill(description="Return an output that breaks its own schema")
    async def broken(self, request: EchoIn) -> EchoOut:
        self.runs["broken"] += 1
        return EchoOut.model_construct(text=12345)  # skips validation, as a buggy skill might

    async def shutdown(self) -> None:
        self.stopped = True
