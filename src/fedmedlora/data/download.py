"""Fetch a public corpus from its official source and verify it against pinned checksums.

The corpora, their URLs and their pins live in catalog.yaml beside this module. A download
never leaves a half-written corpus in the destination: archives stream into a hidden folder
inside DEST, are extracted and verified there, and only a corpus that matches every pin is
renamed into DEST/<name> (a rename within one file system, so it is atomic). On any failure
the hidden folder is removed and DEST is as it was.

The HTTP client is urllib from the standard library rather than httpx: it is always there (httpx
only arrives as a dependency of flwr, which could drop it), it follows the redirects figshare
uses, honours the usual HTTPS_PROXY/NO_PROXY variables, and opens file:// URLs, so a folder of
archives works as an offline mirror. Its one gap, a silently short body when the server closes
early, is covered by comparing the byte count with Content-Length ourselves.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fedmedlora.errors import ConfigError, FedMedLoRAError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # per socket operation, not per download: slow but live transfers keep going
MIRROR_ENV = "FEDMEDLORA_MIRROR"
_SHA256 = r"^[0-9a-f]{64}$"


class DownloadError(FedMedLoRAError):
    """A corpus could not be fetched, verified or put in place; the destination is unchanged."""


class UnknownDatasetError(DownloadError):
    """The name is not in the catalog."""


class TransferError(DownloadError):
    """The server or the network failed: HTTP error, refused connection, truncated body."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}")


class ChecksumError(DownloadError):
    """What was downloaded differs from what the catalog pins."""


class ArchiveError(DownloadError):
    """The archive cannot be read or lacks the members the catalog names."""


class DestinationError(DownloadError):
    """The destination cannot be written, or holds a copy that does not verify."""


# --- catalog ------------------------------------------------------------------------------


def _relative(value: str) -> str:
    """Reject paths that could escape the corpus folder (absolute, `..`, backslashes)."""
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be a relative path inside the corpus folder")
    return path.as_posix()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilePin(_Model):
    sha256: str = Field(pattern=_SHA256)
    bytes: int = Field(ge=0)


class ManifestPin(_Model):
    """One digest for thousands of files; see catalog.yaml for how it is computed."""

    root: str
    match: tuple[str, ...] = Field(min_length=1)
    files: int = Field(ge=1)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)

    @field_validator("root")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative(value)


class Pins(_Model):
    files: dict[str, FilePin] | None = None
    manifest: ManifestPin | None = None

    @field_validator("files")
    @classmethod
    def _relative_keys(cls, files: dict[str, FilePin] | None) -> dict[str, FilePin] | None:
        return None if files is None else {_relative(k): v for k, v in files.items()}

    @model_validator(mode="after")
    def _exactly_one(self) -> Pins:
        if (self.files is None) == (self.manifest is None):
            raise ValueError("pins need exactly one of `files` and `manifest`")
        return self

    @property
    def file_count(self) -> int:
        return self.manifest.files if self.manifest is not None else len(self.files or {})

    @property
    def total_bytes(self) -> int:
        if self.manifest is not None:
            return self.manifest.bytes
        return sum(pin.bytes for pin in (self.files or {}).values())


class Source(_Model):
    filename: str = Field(pattern=r"^[^/\\]+$")
    urls: tuple[str, ...] = Field(min_length=1)
    archive: Literal["zip"] = "zip"
    sha256: str | None = Field(default=None, pattern=_SHA256)
    members: tuple[str, ...] = Field(min_length=1)
    into: str = "."

    @field_validator("into")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative(value)


class DatasetSpec(_Model):
    name: str
    title: str
    description: str
    version: str
    homepage: str
    licence: str
    citation: str
    provenance: str
    sources: tuple[Source, ...] = Field(min_length=1)
    pins: Pins


