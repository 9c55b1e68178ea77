"""Deployment credentials: a CA-signed SuperLink certificate for the named hosts, one
OpenSSH EC key pair per site, and nothing already issued overwritten."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.hazmat.primitives.serialization.ssh import load_ssh_public_key
from typer.testing import CliRunner

from fedmedlora.cli.main import app
from fedmedlora.errors import ConfigError
from fedmedlora.federation.credentials import create_credentials, server_hosts


def test_server_certificate_is_signed_by_the_study_ca_for_the_hosts(tmp_path):
    creds = create_credentials(tmp_path, ["coordinator.example.org", "10.0.0.5"], [])
    ca = x509.load_pem_x509_certificate(creds.ca.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature does not check out
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server_hosts(creds.server_cert) == ["coordinator.example.org", "10.0.0.5"]
    for key in (tmp_path / "ca.key", creds.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_site_keys_are_a_matching_openssh_p384_pair(tmp_path):
    creds = create_credentials(tmp_path, ["localhost"], ["hospital-a"])
    private = load_ssh_private_key(creds.site_key("hospital-a").read_bytes(), None)
    public = load_ssh_public_key(creds.site_public_key("hospital-a").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(creds.site_key("hospital-a").stat().st_mode) == 0o600


def test_a_second_run_adds_a_site_and_keeps_what_was_issued(tmp_path):
    first = create_credentials(tmp_path, ["localhost"], ["a"])
    before = {p: p.read_bytes() for p in first.created}
    second = create_credentials(tmp_path, ["localhost"], ["a", "b"])
    assert sorted(second.created) == [tmp_path / "b.key", tmp_path / "b.pub"]
    assert {p: p.read_bytes() for p in before} == before
    new_key = load_ssh_private_key(second.site_key("b").read_bytes(), None)
    old_key = load_ssh_private_key(first.site_key("a").read_bytes(), None)
    assert new_key.private_numbers() != old_key.private_numbers()


def test_bad_requests_are_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="at least one host"):
        create_credentials(tmp_path / "x", [], ["a"])
    with pytest.raises(ConfigError, match="site name 'a b'"):
        create_credentials(tmp_path / "y", ["localhost"], ["a b"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    create_credentials(tmp_path / "z", ["localhost"], [])
    (tmp_path / "z" / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"only one of ca\.crt and ca\.key"):
        create_credentials(tmp_path / "z", ["localhost"], [])


def test_cli_prints_the_commands_and_warns_about_a_stale_certificate(tmp_path):
    runner = CliRunner()
    args = ["deploy", "credentials", "--out", str(tmp_path), "--host", "localhost"]
    first = runner.invoke(app, [*args, "--site", "a"])
    assert first.exit_code == 0, first.output
    assert "--enable-supernode-auth" in first.output
    assert f"flwr supernode register {tmp_path / 'a.pub'}" in first.output
    assert f"--auth-supernode-private-key {tmp_path / 'a.key'}" in first.output
    other = runner.invoke(app, ["deploy", "credentials", "--out", str(tmp_path), "--host", "h2"])
    assert other.exit_code == 0, other.output
    assert "valid for ['localhost'], not ['h2']" in " ".join(other.output.split())
    bad = runner.invoke(app, [*args, "--site", "bad name"])
    assert bad.exit_code == 2 and "site name 'bad name'" in bad.output
