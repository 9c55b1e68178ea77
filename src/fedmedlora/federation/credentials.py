"""TLS certificates and SuperNode authentication keys for a deployment.

Flower's docs generate these with openssl/ssh-keygen shell scripts; a study coordinator on
a locked-down machine has Python (and `cryptography`, a Flower dependency) but not always
those tools, so we write the same files from Python:

- `ca.crt`/`ca.key`: a private certificate authority for the study (keep `ca.key` offline);
- `server.pem`/`server.key`: the SuperLink's TLS certificate for the given host names;
- `<site>.key`/`<site>.pub`: one EC P-384 key pair per SuperNode in OpenSSH format, the
  kind `flwr supernode register` and `flower-supernode --auth-supernode-private-key` read.

Existing files are never overwritten: running it again adds what is missing (a new site's
keys), so a credential already handed out stays valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmedlora.errors import ConfigError

SITE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
VALID_DAYS = 825  # the longest validity common TLS clients accept for a server cert


@dataclass
class Credentials:
    """What `create_credentials` wrote and what it found already there."""

    out: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.out / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.out / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.out / "server.key"

    def site_key(self, site: str) -> Path:
        return self.out / f"{site}.key"

    def site_public_key(self, site: str) -> Path:
        return self.out / f"{site}.pub"


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; private keys are readable by their owner only from the start."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    hosts: list[str] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=hosts is None, path_length=None), critical=True)
    )
    if hosts is None:  # the CA
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_subject_names(hosts)), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA384())


def create_credentials(out: Path, hosts: list[str], sites: list[str]) -> Credentials:
    """Write the CA, the SuperLink's certificate for `hosts` and a key pair per site."""
    if not hosts:
        raise ConfigError("credentials: name at least one host the SuperLink is reached at")
    for site in sites:
        if not SITE_NAME.match(site):
            raise ConfigError(f"credentials: site name {site!r} must match [A-Za-z0-9_.-]+")
    out.mkdir(parents=True, exist_ok=True)
    creds = Credentials(out)
    ca_key_path = out / "ca.key"
    if creds.ca.exists() != ca_key_path.exists():
        raise ConfigError(
            f"credentials: {out} holds only one of ca.crt and ca.key; "
            "restore the other or use an empty folder"
        )
    if creds.ca.exists():
        creds.kept += [creds.ca, ca_key_path]
        ca_cert = x509.load_pem_x509_certificate(creds.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"credentials: {ca_key_path} is not an EC private key")
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = _certificate("fedmedlora study CA", ca_key, None, ca_key, None)
        _write(ca_key_path, _pem_key(ca_key), private=True)
        _write(creds.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        creds.created += [creds.ca, ca_key_path]

    if creds.server_cert.exists() and creds.server_key.exists():
        creds.kept += [creds.server_cert, creds.server_key]
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _certificate(hosts[0], key, ca_cert.subject, ca_key, hosts)
        _write(creds.server_key, _pem_key(key), private=True)
        _write(creds.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        creds.created += [creds.server_cert, creds.server_key]

    for site in sites:
        private, public = creds.site_key(site), creds.site_public_key(site)
        if private.exists() and public.exists():
            creds.kept += [private, public]
            continue
        key = ec.generate_private_key(ec.SECP384R1())
        _write(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        ssh_public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write(public, ssh_public + f" {site}\n".encode(), private=False)
        creds.created += [private, public]
    return creds


def server_hosts(cert_path: Path) -> list[str]:
    """The host names and addresses a SuperLink certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]
