"""Imports run only downward: the layers contract in pyproject.toml, checked by
import-linter, and that contract covers every module of the package."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import fedmedlora

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(fedmedlora.__file__).parent
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"
)


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_imports_run_only_downward():
    assert PACKAGE.is_relative_to(ROOT / "src"), f"testing another checkout: {PACKAGE}"
    # A subprocess: lint_imports reconfigures logging (dictConfig), which would silence
    # caplog in tests that run after this one in the same worker.
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    run = subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_module_has_a_layer():
    """A new package or top-level module outside the contract would escape it."""
    layered = {name.removeprefix("fedmedlora.") for name in _layers()}
    present = {
        p.stem
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert present - layered == set(), "add these to [tool.importlinter] layers"
