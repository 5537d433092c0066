"""``agentmesh audit list | head``: when the reader leaves, the command stops quietly (exit 141, as Unix tools
do) instead of printing "BrokenPipeError: [Errno 32] Broken pipe" (or a traceback) to the terminal."""

from __future__ import annotations

import subprocess
import sys

# A client command that prints far more than a pipe holds, run through the real entry point.
_PROGRAM = """
import sys
import agentmesh.cli._token as command
from agentmesh.cli import main

def run(args):
    for n in range(20000):
        print(f"record {n} " + "x" * 100)
    return 0

command.run = run
sys.exit(main(["token", "issue"]))
"""


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    writer = subprocess.Popen([sys.executable, "-c", _PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.readline().startswith(b"record 0 ")
    writer.stdout.close()  # like `| head -1`
    stderr = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 141
    assert stderr == ""
