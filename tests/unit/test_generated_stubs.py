"""The committed stubs in sdk/v1 are exactly what `make gen` produces from protos/."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():  # protos/generate.py is a script, not a package module
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = _load_generator().generate(tmp_path)
    fresh = sorted(p.name for p in written)
    committed = sorted(p.name for p in (ROOT / "sdk" / "v1").iterdir() if p.is_file())
    assert committed == fresh, "sdk/v1 has extra or missing files: run `make gen`"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, ROOT / "sdk" / "v1", fresh, shallow=False)
    assert not mismatch and not errors, f"stale generated stubs {mismatch or errors}: run `make gen`"


def test_every_module_ships_type_stubs() -> None:
    modules = sorted((ROOT / "sdk" / "v1").glob("*_pb2*.py"))
    assert modules
    for module in modules:
        assert module.with_suffix(".pyi").exists(), f"{module.name} has no .pyi"
