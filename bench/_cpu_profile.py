"""Run ``python -m MODULE ARGS`` under cProfile timed by CPU time, not wall time.

    python bench/_cpu_profile.py OUT.prof -m agentmesh.cli planner --port 1234

With the default (wall) clock an asyncio process's idle waits in the selector are charged to whatever coroutine
was suspended, which hides where its CPU goes; ``time.process_time`` counts only the work.
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: _cpu_profile.py OUT.prof -m MODULE [ARGS...]")
    sys.argv = [module, *rest]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
