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


# The sites of clinical_ie.py: name -> (paths under the data directory, format, mapping).
REAL_SITES = {
    "maccrobat": (["maccrobat/MACCROBAT2020"], "brat", "maccrobat"),
    "chia": (["chia/chia_without_scope"], "brat", "chia"),
    "bc5cdr": (
        ["bc5cdr/CDR_TrainingSet.PubTator.txt", "bc5cdr/CDR_DevelopmentSet.PubTator.txt"],
        "pubtator",
        "bc5cdr",
    ),
}


def real_site_sources(data: str | Path, **options: Any) -> list[Any]:
    """The real public corpora as three sites (split 80/20 by the run seed), read from
    `data` (../shared/data; never copied into the repository); `options` are further
    SiteSource fields (test_windows, window_chars, max_train_docs...)."""
    from fedmedlora.data.settings import SiteSource

    return [
        SiteSource(
            name=name,
            train=[str(Path(data) / p) for p in paths],
            format=fmt,
            mapping=mapping,
            **options,
        )
        for name, (paths, fmt, mapping) in REAL_SITES.items()
    ]
