"""What the benchmarks' --resume shares: a stopped run's results are kept only if it ran
with the same arguments (mixing two budgets in one table would mislead)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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
