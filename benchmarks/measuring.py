"""What several benchmarks share: this process's memory figures and writing the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def proc_status(field: str) -> int:
    """A VmRSS/VmHWM figure of this process, in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_result(result: dict[str, Any], out: str | Path) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
