"""Checkpoints hold no pickle: what `save` is given comes back exactly, and a crafted
file (a pickle that runs code when unpickled) is refused without running anything."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from fedmedlora.errors import ConfigError
from fedmedlora.federation import checkpoint


class _Payload:
    """Unpickling this creates MARKER: proof that the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "fingerprint": "abc",
        "round": 2,
        "arrays": {"m.lora_A.weight": torch.randn(2, 3, generator=g)},
        "aggregator": {
            "opt_state": {"step": torch.tensor(4), "m": torch.randn(3, generator=g)},
            "weights_log": {1: {"a": 0.5, "b": 0.5}, 2: {"a": 1.0}},
            "screened_out": {1: ["b: NaN"]},
            "noise": torch.Generator().get_state(),
            "accountant": {"orders": [1.5, 2.0], "config": {"max_epsilon": None}},
        },
        "strategy": {"traffic": {1: {"train": {"down": 10, "up": 9}}}, "rejected": ["x"]},
        "recorder": {"rounds": [{"round": 1, "loss": float("inf")}], "__odd": (1, 2)},
    }


def test_what_is_saved_comes_back_exactly(tmp_path):
    random.seed(5)
    saved = _state()
    path = checkpoint.save(tmp_path, saved)
    assert path.name == checkpoint.FILE
    expected_next = random.random()
    random.seed(99)
    loaded = checkpoint.load(tmp_path, "abc")
    assert random.random() == expected_next  # the random state came back too
    assert loaded["aggregator"]["weights_log"] == saved["aggregator"]["weights_log"]
    assert loaded["strategy"]["traffic"] == saved["strategy"]["traffic"]  # int keys kept
    assert loaded["recorder"] == saved["recorder"]  # tuples, odd keys, inf kept
    assert torch.equal(loaded["arrays"]["m.lora_A.weight"], saved["arrays"]["m.lora_A.weight"])
    assert torch.equal(loaded["aggregator"]["noise"], saved["aggregator"]["noise"])
    assert loaded["aggregator"]["opt_state"]["step"].dtype == torch.int64


def test_the_file_is_safetensors_with_no_pickle(tmp_path):
    path = checkpoint.save(tmp_path, _state())
    raw = path.read_bytes()
    # safetensors: an 8-byte header length, then the JSON header; no pickle opcode (0x80)
    # or torch zip archive ("PK") anywhere at the start.
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and raw[8 + header - 1 : 8 + header].strip() in (b"}", b"")
    assert raw[:1] != b"\x80" and raw[:2] != b"PK"


@pytest.mark.parametrize("name", [checkpoint.OLD_FILE, checkpoint.FILE])
def test_a_crafted_pickle_is_refused_and_its_code_does_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle.dumps({"version": 2, "x": _Payload(marker)}))
    with pytest.raises(ConfigError) as err:
        checkpoint.load(tmp_path, "abc")
    assert str(tmp_path / name) in str(err.value)
    assert ("can run code" if name == checkpoint.OLD_FILE else "not a readable") in str(err.value)
    assert not marker.exists()
    # The same bytes, unpickled, would have run it: the test can tell.
    pickle.loads((tmp_path / name).read_bytes())
    assert marker.exists()


def test_a_checkpoint_with_unknown_tags_or_no_state_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / checkpoint.FILE))
    with pytest.raises(ConfigError, match="no fedmedlora state"):
        checkpoint.load(tmp_path, "abc")
    meta = {"fedmedlora-checkpoint": '{"__import__": "os"}'}
    save_file({"x": torch.zeros(1)}, str(tmp_path / checkpoint.FILE), metadata=meta)
    with pytest.raises(ConfigError, match="unknown tag"):
        checkpoint.load(tmp_path, "abc")
