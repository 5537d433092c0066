"""`agentmesh --help` and every subcommand's --help explain themselves, without starting anything."""

from __future__ import annotations

import pytest

from agentmesh.cli import _COMMANDS, main


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text) in _COMMANDS.items():
        assert name in out and help_text[:30] in out


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"agentmesh {command}" in out
    assert "options:" in out and len(out.split()) > 25, f"`agentmesh {command} --help` explains too little"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_help_imports_no_heavy_library() -> None:
    """`agentmesh --help` stays instant: gRPC, SQLAlchemy and Triton load only when a command runs."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from agentmesh.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('grpc', 'sqlalchemy', 'tritonclient', 'numpy') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="
