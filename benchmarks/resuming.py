"""What the benchmarks' --resume shares: the arguments as results.json keeps them, and
the check that a stopped run used the same ones (mixing two budgets in one table would
mislead)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def saved_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as a benchmark's results.json keeps them (paths as text): what
    --resume compares and what a later script rebuilds a run from."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def check_same_arguments(
    args: dict[str, Any], saved: dict[str, Any], where: str, ignore: Iterable[str] = ("resume",)
) -> None:
    """Refuse (naming the arguments that differ) unless `saved` ran as `args` does, apart
    from `ignore`: the arguments that only pick which runs to do."""
    skip = set(ignore)
    mine = {k: v for k, v in args.items() if k not in skip}
    theirs = {k: v for k, v in saved.items() if k not in skip}
    if mine != theirs:
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise SystemExit(f"--resume: {where} was run with other arguments: {changed}")
