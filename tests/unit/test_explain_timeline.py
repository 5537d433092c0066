"""``agentmesh explain`` timeline: on an 80-column terminal every step's name, state and bar is drawn in full."""

from __future__ import annotations

import datetime as dt

from rich.console import Console

from agentmesh.cli._explain import _timeline
from agentmesh.v1 import task_pb2

# The demo ticket's attempts: (step, agent, start ms, took ms).
_SUPPORT = [
    ("triage", "triage", 0, 452),
    ("sentiment", "sentiment", 512, 247),
    ("kb_search", "kb-search", 512, 247),
    ("crm", "crm", 512, 147),
    ("responder_1", "responder", 776, 479),
    ("quality_check_1", "quality-check", 1272, 288),
]


def _explanation() -> task_pb2.TaskExplanation:
    zero = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    explanation = task_pb2.TaskExplanation()
    for step, agent, began, took in _SUPPORT:
        attempt = explanation.attempts.add(step_id=step, attempt=1, state=task_pb2.STEP_STATE_SUCCEEDED)
        attempt.agent.name = agent
        attempt.start_time.FromDatetime(zero + dt.timedelta(milliseconds=began))
        attempt.end_time.FromDatetime(zero + dt.timedelta(milliseconds=began + took))
    return explanation


def test_every_row_of_the_timeline_fits_an_80_column_terminal() -> None:
    console = Console(width=80, record=True, color_system=None)
    _timeline(console, _explanation())
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in "\n".join(lines)  # nothing cut short
    for step, agent, _, _ in _SUPPORT:
        row = next(line for line in lines if line.lstrip().startswith(f"{step}#1"))
        assert agent in row and "SUCCEEDED" in row and "█" in row
    bars = {step: next(line for line in lines if line.lstrip().startswith(f"{step}#1")).split("SUCCEEDED")[1]
            for step, *_ in _SUPPORT}
    # Bars start where the attempts start: the last step's bar starts right of the first step's.
    assert bars["quality_check_1"].index("█") > bars["triage"].index("█")


def test_a_narrow_terminal_still_gets_a_bar_per_attempt() -> None:
    console = Console(width=40, record=True, color_system=None)
    _timeline(console, _explanation())
    assert console.export_text().count("█") >= len(_SUPPORT)
