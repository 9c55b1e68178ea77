"""User-facing errors: every one names where the problem is and why, never a bare traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class FedMedLoRAError(Exception):
    """Base for errors caused by user input (files, configs, options), shown without traceback."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file; `line` is 1-based, 0 when it concerns the whole file."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.reason}"
            if self.line
            else f"{self.path}: {self.reason}"
        )


class AnnotationError(FedMedLoRAError):
    """Annotation input that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in annotation input:\n{shown}{more}")

    @classmethod
    def single(cls, path: str | Path, line: int, reason: str) -> AnnotationError:
        return cls([Problem(str(path), line, reason)])


class ConfigError(FedMedLoRAError):
    """A run configuration that cannot be used."""


class ConfigProblems(ConfigError):
    """Every problem found in a configuration at once, one `file:line: reason` line each."""

    def __init__(self, problems: list[Problem], header: str):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(str(problems[0]))
        else:
            shown = "\n".join(f"  {p}" for p in problems)
            super().__init__(f"{header}, {len(problems)} problems:\n{shown}")


def user_reason(error: dict) -> str:
    """A pydantic error as a user reads it: the offending key, what was wrong, the value."""
    if error["type"] == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] not in ("missing", "value_error") and not isinstance(value, dict | list):
        shown = repr(value)
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return msg
