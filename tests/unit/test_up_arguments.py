"""``agentmesh up`` refuses bad arguments before it starts anything: an unknown --ticket for --demo was found
only after the whole mesh (Triton, services, agents) had started."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.cli import main


def test_an_unknown_demo_ticket_is_refused_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentmesh.cli import _mesh

    started: list[object] = []

    async def run(self: object, **kwargs: object) -> int:  # stands in for starting the mesh
        started.append(kwargs)
        return 0

    monkeypatch.setattr(_mesh.LocalMesh, "run", run)
    monkeypatch.setenv("AGENTMESH_HOME", str(tmp_path / "mesh"))
    with pytest.raises(SystemExit) as refused:
        main(["up", "--demo", "--ticket", "nope", "--agents", "triage"])
    assert str(refused.value.code).startswith("no example ticket 'nope'; ids: ['t01-damaged-blender'")
    assert started == [] and not (tmp_path / "mesh").exists()  # no certificates, database, logs or processes
