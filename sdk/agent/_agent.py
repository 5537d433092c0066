"""``Agent``: the base class an agent author subclasses (a card plus ``@skill`` methods)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

from agentmesh._settings import Settings
from agentmesh.agent._info import AgentInfo
from agentmesh.agent._skill import SkillSpec, skill_spec

__all__ = ["Agent"]


class Agent:
    """Base class of every agent.

    A subclass sets ``card`` and declares skills with :func:`~agentmesh.agent.skill`::

        class Triage(Agent):
            card = AgentInfo(name="triage", namespace="support", version="1.0.0", purpose="ticket-triage")

            @skill(description="Classify a ticket's intent and priority")
            async def classify(self, ticket: TicketIn, ctx: SkillContext) -> TriageOut: ...

    Override :meth:`startup`, :meth:`shutdown` and :meth:`ready` to open clients, close them and report
    whether dependencies (Triton, a database) are reachable. Skills may run concurrently.
    """

    card: AgentInfo
    # Skills by name, collected from the class and its bases when the class is defined.
    skills: ClassVar[Mapping[str, SkillSpec]] = MappingProxyType({})
    # In-flight calls that count as full load in heartbeats (load = in_flight / max_concurrency).
    max_concurrency: ClassVar[int] = 64

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The frame defining the class: its locals let skills use models defined inside a function.
        caller = sys._getframe(1)
        localns = dict(caller.f_locals) if caller.f_code.co_name != "<module>" else None
        for member in vars(cls).values():
            spec = skill_spec(member)
            if spec is not None and spec.localns is None:
                spec.localns = localns
        found: dict[str, SkillSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr, member in vars(klass).items():
                spec = skill_spec(member)
                if spec is None:
                    found = {name: s for name, s in found.items() if s.method.__name__ != attr}  # overridden
                    continue
                if spec.name in found and found[spec.name].method.__name__ != attr:
                    raise TypeError(f"{cls.__qualname__} declares skill {spec.name!r} twice")
                found[spec.name] = spec
        cls.skills = MappingProxyType(found)
        card = vars(cls).get("card")
        if card is not None and not isinstance(card, AgentInfo):
            raise TypeError(f"{cls.__qualname__}.card must be an AgentInfo, not {type(card).__name__}")

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()

    @classmethod
    def check(cls) -> None:
        """Raise ``TypeError`` unless the class has a card and at least one well-formed skill."""
        if not isinstance(getattr(cls, "card", None), AgentInfo):
            raise TypeError(f"{cls.__qualname__} has no 'card = AgentInfo(...)'")
        if not cls.skills:
            raise TypeError(f"{cls.__qualname__} declares no @skill methods")
        for spec in cls.skills.values():
            spec.check()

    async def startup(self) -> None:
        """Called once before the agent serves (open clients, load data)."""

    async def shutdown(self) -> None:
        """Called once after the last call finished (close clients)."""

    async def ready(self) -> bool:
        """Whether the agent can serve now; False reports NOT_SERVING to health checks and the registry."""
        return True
