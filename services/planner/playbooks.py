"""Playbooks: declarative YAML plan templates, validated against ``playbook.schema.json``, turned into plans.

A playbook lists steps like a plan does, plus ``defaults`` merged into every step and ``loop`` blocks that
repeat a few steps until a CEL condition holds (e.g. draft → review until the review passes), with an
``on_exhausted`` step after the last round. Loops are unrolled when the plan is made, so the stored plan
stays an immutable DAG: round ``r`` of step ``draft`` is step ``draft_r``, runs only when round ``r-1`` did
not satisfy the condition, and ``${steps.draft...}`` outside the loop means the latest round that ran.
Inside a loop, ``${previous.<step>...}`` is the round before's output (absent in the first round).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import yaml

from agentmesh._errors import InvalidArgumentError, NotFoundError

__all__ = ["Playbook", "PlaybookLibrary", "playbook_schema"]

_REFERENCE = re.compile(r"\$\{(steps|previous)\.([a-z][a-z0-9_]*)")


@cache
def playbook_schema() -> dict[str, Any]:
    """The published JSON Schema of playbooks (``services/planner/data/playbook.schema.json``)."""
    text = resources.files("agentmesh.services.planner.data").joinpath("playbook.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


@cache
def _validator() -> jsonschema.protocols.Validator:
    from referencing import Registry, Resource

    from agentmesh.services.planner.plans import plan_schema

    # playbook.schema.json refers to plan.schema.json by its $id.
    registry: Registry[Any] = Registry().with_resource(plan_schema()["$id"], Resource.from_contents(plan_schema()))
    return jsonschema.Draft202012Validator(playbook_schema(), registry=registry)


@dataclass(frozen=True)
class Playbook:
    """One validated playbook."""

    name: str
    description: str
    match: tuple[str, ...]
    source: dict[str, Any]
    _rendered: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the validated plan, once

    @classmethod
    def from_yaml(cls, text: str) -> Playbook:
        """Parse and validate a playbook; InvalidArgumentError names what is wrong."""
        try:
            source = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgumentError(f"playbook is not YAML: {exc}", field="playbook") from None
        try:
            _validator().validate(source)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise InvalidArgumentError(f"playbook is not valid at '{where}': {exc.message}", field="playbook") from None
        playbook = cls(
            name=source["name"],
            description=source.get("description", ""),
            match=tuple(word.lower() for word in source.get("match", ())),
            source=source,
        )
        playbook.render("")  # a playbook that cannot make a valid plan is refused when loaded, not when used
        return playbook

    def score(self, text: str) -> int:
        """How many of the playbook's match words occur in ``text`` (goal and input)."""
        lowered = text.lower()
        return sum(1 for word in self.match if word in lowered)

    def render(self, goal: str) -> dict[str, Any]:
        """The plan document this playbook makes (loops unrolled, defaults merged). Built and validated once
        per playbook (the goal, a plain string, is the only per-task part): a copy of it per task."""
        if not self._rendered:
            self._rendered.update(self._render())
        doc = copy.deepcopy(self._rendered)
        doc["goal"] = goal
        return doc

    def _render(self) -> dict[str, Any]:
        from agentmesh.services.planner.plans import validate_plan

        defaults = self.source.get("defaults", {})
        steps: list[dict[str, Any]] = []
        aliases: dict[str, list[str]] = {}
        loop_steps: set[str] = set()
        for entry in self.source["steps"]:
            if "loop" in entry:
                loop = entry["loop"]
                loop_steps.update(s["id"] for s in loop["steps"])
                steps.extend(_unroll(loop, defaults, aliases))
            else:
                bad = [d for d in entry.get("depends_on", ()) if d in loop_steps]
                if bad:
                    raise InvalidArgumentError(
                        f"playbook {self.name!r}: step {entry['id']!r} may not depend on loop steps {bad}",
                        field="playbook",
                    )
                steps.append(_with_defaults(entry, defaults))
        doc: dict[str, Any] = {"strategy": "PLAYBOOK", "playbook": self.name, "goal": "", "steps": steps}
        if aliases:
            doc["aliases"] = aliases
        if "output" in self.source:
            doc["output"] = copy.deepcopy(self.source["output"])
        validate_plan(doc)
        return doc


