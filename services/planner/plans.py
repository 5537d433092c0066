"""Plan documents: an immutable DAG of steps as JSON, its content hash, and its validation.

A plan document is what the ``plans.plan`` column stores and what every strategy (playbook, model-made,
capability matching) produces::

    {"strategy": "PLAYBOOK", "playbook": "support", "goal": "...",
     "steps": [{"id": "triage", "skill": "classify_ticket", "agent": {...discovery query...},
                "input": {...template...}, "depends_on": [], "when": "", "accept": {"rule": "", "schema": {}},
                "timeout": 30.0, "retry": {...}, "approval": null, "kind": "agent", "description": "",
                "alternatives": [{"agent": {...}, "skill": "...", ...}]}],
     "aliases": {"responder": ["responder_1", "responder_2"]},
     "output": {...template...}}

Steps are in topological order. The JSON Schema of the document is published as ``plan.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from agentmesh._errors import InvalidArgumentError

__all__ = [
    "PlanDocument",
    "RetrySpec",
    "StepSpec",
    "content_hash",
    "plan_schema",
    "validate_plan",
]

STEP_KINDS = ("agent", "escalate")


@dataclass(frozen=True)
class RetrySpec:
    """How a failed attempt is retried."""

    max_attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt`` (from 1)."""
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, attempt - 1)))


@dataclass(frozen=True)
class StepSpec:
    """One step of a plan, read from its document."""

    step_id: str
    skill: str
    kind: str = "agent"
    description: str = ""
    agent: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    when: str = ""
    accept_rule: str = ""
    accept_schema: dict[str, Any] | None = None
    timeout: float = 0.0
    retry: RetrySpec = RetrySpec()
    approval: dict[str, Any] | None = None
    alternatives: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> StepSpec:
        """The step described by one entry of a plan document's ``steps``."""
        accept = doc.get("accept") or {}
        retry = doc.get("retry") or {}
        return cls(
            step_id=doc["id"],
            skill=doc.get("skill", ""),
            kind=doc.get("kind", "agent"),
            description=doc.get("description", ""),
            agent=dict(doc.get("agent") or {}),
            input=dict(doc.get("input") or {}),
            depends_on=tuple(doc.get("depends_on") or ()),
            when=doc.get("when", ""),
            accept_rule=accept.get("rule", ""),
            accept_schema=accept.get("schema") or None,
            timeout=float(doc.get("timeout") or 0.0),
            retry=RetrySpec(**retry) if retry else RetrySpec(),
            approval=doc.get("approval") or None,
            alternatives=tuple(doc.get("alternatives") or ()),
        )


@dataclass(frozen=True)
class PlanDocument:
    """A parsed plan document (the JSON stays the source of truth; this is a read view)."""

    doc: dict[str, Any]
    steps: dict[str, StepSpec]

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> PlanDocument:
        """Parse (and validate) a plan document."""
        validate_plan(doc)
        return cls.trusted(doc)

    @classmethod
    def trusted(cls, doc: dict[str, Any]) -> PlanDocument:
        """Parse a plan document validated already: one the planner made (every strategy validates what it
        returns) or read back from the database (validated before it was stored). Validation costs ~0.1 ms
        per step, paid once per playbook, not once per task."""
        return cls(doc=doc, steps={s["id"]: StepSpec.from_doc(s) for s in doc["steps"]})

    @property
    def aliases(self) -> dict[str, list[str]]:
        """Loop step names and the unrolled step ids that carry them, oldest round first."""
        return dict(self.doc.get("aliases") or {})

    def dependents(self, step_id: str) -> list[str]:
        """Steps that depend directly on ``step_id``."""
        return [s.step_id for s in self.steps.values() if step_id in s.depends_on]


@cache
def plan_schema() -> dict[str, Any]:
    """The published JSON Schema of plan documents (``services/planner/data/plan.schema.json``)."""
    text = resources.files("agentmesh.services.planner.data").joinpath("plan.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def _plan_validator() -> Any:
    """The plan schema's validator, its schema checked once (``jsonschema.validate`` checks it on every call)."""
    schema = plan_schema()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


def validate_plan(doc: Any) -> None:
    """Raise InvalidArgumentError unless ``doc`` is a well-formed DAG plan document."""
    error = jsonschema.exceptions.best_match(_plan_validator().iter_errors(doc))  # the error validate() raises
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise InvalidArgumentError(f"plan is not valid at '{where}': {error.message}", field="plan") from None
    seen: set[str] = set()
    for step in doc["steps"]:
        if step["id"] in seen:
            raise InvalidArgumentError(f"plan step {step['id']!r} appears twice", field="plan.steps")
        missing = [d for d in step.get("depends_on", []) if d not in seen]
        if missing:
            # Steps are listed in topological order, so a dependency must come earlier: no cycles possible.
            raise InvalidArgumentError(
                f"plan step {step['id']!r} depends on {missing}, which are not earlier steps", field="plan.steps"
            )
        if step.get("kind", "agent") == "agent" and not step.get("skill"):
            raise InvalidArgumentError(f"plan step {step['id']!r} names no skill", field="plan.steps")
        seen.add(step["id"])


def content_hash(doc: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a plan document (sorted keys, no spaces)."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
