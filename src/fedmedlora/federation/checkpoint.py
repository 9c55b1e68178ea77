"""Checkpoints of a federated run, written by the server after every round, so that a
killed run continues where it stopped (`fedmedlora run --resume`) and reaches the same
final adapter as an uninterrupted run with the same seed.

One file, replaced atomically: the global adapter (as sent), the aggregation method's
state (server optimizer moments, logs), the strategy's bookkeeping, results.json's
content so far and the server's random state. Sites keep no checkpoint: they start each
round from the global adapter and seed everything random by (run seed, site, round).
FedSA's personal B lives in the sites' node state, which survives a server restart but
not a SuperNode restart.
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

from fedmedlora.errors import ConfigError

FILE = "checkpoint.pt"
VERSION = 1


def fingerprint(config_json: dict[str, Any]) -> str:
    """What must not change between a run and its resumption (all of the run config)."""
    return hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()


def save(out_dir: Path, payload: dict[str, Any]) -> Path:
    path = Path(out_dir) / FILE
    payload = {
        **payload,
        "version": VERSION,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{FILE}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(out_dir: Path, expected_fingerprint: str) -> dict[str, Any]:
    """The last checkpoint in `out_dir`, refused if another config wrote it."""
    path = Path(out_dir) / FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from (run without --resume)")
    try:
        payload = torch.load(path, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"{path}: not a readable fedmedlora checkpoint: {exc}") from None
    if payload.get("version") != VERSION:
        raise ConfigError(f"{path}: checkpoint version {payload.get('version')} not supported")
    if payload["fingerprint"] != expected_fingerprint:
        raise ConfigError(
            f"{path}: written by a different run config; resume with the same config "
            "(or start a new run in another folder)"
        )
    random.setstate(payload["rng"]["python"])
    torch.set_rng_state(payload["rng"]["torch"])
    return payload
