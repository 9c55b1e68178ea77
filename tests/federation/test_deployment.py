"""The same apps on Flower's Deployment Engine: a SuperLink, two SuperNodes that each see
only their own site config, and `flwr run`, all as separate processes on localhost."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmedlora.data.formats.jsonl import write_jsonl
from tests.fixtures import notes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.slow
def test_two_supernodes_with_their_own_data(tmp_path):
    if not (BIN / "flower-superlink").exists():
        pytest.fail("flower-superlink is not installed next to this Python")
    for site, offset in (("alpha", 0), ("beta", 50)):
        write_jsonl(notes(8, site, offset), tmp_path / f"{site}.jsonl")
        (tmp_path / f"{site}.yaml").write_text(
            f"name: {site}\ntrain: {tmp_path / site}.jsonl\ntest_fraction: 0.25\n"
        )
    # The server's config names the sites (for how many to wait for), not their data.
    (tmp_path / "run.yaml").write_text(
        "name: deployed\nmodel: {name: tiny-random}\n"
        "train: {local_steps: 2, batch_size: 4}\n"
        "generation: {batch_size: 8, max_new_tokens: 16}\n"
        "data:\n  sites:\n    - {name: alpha, train: unused.jsonl}\n"
        "    - {name: beta, train: unused.jsonl}\n"
        "federation: {rounds: 2}\n"
    )
    port = _free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        # the apps run in this environment; Flower must not try to build another
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    BIN / "flower-superlink",
                    "--insecure",
                    "--port",
                    str(port),
                    "--database",
                    str(tmp_path / "state.db"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for_port(port)
        for site in ("alpha", "beta"):
            procs.append(
                subprocess.Popen(
                    [
                        BIN / "flower-supernode",
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--port",
                        str(_free_port()),
                        "--node-config",
                        f"site-config='{tmp_path / site}.yaml'",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        out = tmp_path / "out"
        run = subprocess.run(
            [
                BIN / "flwr",
                "run",
                str(ROOT),
                "test",
                "--stream",
                "--run-config",
                f"config='{tmp_path / 'run.yaml'}' out='{out}'",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results = json.loads((out / "results.json").read_text())
        assert results["run"]["status"] == "completed"
        assert [sorted(r["sites"]) for r in results["rounds"]] == [["alpha", "beta"]] * 3
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(home, ignore_errors=True)
