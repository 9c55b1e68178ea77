"""bitsandbytes' import noise on offline CPUs is stopped in fedmedlora.model, and nothing
else it or torch says."""

from __future__ import annotations

import logging
import subprocess
import sys

import fedmedlora.model  # noqa: F401  (installs the filter)


def test_only_the_hub_kernel_warning_is_dropped():
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    log.addHandler(handler)
    try:
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "offline")
        log.warning("some other bitsandbytes warning")
    finally:
        log.removeHandler(handler)
    assert seen == ["some other bitsandbytes warning"]


def _stderr(code: str) -> str:
    # A fresh process that shows every DeprecationWarning, as Flower's simulation does
    # (it inserts `once` for DeprecationWarning ahead of any earlier filter).
    run = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stderr


def test_torchs_script_method_deprecation_is_not_tripped_after_fedmedlora_model():
    # the module bitsandbytes' import reaches through torch.compile's inductor
    trip = "import torch.fx.experimental.optimization\n"
    assert "script_method" in _stderr(trip)  # without fedmedlora.model it shows
    after = _stderr(
        "import fedmedlora.model, warnings\n"
        "warnings.filterwarnings('once', category=DeprecationWarning)\n"
        + trip
        + "warnings.warn('another deprecation', DeprecationWarning)\n"
    )
    assert "script_method" not in after
    assert "another deprecation" in after  # other deprecations still show