def _with_defaults(step: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(step)
    if merged.get("kind", "agent") == "agent":
        merged["agent"] = {**defaults.get("agent", {}), **merged.get("agent", {})}
        for key in ("timeout", "retry"):
            if key in defaults and key not in merged:
                merged[key] = copy.deepcopy(defaults[key])
        for alternative in merged.get("alternatives", ()):
            if "agent" in alternative:  # an alternative's agent stays inside the playbook's defaults (e.g. its namespace)
                alternative["agent"] = {**defaults.get("agent", {}), **alternative["agent"]}
    return merged


def _unroll(loop: dict[str, Any], defaults: dict[str, Any], aliases: dict[str, list[str]]) -> list[dict[str, Any]]:
    names = [s["id"] for s in loop["steps"]]
    rounds = int(loop["max_rounds"])
    until = loop["until"]
    unrolled: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        for step in loop["steps"]:
            copy_ = _with_defaults(step, defaults)
            copy_["id"] = f"{step['id']}_{r}"
            copy_["input"] = _rename(copy_.get("input", {}), names, r)
            for alternative in copy_.get("alternatives", ()):
                if "input" in alternative:
                    alternative["input"] = _rename(alternative["input"], names, r)
            depends = [f"{d}_{r}" if d in names else d for d in step.get("depends_on", ())]
            conditions = [_rename(step["when"], names, r)] if step.get("when") else []
            if r > 1:
                if not any(d in names for d in step.get("depends_on", ())):
                    depends += [f"{n}_{r - 1}" for n in names]
                conditions.insert(0, f"!({_rename(until, names, r - 1)})")
            copy_["depends_on"] = list(dict.fromkeys(depends))
            if conditions:
                copy_["when"] = " && ".join(f"({c})" for c in conditions)
            copy_.setdefault("description", step.get("description", ""))
            unrolled.append(copy_)
            aliases.setdefault(step["id"], []).append(copy_["id"])
    if "on_exhausted" in loop:
        last = _with_defaults(loop["on_exhausted"], defaults)
        last["input"] = _rename(last.get("input", {}), names, rounds)
        last["depends_on"] = [f"{n}_{rounds}" for n in names]
        last["when"] = f"!({_rename(until, names, rounds)})"
        unrolled.append(last)
    return unrolled


def _rename(value: Any, names: Iterable[str], r: int) -> Any:
    """Point ``steps.<loop step>`` at round ``r`` and ``previous.<loop step>`` at round ``r - 1``."""
    names = set(names)
    if isinstance(value, dict):
        renamed = {k: _rename(v, names, r) for k, v in value.items()}
        # First round: a value that is only a reference to the previous round is left out.
        return {k: v for k, v in renamed.items() if v is not _ABSENT}
    if isinstance(value, list):
        return [_rename(v, names, r) for v in value]
    if not isinstance(value, str):
        return value
    if r == 1 and re.fullmatch(r"\$\{previous\.[^}]*\}", value):
        return _ABSENT

    def replace(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        if name not in names:
            return match.group(0)
        return f"${{steps.{name}_{r if scope == 'steps' else r - 1}"

    # CEL conditions name steps without ${...}: steps.review.output.passed
    text = _REFERENCE.sub(replace, value)
    return re.sub(
        r"(?<![\w.{])(steps|previous)\.([a-z][a-z0-9_]*)",
        lambda m: (
            f"steps.{m.group(2)}_{r if m.group(1) == 'steps' else r - 1}" if m.group(2) in names else m.group(0)
        ),
        text,
    )


_ABSENT: Any = object()


class PlaybookLibrary:
    """Playbooks by name: the shipped ones plus any added at run time."""

    def __init__(self, playbooks: Iterable[Playbook] = ()) -> None:
        self._by_name = {p.name: p for p in playbooks}

    @classmethod
    def shipped(cls) -> PlaybookLibrary:
        """The playbooks packaged in ``agentmesh.services.planner.data``."""
        folder = resources.files("agentmesh.services.planner.data")
        found = [Playbook.from_yaml(f.read_text()) for f in folder.iterdir() if f.name.endswith((".yaml", ".yml"))]
        return cls(found)

    @classmethod
    def load(cls, folder: str = "") -> PlaybookLibrary:
        """The shipped playbooks plus every ``*.yaml`` in ``folder`` (which win on a name clash)."""
        library = cls.shipped()
        if folder:
            from pathlib import Path

            for path in sorted(Path(folder).glob("*.y*ml")):
                library.add(Playbook.from_yaml(path.read_text()))
        return library

    def add(self, playbook: Playbook) -> None:
        """Add (or replace) a playbook."""
        self._by_name[playbook.name] = playbook

    def names(self) -> list[str]:
        """Names of every playbook, sorted."""
        return sorted(self._by_name)

    def get(self, name: str) -> Playbook:
        """The playbook called ``name``; NotFoundError lists the known ones."""
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFoundError(f"no playbook {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def match(self, goal: str, task_input: dict[str, Any]) -> Playbook | None:
        """The playbook whose match words best fit the goal and input, if any matches at all."""
        text = f"{goal} {json.dumps(task_input, default=str)}"
        scored = sorted(((p.score(text), p.name) for p in self._by_name.values()), reverse=True)
        if scored and scored[0][0] > 0:
            return self._by_name[scored[0][1]]
        return None
