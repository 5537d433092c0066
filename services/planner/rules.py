"""CEL conditions (``cel-python``) and output checks: acceptance rules, ``when`` and approval conditions.

A rule is compiled once per text and evaluated over JSON values: acceptance rules see ``output``; ``when``
and approval conditions see ``task`` (``task.input``) and ``steps`` (``steps.<id>.output``). A rule that
does not compile is the plan's error (INVALID_ARGUMENT when the plan is made); one that fails while
evaluating (a missing field) counts as false, with the reason kept for the explanation.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from agentmesh._errors import InvalidArgumentError
from agentmesh.storage import has_nul

__all__ = ["OutputRejected", "check_output", "compile_rule", "evaluate"]

logging.getLogger("celpy").setLevel(logging.WARNING)  # it logs every evaluation at INFO
_ENV = celpy.Environment()


class OutputRejected(Exception):
    """An agent output that the step does not accept (too large, breaks the schema or the rule)."""


@lru_cache(maxsize=1024)
def compile_rule(rule: str) -> Any:
    """The compiled CEL program of ``rule``; InvalidArgumentError when it does not compile."""
    try:
        return _ENV.program(_ENV.compile(rule))
    except CELParseError as exc:
        raise InvalidArgumentError(f"CEL rule {rule!r} does not compile: {exc}", field="plan") from None


def evaluate(rule: str, variables: dict[str, Any]) -> tuple[bool, str]:
    """``(holds, why_not)`` of a CEL rule over JSON ``variables``; an evaluation error counts as false."""
    program = compile_rule(rule)
    try:
        result = program.evaluate({name: json_to_cel(value) for name, value in variables.items()})
    except Exception as exc:  # celpy raises assorted errors for missing keys and type mismatches
        return False, f"{rule!r} could not be evaluated: {exc}"
    if isinstance(result, CELEvalError):
        return False, f"{rule!r} could not be evaluated: {result.args[0] if result.args else result}"
    if isinstance(result, celpy.celtypes.BoolType):
        return bool(result), "" if result else f"{rule!r} is false"
    return False, f"{rule!r} gave {type(result).__name__}, not a boolean"


def check_output(
    output: dict[str, Any], *, size: int, max_bytes: int, schema: dict[str, Any] | None, rule: str
) -> None:
    """Raise OutputRejected unless the output is within size, valid against the schema and satisfies the rule."""
    if size > max_bytes:
        raise OutputRejected(f"output is {size} bytes, over the {max_bytes}-byte limit")
    unstorable = _unstorable(output)
    if unstorable:
        raise OutputRejected(f"output holds {unstorable}, which cannot be stored as JSON")
    if schema:
        try:
            jsonschema.validate(output, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise OutputRejected(f"output breaks its schema at {where}: {exc.message}") from None
        except jsonschema.SchemaError as exc:
            raise OutputRejected(f"the step's output schema is invalid: {exc.message}") from None
    if rule:
        holds, why = evaluate(rule, {"output": output})
        if not holds:
            raise OutputRejected(f"acceptance rule failed: {why}")


def _unstorable(output: dict[str, Any]) -> str:
    """What in an agent's output no JSON column can hold (a NUL character, NaN or an infinity), else "".

    Such an output failed every write of its step's end on PostgreSQL, so the task never left RUNNING.
    """
    try:
        text = json.dumps(output, allow_nan=False)  # C speed; NUL comes out as \u0000
    except ValueError:
        return "a non-finite number (NaN or an infinity)"
    if "\\u0000" in text and has_nul(output):  # the text may just spell a backslash and u0000
        return "a NUL character"
    return ""


def dumps_size(value: Any) -> int:
    """Bytes of the compact JSON of a value (what an output's size is measured in)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
