"""The corpora: their URLs and pins (catalog.yaml beside this package), and checking
a folder against those pins."""

from __future__ import annotations

import fnmatch
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmedlora.data.download.errors import UnknownDatasetError
from fedmedlora.errors import ConfigError

CHUNK_BYTES = 1 << 20
_SHA256 = r"^[0-9a-f]{64}$"


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def matches(path: PurePosixPath, patterns: tuple[str, ...]) -> bool:
    """A pattern with a "/" matches the whole path, one without only the file name."""
    full = path.as_posix()
    return any(fnmatch.fnmatchcase(full if "/" in p else path.name, p) for p in patterns)


def manifest_digest(corpus_dir: Path, pin: ManifestPin) -> tuple[int, int, str]:
    """(file count, total bytes, manifest sha256) of the files `pin` covers in `corpus_dir`."""
    base = corpus_dir / pin.root
    files = sorted(
        (p.relative_to(corpus_dir).as_posix(), p)
        for p in base.rglob("*")
        if p.is_file() and matches(PurePosixPath(p.name), pin.match)
    )
    lines = "".join(f"{rel}\t{sha256_file(p)}\n" for rel, p in files)
    total = sum(p.stat().st_size for _, p in files)
    return len(files), total, hashlib.sha256(lines.encode("utf-8")).hexdigest()


def file_problems(corpus_dir: Path, files: dict[str, FilePin], names: list[str]) -> list[str]:
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
        return file_problems(corpus_dir, pins.files, sorted(pins.files))
    assert pins.manifest is not None
    pin = pins.manifest
    count, total, digest = manifest_digest(corpus_dir, pin)
    if (count, total, digest) == (pin.files, pin.bytes, pin.sha256):
        return []
    return [
        f"{pin.root}/: {count:,} files, {total:,} bytes, manifest sha256 {digest}; "
        f"pinned {pin.files:,} files, {pin.bytes:,} bytes, manifest sha256 {pin.sha256}"
    ]