def load_catalog(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """The packaged catalog, or one from `path` (used by tests and by anyone pinning a fork)."""
    if path is None:
        return dict(_packaged_catalog())
    return _parse_catalog(Path(path).read_text(encoding="utf-8"), str(path))


@lru_cache(maxsize=1)
def _packaged_catalog() -> dict[str, DatasetSpec]:
    ref = resources.files("fedmedlora.data") / "catalog.yaml"
    return _parse_catalog(ref.read_text(encoding="utf-8"), "fedmedlora/data/catalog.yaml")


def _parse_catalog(text: str, where: str) -> dict[str, DatasetSpec]:
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping of corpus name to entry")
        return {name: DatasetSpec(name=name, **entry) for name, entry in raw.items()}
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ConfigError(f"{where}: invalid dataset catalog: {exc}") from None


def get_spec(name: str, catalog: dict[str, DatasetSpec] | None = None) -> DatasetSpec:
    """Look a corpus up by name; `NCBI-disease` and `ncbi_disease` are the same name."""
    catalog = load_catalog() if catalog is None else catalog
    key = name.strip().lower().replace("-", "_")
    if key not in catalog:
        raise UnknownDatasetError(
            f"unknown corpus {name!r}; known corpora: {', '.join(sorted(catalog))}"
        )
    return catalog[key]


# --- verification -------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: PurePosixPath, patterns: tuple[str, ...]) -> bool:
    """A pattern with a "/" matches the whole path, one without only the file name."""
    full = path.as_posix()
    return any(fnmatch.fnmatchcase(full if "/" in p else path.name, p) for p in patterns)


def manifest_digest(corpus_dir: Path, pin: ManifestPin) -> tuple[int, int, str]:
    """(file count, total bytes, manifest sha256) of the files `pin` covers in `corpus_dir`."""
    base = corpus_dir / pin.root
    files = sorted(
        (p.relative_to(corpus_dir).as_posix(), p)
        for p in base.rglob("*")
        if p.is_file() and _matches(PurePosixPath(p.name), pin.match)
    )
    lines = "".join(f"{rel}\t{sha256_file(p)}\n" for rel, p in files)
    total = sum(p.stat().st_size for _, p in files)
    return len(files), total, hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _file_problems(corpus_dir: Path, files: dict[str, FilePin], names: list[str]) -> list[str]:
    problems = []
    for rel in names:
        path, pin = corpus_dir / rel, files[rel]
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (size := path.stat().st_size) != pin.bytes:
            problems.append(f"{rel}: {size:,} bytes, pinned {pin.bytes:,}")
        elif (digest := sha256_file(path)) != pin.sha256:
            problems.append(f"{rel}: sha256 {digest}, pinned {pin.sha256}")
    return problems


def check_dataset(spec: DatasetSpec, corpus_dir: Path) -> list[str]:
    """Every way `corpus_dir` differs from the pins; empty when it verifies.

    Files the pins do not cover (a README of your own, say) are ignored.
    """
    if not corpus_dir.is_dir():
        return [f"{corpus_dir}: not a folder"]
    pins = spec.pins
    if pins.files is not None:
        return _file_problems(corpus_dir, pins.files, sorted(pins.files))
    assert pins.manifest is not None
    pin = pins.manifest
    count, total, digest = manifest_digest(corpus_dir, pin)
    if (count, total, digest) == (pin.files, pin.bytes, pin.sha256):
        return []
    return [
        f"{pin.root}/: {count:,} files, {total:,} bytes, manifest sha256 {digest}; "
        f"pinned {pin.files:,} files, {pin.bytes:,} bytes, manifest sha256 {pin.sha256}"
    ]


# --- transfer -----------------------------------------------------------------------------


def mirror_url(base: str, name: str, filename: str) -> str:
    """Where a mirror serves an archive: BASE/<corpus name>/<archive file name>."""
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in {"http", "https", "file"}:
        raise DownloadError(f"mirror {base!r}: expected an http://, https:// or file:// URL")
    return f"{base.rstrip('/')}/{urllib.parse.quote(name)}/{urllib.parse.quote(filename)}"


def _user_agent() -> str:
    # Some hosts (figshare among them) turn away urllib's default agent.
    try:
        return f"fedmedlora/{metadata.version('fedmedlora')} (python-urllib)"
    except metadata.PackageNotFoundError:
        return "fedmedlora (python-urllib)"


def _open(url: str) -> http.client.HTTPResponse | urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the error page's open connection
        raise TransferError(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file:// mirror
            raise TransferError(url, "no such file on the mirror") from None
        raise TransferError(url, f"network failure: {exc.reason}") from None
    except (http.client.HTTPException, OSError) as exc:
        raise TransferError(url, f"network failure: {exc!r}") from None


def _fetch(url: str, target: Path, bar: Progress, label: str) -> str:
    """Stream `url` into `target`; return its sha256. Raise TransferError on any shortfall."""
    received = 0
    digest = hashlib.sha256()
    with _open(url) as response:
        header = response.headers.get("Content-Length", "")
        expected = int(header) if header.strip().isdigit() else None
        task = bar.add_task(label, total=expected)
        try:
            out = target.open("wb")
        except OSError as exc:
            raise DestinationError(f"cannot write {target}: {exc.strerror}") from None
        with out:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except http.client.IncompleteRead:
                    raise TransferError(
                        url,
                        f"connection closed early, after {received:,} bytes (transfer incomplete)",
                    ) from None
                except (http.client.HTTPException, OSError) as exc:
                    raise TransferError(
                        url, f"network failure after {received:,} bytes: {exc!r}"
                    ) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise DestinationError(f"cannot write {target}: {exc.strerror}") from None
                digest.update(chunk)
                received += len(chunk)
                bar.advance(task, len(chunk))
    if expected is not None and received != expected:
        # urllib's read(n) returns b"" instead of raising when the server hangs up early.
        raise TransferError(
            url,
            f"connection closed early: received {received:,} of {expected:,} bytes "
            "announced by Content-Length (transfer incomplete)",
        )
    return digest.hexdigest()


@dataclass
class _Budget:
    """Caps what extraction may write, so a hostile or broken archive cannot fill the disk."""

    left: int

    def take(self, n: int, url: str) -> None:
        self.left -= n
        if self.left < 0:
            raise ChecksumError(f"{url}: extracts to more bytes than the pinned files hold")


def _extract(archive: Path, source: Source, url: str, out_dir: Path, budget: _Budget) -> list[str]:
    """Write the members `source` keeps, flat under out_dir/<into>; return their paths."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        with archive.open("rb") as handle:
            head = handle.read(40)
        raise ArchiveError(
            f"{url}: not a zip archive ({archive.stat().st_size:,} bytes starting {head!r}); "
            "the server may have sent an error page"
        ) from None
    with zf:
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            member = PurePosixPath(info.filename)
            if info.is_dir() or "__MACOSX" in member.parts or member.name.startswith("._"):
                continue
            if not _matches(member, source.members):
                continue
            rel = (PurePosixPath(source.into) / member.name).as_posix()
            if rel in chosen:
                raise ArchiveError(
                    f"{url}: members {chosen[rel].filename!r} and {info.filename!r} "
                    f"would both become {rel}"
                )
            chosen[rel] = info
        if not chosen:
            raise ArchiveError(f"{url}: no member matches {', '.join(source.members)}")
        try:
            for rel, info in chosen.items():
                path = out_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, path.open("wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        budget.take(len(chunk), url)
                        dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ArchiveError(f"{url}: corrupt archive: {exc}") from None
    return sorted(chosen)


def _try_url(
    spec: DatasetSpec,
    source: Source,
    url: str,
    work: Path,
    bar: Progress,
    budget: _Budget,
) -> tuple[Path, list[str]]:
    """Fetch and extract one archive into a fresh folder; check what can be checked already."""
    handle, name = tempfile.mkstemp(prefix=source.filename, dir=work)
    os.close(handle)  # _fetch reopens it; mkstemp only reserves a unique name
    archive = Path(name)
    part = Path(tempfile.mkdtemp(prefix=f"{source.filename}.", dir=work))
    try:
        digest = _fetch(url, archive, bar, f"{spec.name}: {source.filename}")
        if source.sha256 is not None and digest != source.sha256:
            raise ChecksumError(f"{url}: archive sha256 {digest}, pinned {source.sha256}")
        produced = _extract(archive, source, url, part, budget)
    finally:
        archive.unlink(missing_ok=True)
    pinned = spec.pins.files
    if pinned is not None:  # per-file pins can be checked now, so a bad URL falls through
        problems = [f"{rel}: not in the pins" for rel in produced if rel not in pinned]
        problems += _file_problems(part, pinned, [rel for rel in produced if rel in pinned])
        if problems:
            raise ChecksumError(
                f"{url}: content differs from the pinned checksums:\n  " + "\n  ".join(problems)
            )
    return part, produced


def _fetch_source(
    spec: DatasetSpec,
    source: Source,
    urls: list[str],
    work: Path,
    staged: Path,
    bar: Progress,
    budget: _Budget,
) -> None:
    """Bring one archive's members into `staged`, trying each URL until one passes."""
    failures: list[DownloadError] = []
    for url in urls:
        trial = _Budget(budget.left)
        try:
            part, produced = _try_url(spec, source, url, work, bar, trial)
        except DownloadError as exc:
            failures.append(exc)
            continue
        for rel in produced:
            if (staged / rel).exists():
                raise ArchiveError(f"{url}: {rel} also comes from an earlier archive")
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(part / rel, staged / rel)
        budget.left = trial.left
        return
    if len(failures) == 1:
        raise failures[0]
    listed = "\n  ".join(str(f) for f in failures)
    raise DownloadError(f"could not fetch {source.filename} from any source:\n  {listed}")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with bar:
        yield bar


# --- placement ----------------------------------------------------------------------------


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
            budget = _Budget(spec.pins.total_bytes)
            with _progress_bar(progress) as bar:
                for source, urls in plan:
                    _fetch_source(spec, source, urls, work, staged, bar, budget)
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
