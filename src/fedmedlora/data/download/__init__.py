"""Fetch a public corpus from its official source and verify it against pinned checksums.

The corpora, their URLs and their pins live in catalog.yaml (`catalog.py`); archives are
streamed by `fetching.py` and unpacked by `unpacking.py`; this module puts a verified corpus
in place. A download never leaves a half-written corpus in the destination: archives stream
into a hidden folder inside DEST, are extracted and verified there, and only a corpus that
matches every pin is renamed into DEST/<name> (a rename within one file system, so it is
atomic). On any failure the hidden folder is removed and DEST is as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedmedlora.data.download.catalog import (
    DatasetSpec,
    FilePin,
    ManifestPin,
    Pins,
    Source,
    check_dataset,
    get_spec,
    load_catalog,
    manifest_digest,
    sha256_file,
)
from fedmedlora.data.download.errors import (
    ArchiveError,
    ChecksumError,
    DestinationError,
    DownloadError,
    TransferError,
    UnknownDatasetError,
)
from fedmedlora.data.download.fetching import MIRROR_ENV, fetch_source, mirror_url, progress_bar
from fedmedlora.data.download.unpacking import Budget


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    status: Literal["downloaded", "present"]
    files: int


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p that reports what it created, so a failed download can take it back."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create {path}: {exc.strerror}") from None
    return missing  # deepest first


def _put_in_place(staged: Path, target: Path, work: Path) -> None:
    """Rename the verified corpus into place; an older copy is set aside until that succeeds."""
    try:
        if target.exists():
            previous = work / "previous"
            os.replace(target, previous)
            try:
                os.replace(staged, target)
            except OSError:
                os.replace(previous, target)
                raise
        else:
            os.replace(staged, target)
    except OSError as exc:
        raise DestinationError(f"cannot move the verified corpus to {target}: {exc}") from None


def download_dataset(
    name: str,
    dest: str | Path,
    *,
    force: bool = False,
    mirror: str | None = None,
    progress: bool = True,
    catalog: dict[str, DatasetSpec] | None = None,
) -> DownloadResult:
    """Fetch corpus `name` into DEST/<name>, verified against the catalog's pins.

    A copy already in DEST/<name> that verifies is kept and nothing is fetched, unless
    `force`; one that does not verify is only replaced with `force`. `mirror` replaces every
    official URL with MIRROR/<name>/<archive file name>.
    """
    spec = get_spec(name, catalog)
    plan = [
        (source, [mirror_url(mirror, spec.name, source.filename)] if mirror else list(source.urls))
        for source in spec.sources
    ]
    dest = Path(dest).expanduser()
    target = dest / spec.name
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise DestinationError(f"{target} exists and is not a folder; move it away first")
        problems = check_dataset(spec, target)
        if not problems and not force:
            return DownloadResult(spec.name, target, "present", spec.pins.file_count)
        if problems and not force:
            shown = "\n  ".join(problems[:5])
            raise DestinationError(
                f"{target} exists but does not match the pinned checksums:\n  {shown}\n"
                "Pass --force (force=True) to replace it with a fresh download."
            )
    created = _make_dirs(dest)
    ok = False
    try:
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", suffix=".partial", dir=dest))
        except OSError as exc:
            raise DestinationError(f"cannot write to {dest}: {exc.strerror}") from None
        try:
            staged = work / spec.name
            staged.mkdir()
            budget = Budget(spec.pins.total_bytes)
            with progress_bar(progress) as bar:
                for source, urls in plan:
                    fetch_source(spec, source, urls, work, staged, bar, budget)
            problems = check_dataset(spec, staged)
            if problems:
                origin = mirror or ", ".join(u for s in spec.sources for u in s.urls)
                raise ChecksumError(
                    f"{spec.name} from {origin}: the downloaded files do not match the pinned "
                    "checksums:\n  " + "\n  ".join(problems)
                )
            _put_in_place(staged, target, work)
            ok = True
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not ok:
            for folder in created:  # deepest first; leaves any folder something else filled
                try:
                    folder.rmdir()
                except OSError:
                    break
    return DownloadResult(spec.name, target, "downloaded", spec.pins.file_count)


__all__ = [
    "MIRROR_ENV",
    "ArchiveError",
    "ChecksumError",
    "DatasetSpec",
    "DestinationError",
    "DownloadError",
    "DownloadResult",
    "FilePin",
    "ManifestPin",
    "Pins",
    "Source",
    "TransferError",
    "UnknownDatasetError",
    "check_dataset",
    "download_dataset",
    "get_spec",
    "load_catalog",
    "manifest_digest",
    "mirror_url",
    "sha256_file",
]
