"""Step input templates: ``${task.input.x}`` and ``${steps.<id>.output.y}``, resolved with a logged substitution.

Only the plan's own template strings are scanned for ``${...}``. A value taken from the task input or from
an agent's output is inserted as data and never scanned again, so an agent that answers with the text
``${task.input.secret}`` gets exactly that text passed on, not evaluated. A string that is one whole reference
takes the referenced value with its JSON type; a reference inside longer text is inserted as text. A whole
reference to something absent leaves the field out of the input (an embedded one becomes empty text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentmesh.audit import redact_json

__all__ = ["Scope", "Substitution", "refers_to_steps", "resolve"]

_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_MISSING: Any = object()


@dataclass(frozen=True)
class Substitution:
    """One resolved reference: where in the input, the template text, the (redacted) value, its source."""

    field_path: str
    template: str
    value: Any
    source: str
    source_step_id: str = ""


@dataclass
class Scope:
    """What templates may refer to: the task input and the outputs of succeeded steps (by id and alias)."""

    task_input: Mapping[str, Any]
    outputs: Mapping[str, Any] = field(default_factory=dict)
    aliases: Mapping[str, list[str]] = field(default_factory=dict)

    def step_id(self, name: str) -> str | None:
        """The step a name means: itself, or the latest round of a loop step that succeeded."""
        if name in self.outputs:
            return name
        for candidate in reversed(self.aliases.get(name, ())):
            if candidate in self.outputs:
                return candidate
        return None

    def lookup(self, path: str) -> tuple[Any, str, str]:
        """``(value, source, source_step_id)`` of a dotted path; value is _MISSING when absent."""
        parts = path.strip().split(".")
        if parts[:2] == ["task", "input"]:
            return _walk(self.task_input, parts[2:]), "task.input", ""
        if len(parts) >= 3 and parts[0] == "steps" and parts[2] == "output":
            step = self.step_id(parts[1])
            if step is None:
                return _MISSING, f"steps.{parts[1]}.output", parts[1]
            return _walk(self.outputs[step], parts[3:]), f"steps.{step}.output", step
        return _MISSING, path, ""

    def cel_activation(self, rule: str = "") -> dict[str, Any]:
        """The variables a ``when`` condition sees: ``task.input`` and ``steps.<id or alias>.output``.

        With ``rule``, only the steps it names as ``steps.<name>`` are given (each output is converted for CEL
        on every evaluation, and a plan's outputs can be large); a rule that uses ``steps`` any other way
        (``size(steps)``, ``steps["x"]``) gets them all."""
        named = _named_steps(rule) if rule else None
        steps: dict[str, Any] = {
            sid: {"output": out} for sid, out in self.outputs.items() if named is None or sid in named
        }
        for alias in self.aliases if named is None else set(self.aliases) & named:
            chosen = self.step_id(alias)
            if chosen is not None:
                steps[alias] = {"output": self.outputs[chosen]}
        return {"task": {"input": dict(self.task_input)}, "steps": steps}


_STEPS_WORD = re.compile(r"\bsteps\b(\s*\.\s*([A-Za-z_]\w*)(\s*\()?)?")


def _named_steps(rule: str) -> set[str] | None:
    """The step names a CEL rule reaches as ``steps.<name>``; None when it uses ``steps`` in any other way,
    including a macro or method on the map itself (``steps.exists(s, ...)``, ``steps.size()``)."""
    names: set[str] = set()
    for match in _STEPS_WORD.finditer(rule):
        if match.group(2) is None or match.group(3) is not None:
            return None
        names.add(match.group(2))
    return names


def _walk(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def refers_to_steps(template: Any) -> bool:
    """Whether a template refers to any step's output (else it resolves without them)."""
    if isinstance(template, dict):
        return any(refers_to_steps(v) for v in template.values())
    if isinstance(template, list):
        return any(refers_to_steps(v) for v in template)
    if not isinstance(template, str) or "${" not in template:
        return False
    return any(not match.group(1).strip().startswith("task.") for match in _REFERENCE.finditer(template))


def resolve(template: Any, scope: Scope) -> tuple[Any, list[Substitution]]:
    """The template with every reference resolved, and the log of what was substituted (PII redacted)."""
    log: list[Substitution] = []
    value = _resolve(template, scope, "", log)
    return ({} if value is _MISSING else value), log


def _resolve(template: Any, scope: Scope, path: str, log: list[Substitution]) -> Any:
    if isinstance(template, dict):
        resolved = {k: _resolve(v, scope, f"{path}.{k}" if path else k, log) for k, v in template.items()}
        return {k: v for k, v in resolved.items() if v is not _MISSING}
    if isinstance(template, list):
        items = [_resolve(v, scope, f"{path}.{i}", log) for i, v in enumerate(template)]
        return [None if v is _MISSING else v for v in items]
    if not isinstance(template, str) or "${" not in template:
        return template
    whole = _REFERENCE.fullmatch(template)
    if whole:
        value, source, step = scope.lookup(whole.group(1))
        log.append(Substitution(path, template, None if value is _MISSING else redact_json(value), source, step))
        return value

    def text(match: re.Match[str]) -> str:
        value, source, step = scope.lookup(match.group(1))
        log.append(
            Substitution(path, match.group(0), None if value is _MISSING else redact_json(value), source, step)
        )
        if value is _MISSING or value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    # re.sub inserts each replacement verbatim: a value containing "${...}" is not scanned again.
    return _REFERENCE.sub(text, template)
