"""The same apps on Flower's Deployment Engine, all as separate processes on localhost: a
SuperLink with TLS and SuperNode authentication, three registered SuperNodes that each
see only their own site config, a node whose key was never registered (refused), and
`flwr run` for two rounds. One cluster serves both tests: every Flower phase starts a
fresh app process per site (imports and model load), so a second cluster would double
the suite's longest test for the same code path; plain text differs only in flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from fedmedlora.cli.credentials import create_credentials
from fedmedlora.data.formats.jsonl import write_jsonl
from tests.fixtures import notes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


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


class Cluster:
    """Flower processes for one test; their output goes to files the asserts can read."""

    def __init__(self, root: Path, tls: Path | None):
        self.root, self.tls, self.port = root, tls, _free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[IO[str]] = []
        home = root / "flwr-home"
        home.mkdir()
        security = f'root-certificates = "{tls / "ca.crt"}"' if tls else "insecure = true"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}\n'
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{BIN}:{os.environ['PATH']}",
            # the apps run in this environment; Flower must not try to build another
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def superlink(self) -> None:
        args = [str(BIN / "flower-superlink"), "--port", str(self.port)]
        args += ["--database", str(self.root / "state.db")]
        if self.tls:
            args += ["--ssl-ca-certfile", str(self.tls / "ca.crt")]
            args += ["--ssl-certfile", str(self.tls / "server.pem")]
            args += ["--ssl-keyfile", str(self.tls / "server.key"), "--enable-supernode-auth"]
        else:
            args.append("--insecure")
        self._start("superlink", args)
        _wait_for_port(self.port)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def supernode(
        self, name: str, site_config: Path | None, key: str | None = None
    ) -> subprocess.Popen:
        args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}"]
        args += ["--port", str(_free_port())]
        if self.tls:
            args += ["--root-certificates", str(self.tls / "ca.crt")]
            if key:
                args += ["--auth-supernode-private-key", str(self.tls / f"{key}.key")]
        else:
            args.append("--insecure")
        if site_config:
            args += ["--node-config", f"site-config='{site_config}'"]
        return self._start(name, args)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


@contextmanager
def cluster(root: Path, tls: Path | None = None) -> Iterator[Cluster]:
    if not (BIN / "flower-superlink").exists():
        pytest.fail("flower-superlink is not installed next to this Python")
    c = Cluster(root, tls)
    try:
        yield c
    finally:
        c.stop()


def _sites(root: Path, names: list[str], rounds: int) -> Path:
    """Each site's own data and site config; the server's run config naming them."""
    for i, site in enumerate(names):
        write_jsonl(notes(8, site, 50 * i), root / f"{site}.jsonl")
        (root / f"{site}.yaml").write_text(
            f"name: {site}\ntrain: {root / site}.jsonl\ntest_fraction: 0.25\n"
        )
    # The server's config names the sites (for how many to wait for), not their data.
    listed = "".join(f"    - {{name: {s}, train: unused.jsonl}}\n" for s in names)
    (root / "run.yaml").write_text(
        "name: deployed\nmodel: {name: tiny-random}\n"
        "train: {local_steps: 2, batch_size: 4}\n"
        "generation: {batch_size: 8, max_new_tokens: 16}\n"
        f"data:\n  sites:\n{listed}"
        f"federation: {{rounds: {rounds}, evaluate_every: {rounds}, evaluate_zero_shot: false}}\n"
    )
    return root / "run.yaml"


def _run(c: Cluster, config: Path, out: Path) -> dict:
    run = c.flwr(
        "run",
        str(ROOT),
        "test",
        "--stream",
        "--run-config",
        f"config='{config}' out='{out}'",
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """Run the study once: TLS, authentication, three sites, an intruder, two rounds."""
    root = tmp_path_factory.mktemp("deployed")
    sites = ["alpha", "beta", "gamma"]
    config = _sites(root, sites, rounds=2)
    creds = root / "creds"
    create_credentials(creds, ["localhost", "127.0.0.1"], [*sites, "intruder"])
    with cluster(root, tls=creds) as c:
        c.superlink()
        for site in sites:
            reg = c.flwr("supernode", "register", str(creds / f"{site}.pub"), "test")
            assert reg.returncode == 0, reg.stdout + reg.stderr
        # A node with a key the study never registered: the SuperLink turns it away.
        intruder = c.supernode("intruder", root / "alpha.yaml", key="intruder")
        intruder_exit = intruder.wait(timeout=60)
        for site in sites:
            c.supernode(site, root / f"{site}.yaml", key=site)
        results = _run(c, config, root / "out")
        listed = c.flwr("supernode", "list", "test", "--format", "json")
        return {
            "sites": sites,
            "results": results,
            "out": root / "out",
            "intruder_exit": intruder_exit,
            "intruder_log": c.log("intruder"),
            "superlink_log": c.log("superlink"),
            "listed": listed,
        }


def test_three_supernodes_with_their_own_data_run_two_rounds(deployed):
    results, sites = deployed["results"], deployed["sites"]
    assert results["run"]["status"] == "completed"
    # every site trained in both rounds, and was evaluated after round 2
    assert [sorted(r["train"]) for r in results["rounds"] if "train" in r] == [sites] * 2
    assert [r["round"] for r in results["rounds"] if "sites" in r] == [2]
    assert all(sorted(r["sites"]) == sites for r in results["rounds"] if "sites" in r)
    assert (deployed["out"] / "adapter" / "adapter_model.safetensors").is_file()


def test_tls_and_node_authentication_refuse_an_unregistered_node(deployed):
    assert deployed["intruder_exit"] != 0
    assert "Failed to activate SuperNode" in deployed["intruder_log"]
    assert "No SuperNode found with the given public key" in deployed["superlink_log"]
    listed = deployed["listed"]
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["nodes"]) == 3  # the registered sites only
