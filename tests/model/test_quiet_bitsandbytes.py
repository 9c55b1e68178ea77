"""bitsandbytes' one warning per command on offline CPUs (no hub kernel) is dropped, and
nothing else it logs."""

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


def test_only_torchs_script_method_deprecation_is_dropped():
    # A fresh process that shows every DeprecationWarning (as Ray's site actors did).
    code = (
        "import warnings, fedmedlora.model\n"
        "warnings.warn('`torch.jit.script_method` is deprecated. Please switch', "
        "DeprecationWarning)\n"
        "warnings.warn('another deprecation', DeprecationWarning)\n"
    )
    run = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "another deprecation" in run.stderr
    assert "script_method" not in run.stderr
