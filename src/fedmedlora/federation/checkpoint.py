"""Checkpoints of a federated run, written by the server after every round, so that a
killed run continues where it stopped (`fedmedlora run --resume`) and reaches the same
final adapter as an uninterrupted run with the same seed.

One file, replaced atomically: the global adapter (as sent), the aggregation method's
state (server optimizer moments, logs), the strategy's bookkeeping, results.json's
content so far and the server's random state. Sites keep no checkpoint: they start each
round from the global adapter and seed everything random by (run seed, site, round).
FedSA's personal B lives in the sites' node state, which survives a server restart but
not a SuperNode restart.

No pickle: loading a pickle runs whatever code it names, so a checkpoint planted in the
run folder would run on `--resume`. The file is safetensors: every tensor as a tensor,
everything else as JSON in its metadata. JSON has no tuples and only string keys, so
those are tagged (`{"__tuple__": [...]}`, `{"__items__": [[key, value], ...]}`) and a
tensor is `{"__tensor__": name}`; `load` rebuilds exactly what `save` was given, and
refuses anything else. Hand-written because no library maps Python containers with
tensors to safetensors (safetensors itself takes one flat dict of tensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fedmedlora.errors import ConfigError

FILE = "checkpoint.safetensors"
OLD_FILE = "checkpoint.pt"  # versions before 2: a pickle, never loaded
VERSION = 2
_STATE = "fedmedlora-checkpoint"  # the metadata entry that holds the JSON


def fingerprint(config_json: dict[str, Any]) -> str:
    """What must not change between a run and its resumption (all of the run config)."""
    return hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, its tensors moved into `tensors`."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        # A copy of its own: safetensors refuses tensors that share memory.
        tensors[name] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"checkpoint: cannot store a {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        return tensors[value["__tensor__"]]
    if set(value) == {"__tuple__"}:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if set(value) == {"__items__"}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    if any(k.startswith("__") for k in value):
        raise ValueError(f"unknown tag among {sorted(value)[:3]}")
    return {k: _decode(v, tensors) for k, v in value.items()}


def save(out_dir: Path, payload: dict[str, Any]) -> Path:
    path = Path(out_dir) / FILE
    payload = {
        **payload,
        "version": VERSION,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    tensors: dict[str, torch.Tensor] = {}
    state = json.dumps(_encode(payload, tensors))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_STATE: state})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint file; nothing in it is executed (safetensors + JSON)."""
    with safe_open(str(path), framework="pt") as f:
        state = (f.metadata() or {}).get(_STATE)
        if state is None:
            raise ValueError("no fedmedlora state in it")
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    payload = _decode(json.loads(state), tensors)
    if not isinstance(payload, dict):
        raise ValueError("its state is not a mapping")
    return payload


def load(out_dir: Path, expected_fingerprint: str) -> dict[str, Any]:
    """The last checkpoint in `out_dir`, refused if another config wrote it."""
    path = Path(out_dir) / FILE
    if not path.is_file():
        old = Path(out_dir) / OLD_FILE
        if old.exists():
            raise ConfigError(
                f"{old}: a pickle checkpoint (fedmedlora before checkpoint version {VERSION}), "
                "not loaded because loading a pickle can run code; run without --resume"
            )
        raise ConfigError(f"{path}: no checkpoint to resume from (run without --resume)")
    try:
        payload = _read(path)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable fedmedlora checkpoint: {exc}") from None
    if payload.get("version") != VERSION:
        raise ConfigError(f"{path}: checkpoint version {payload.get('version')} not supported")
    if payload.get("fingerprint") != expected_fingerprint:
        raise ConfigError(
            f"{path}: written by a different run config; resume with the same config "
            "(or start a new run in another folder)"
        )
    random.setstate(payload["rng"]["python"])
    torch.set_rng_state(payload["rng"]["torch"])
    return payload
