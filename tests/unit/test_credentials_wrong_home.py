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


def test_a_token_signed_by_a_new_dev_key_says_where_its_jwks_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentmesh.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTMESH_HOME", raising=False)
    assert main(["token", "issue"]) == 0
    first = capsys.readouterr()
    assert first.out.count(".") == 2 and first.out.endswith("\n")  # only the JWT on stdout, for $(...)
    assert first.err == (
        f"agentmesh token: made a new dev signing key; its JWKS is {tmp_path}/.agentmesh/dev-jwks/jwks.json. A gateway "
        "accepts these tokens only if it uses that JWKS: run this where `agentmesh up` runs, or set AGENTMESH_HOME "
        "to the mesh's home\n"
    )
    assert main(["token", "issue"]) == 0
    assert capsys.readouterr().err == ""  # the key exists now: nothing to say
