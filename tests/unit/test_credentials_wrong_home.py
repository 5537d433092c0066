"""A client command run outside the mesh's home (AGENTMESH_HOME defaults to ./.agentmesh) says so, with the
absolute path, instead of only telling the operator to issue a certificate (which, run there, would start a
second CA beside the mesh's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh._errors import FailedPreconditionError
from agentmesh._settings import Settings
from agentmesh.security import channel_credentials


def test_no_mesh_home_at_all_points_at_the_home_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FailedPreconditionError) as refused:
        channel_credentials(Settings(home=Path(".agentmesh")), "client", "ops")
    home = tmp_path / ".agentmesh"
    assert refused.value.message == (
        f"no client-ops.pem for client/ops at {home}/certs/client-ops.pem; there is no mesh home at {home} "
        "(AGENTMESH_HOME, ./.agentmesh by default): run where `agentmesh up` runs or set AGENTMESH_HOME, "
        "or `agentmesh certs issue --kind client --name ops`"
    )
