"""The shape every subcommand module has."""

from __future__ import annotations

import argparse
from typing import Protocol


class Command(Protocol):
    """A subcommand module: ``configure`` adds its arguments, ``run`` does the work and returns an exit code."""

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...
