"""The package version and the newest released contract image move together."""

from __future__ import annotations

import tomllib
from pathlib import Path

import agentmesh

ROOT = Path(__file__).resolve().parents[2]


def test_package_version_matches_the_newest_released_contract() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    releases = sorted(
        (p.stem for p in (ROOT / "protos" / "releases").glob("v*.binpb")),
        key=lambda v: tuple(int(x) for x in v[1:].split(".")),
    )
    assert releases, "no released contract image under protos/releases/"
    assert project["version"] == agentmesh.__version__ == releases[-1][1:]
