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

from fedmedlora.cli.credentials import create_credentials, server_hosts
from fedmedlora.cli.main import app
from fedmedlora.errors import ConfigError


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
    for host in ("https://coordinator", "coordinator:8000", "a/b", "", "-bad.org"):
        with pytest.raises(ConfigError, match="not a DNS name or IP address"):
            create_credentials(tmp_path / "h", [host], ["a"])
    assert not (tmp_path / "h").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        create_credentials(tmp_path / "file", ["localhost"], [])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_kept_files_that_do_not_belong_together_are_refused_without_writing(tmp_path):
    create_credentials(tmp_path / "z", ["localhost"], ["a"])
    z = tmp_path / "z"
    other = create_credentials(tmp_path / "other", ["localhost"], ["a"])
    cases = {
        # a half pair is never completed by overwriting the other half
        "server.key": (None, r"server\.pem is there without server\.key"),
        "ca.crt": (None, r"ca\.key is there without ca\.crt"),
        # another study's certificate, a key that is not this certificate's
        "server.pem": (other.server_cert.read_bytes(), "was not issued by"),
        "a.pub": (other.site_public_key("a").read_bytes(), "does not match"),
        "ca.key": (b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "ca.key is not an unencrypted"),
    }
    for name, (content, message) in cases.items():
        original = (z / name).read_bytes()
        if content is None:
            (z / name).unlink()
        else:
            (z / name).write_bytes(content)
        before = _snapshot(z)
        with pytest.raises(ConfigError, match=message):
            create_credentials(z, ["localhost"], ["a", "b"])
        assert _snapshot(z) == before, name  # nothing written, b's keys included
        (z / name).write_bytes(original)
    (z / "ca.key").write_bytes(other.out.joinpath("ca.key").read_bytes())
    with pytest.raises(ConfigError, match=r"ca\.key is not the private key of .*ca\.crt"):
        create_credentials(z, ["localhost"], [])


def test_ca_key_kept_offline_is_needed_only_to_issue_the_server_certificate(tmp_path):
    create_credentials(tmp_path, ["localhost"], ["a"])
    (tmp_path / "ca.key").unlink()  # as advised, once the SuperLink's certificate exists
    creds = create_credentials(tmp_path, ["localhost"], ["a", "b"])
    assert sorted(creds.created) == [tmp_path / "b.key", tmp_path / "b.pub"]
    for name in ("server.pem", "server.key"):
        (tmp_path / name).unlink()
    with pytest.raises(ConfigError, match=r"needs the CA's private key"):
        create_credentials(tmp_path, ["localhost"], [])


def test_a_site_that_made_its_own_key_pair_hands_in_only_the_public_key(tmp_path):
    create_credentials(tmp_path / "site", ["localhost"], ["north"])
    own_public = (tmp_path / "site" / "north.pub").read_bytes()
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "north.pub").write_bytes(own_public)
    creds = create_credentials(tmp_path / "study", ["localhost"], ["north"])
    assert creds.kept == [creds.site_public_key("north")]
    assert not creds.site_key("north").exists()
    assert creds.site_public_key("north").read_bytes() == own_public
    # and a private key without its public half gets the public half derived from it
    creds.site_public_key("north").unlink()
    (tmp_path / "study" / "north.key").write_bytes((tmp_path / "site" / "north.key").read_bytes())
    again = create_credentials(tmp_path / "study", ["localhost"], ["north"])
    assert again.created == [again.site_public_key("north")]
    derived = load_ssh_public_key(again.site_public_key("north").read_bytes())
    assert derived.public_numbers() == load_ssh_public_key(own_public).public_numbers()


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


def test_cli_keeps_a_handed_in_public_key_registers_it_and_brackets_ipv6(tmp_path):
    create_credentials(tmp_path / "site", ["localhost"], ["west"])
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "west.pub").write_bytes((tmp_path / "site" / "west.pub").read_bytes())
    runner = CliRunner()
    args = ["deploy", "credentials", "--out", str(tmp_path / "study"), "--host", "::1"]
    result = runner.invoke(app, [*args, "--site", "west", "--port", "9092"])
    assert result.exit_code == 0, result.output
    assert f"kept    {tmp_path / 'study' / 'west.pub'}" in result.output
    assert f"flwr supernode register {tmp_path / 'study' / 'west.pub'}" in result.output
    assert "--superlink [::1]:9092" in result.output
    assert server_hosts(tmp_path / "study" / "server.pem") == ["::1"]


@pytest.mark.parametrize("site", ["ca", "server", "CA", "Server"])
def test_reserved_site_names_are_refused_and_nothing_is_overwritten(tmp_path, site):
    create_credentials(tmp_path, ["localhost"], ["west"])
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=f"site name '{site}' is reserved"):
        create_credentials(tmp_path, ["localhost"], ["east", site])
    assert _snapshot(tmp_path) == before  # the CA's and the SuperLink's keys untouched
    with pytest.raises(ConfigError, match="is reserved"):
        create_credentials(tmp_path / "fresh", ["localhost"], [site])
    assert not (tmp_path / "fresh").exists()
    result = CliRunner().invoke(
        app, ["deploy", "credentials", "--out", str(tmp_path), "--host", "localhost",
              "--site", site],
    )  # fmt: skip
    assert result.exit_code == 2 and "is reserved" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before


def test_site_names_that_differ_only_in_case_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="differ only in case"):
        create_credentials(tmp_path, ["localhost"], ["west", "West"])
    assert not tmp_path.joinpath("west.key").exists()
