"""TLS certificates and SuperNode authentication keys for a deployment.

Flower's docs generate these with openssl/ssh-keygen shell scripts; a study coordinator on
a locked-down machine has Python (and `cryptography`, a Flower dependency) but not always
those tools, so we write the same files from Python:

- `ca.crt`/`ca.key`: a private certificate authority for the study (keep `ca.key` offline);
- `server.pem`/`server.key`: the SuperLink's TLS certificate for the given host names;
- `<site>.key`/`<site>.pub`: one EC P-384 key pair per SuperNode in OpenSSH format, the
  kind `flwr supernode register` and `flower-supernode --auth-supernode-private-key` read.

Existing files are never overwritten: running it again adds what is missing (a new site's
keys), so a credential already handed out stays valid. What is kept is checked first (keys
match their certificates, the SuperLink's certificate was issued by the study CA and has not
expired, key files parse) and nothing is written unless all of it holds. `ca.key` is needed
only to issue the SuperLink's certificate: keep it offline afterwards. A site that made its
own key pair hands in only `<site>.pub`; that is kept as it is. The site names `ca` and
`server` are refused: their key files would be the CA's and the SuperLink's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmedlora.errors import ConfigError

SITE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# A site's files are `<site>.key`/`<site>.pub` beside the study's own: these names would
# be the CA's or the SuperLink's key. Compared case-blind, as macOS and Windows name files.
RESERVED_SITE_NAMES = ("ca", "server")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
VALID_DAYS = 825  # the longest validity common TLS clients accept for a server cert


@dataclass
class Credentials:
    """What `create_credentials` wrote and what it found already there."""

    out: Path
    hosts: list[str] = field(default_factory=list)  # as checked: lower case, bare IPs
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.out / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.out / "ca.key"

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
    """Write atomically. The temporary file is created exclusively (never through a link
    someone left there) and private keys are readable by their owner only from the start."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted run; ours, in a folder we write
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed a public file's mode
        f.write(data)
    if path.exists():  # never reached by design (kept files are read, not written): a guard
        tmp.unlink()
        raise ConfigError(f"credentials: {path} appeared while writing; not overwritten")
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_host(host: str) -> str:
    """A bare DNS name or IP address: a scheme, port or path would end up among the
    certificate's names, and the TLS check would fail only later, at every site."""
    try:
        return str(ipaddress.ip_address(host.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if not HOST_NAME.match(host):
        raise ConfigError(
            f"credentials: host {host!r} is not a DNS name or IP address (give it without "
            "scheme, port or path, e.g. coordinator.example.org or 10.0.0.5)"
        )
    return host.lower()


def link_address(host: str, port: int) -> str:
    """`host:port` as `flower-supernode --superlink` expects it: IPv6 in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


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


def _read(path: Path, what: str, parse: Callable[[bytes], Any]) -> Any:
    """Parse a kept file; a corrupt, encrypted or foreign one is a user error naming it."""
    try:
        return parse(path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm, OSError) as err:
        raise ConfigError(f"credentials: {path} is not {what}: {err}") from None


def _read_ec_key(path: Path, parse: Callable[[bytes], Any]) -> ec.EllipticCurvePrivateKey:
    key = _read(path, "an unencrypted private key", lambda data: parse(data, None))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"credentials: {path} is not an EC private key")
    return key


def _public_der(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(cert: x509.Certificate, cert_path: Path, key: Any, key_path: Path) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ConfigError(f"credentials: {key_path} is not the private key of {cert_path}")


def _check_current(cert: x509.Certificate, path: Path, remedy: str) -> None:
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(
            f"credentials: {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; {remedy}"
        )


def _kept_ca(creds: Credentials) -> tuple[x509.Certificate | None, Any]:
    """The study CA already in the folder (certificate, and its key when present)."""
    if creds.ca_key.exists() and not creds.ca.exists():
        raise ConfigError(
            f"credentials: {creds.ca_key} is there without ca.crt; restore ca.crt or use an "
            "empty folder"
        )
    if not creds.ca.exists():
        return None, None
    ca_cert = _read(creds.ca, "a PEM certificate", x509.load_pem_x509_certificate)
    _check_current(ca_cert, creds.ca, "a new study needs a new folder")
    ca_key = None
    if creds.ca_key.exists():
        ca_key = _read_ec_key(creds.ca_key, serialization.load_pem_private_key)
        _check_pair(ca_cert, creds.ca, ca_key, creds.ca_key)
    return ca_cert, ca_key


def _check_kept_server(creds: Credentials, ca_cert: x509.Certificate | None) -> bool:
    """Whether the SuperLink's certificate and key are there (and belong to this CA)."""
    present = [p for p in (creds.server_cert, creds.server_key) if p.exists()]
    if not present:
        return False
    if len(present) == 1:
        missing = creds.server_key if present[0] == creds.server_cert else creds.server_cert
        raise ConfigError(
            f"credentials: {present[0]} is there without {missing.name}; restore it, or "
            f"delete {present[0].name} to issue a new pair"
        )
    if ca_cert is None:
        raise ConfigError(
            f"credentials: {creds.server_cert} is there without ca.crt, the CA that issued "
            "it; restore ca.crt, or delete server.pem and server.key to issue a new pair"
        )
    cert = _read(creds.server_cert, "a PEM certificate", x509.load_pem_x509_certificate)
    remedy = "delete server.pem and server.key to issue a new pair"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"credentials: {creds.server_cert} was not issued by {creds.ca}; {remedy}"
        ) from None
    _check_current(cert, creds.server_cert, remedy)
    key = _read_ec_key(creds.server_key, serialization.load_pem_private_key)
    _check_pair(cert, creds.server_cert, key, creds.server_key)
    return True


def _kept_site(creds: Credentials, site: str) -> tuple[Any, bool]:
    """A site's kept private key (or None) and whether its public key is there; checks
    that a kept pair matches. A site may have made its key pair itself and sent only the
    public key: that is kept and registered as it is."""
    private, public = creds.site_key(site), creds.site_public_key(site)
    key = _read_ec_key(private, load_ssh_private_key) if private.exists() else None
    if public.exists():
        pub = _read(public, "an OpenSSH public key", load_ssh_public_key)
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise ConfigError(f"credentials: {public} is not an EC (ECDSA) public key")
        if key is not None and _public_der(pub) != _public_der(key.public_key()):
            raise ConfigError(f"credentials: {public} does not match {private}")
    return key, public.exists()


def _ssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _ssh_public(key: ec.EllipticCurvePrivateKey, site: str) -> bytes:
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line + f" {site}\n".encode()


def create_credentials(out: Path, hosts: list[str], sites: list[str]) -> Credentials:
    """Write the CA, the SuperLink's certificate for `hosts` and a key pair per site,
    keeping (after checking) whatever is already there."""
    if not hosts:
        raise ConfigError("credentials: name at least one host the SuperLink is reached at")
    hosts = [_check_host(h) for h in hosts]
    seen: dict[str, str] = {}
    for site in sites:
        if not SITE_NAME.match(site):
            raise ConfigError(f"credentials: site name {site!r} must match [A-Za-z0-9_.-]+")
        if site.lower() in RESERVED_SITE_NAMES:
            raise ConfigError(
                f"credentials: site name {site!r} is reserved ({site}.key would be the "
                f"{'CA' if site.lower() == 'ca' else 'SuperLink'}'s key); choose another name"
            )
        if seen.setdefault(site.lower(), site) != site:
            raise ConfigError(
                f"credentials: site names {seen[site.lower()]!r} and {site!r} differ only in "
                "case, and would be one file on macOS and Windows"
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"credentials: {out} is a file; --out must be a folder")

    # Check everything kept before writing anything.
    creds = Credentials(out, hosts)
    ca_cert, ca_key = _kept_ca(creds)
    server_kept = _check_kept_server(creds, ca_cert)
    if not server_kept and ca_cert is not None and ca_key is None:
        raise ConfigError(
            f"credentials: issuing the SuperLink's certificate needs the CA's private key; "
            f"put ca.key back in {out} for this run"
        )
    site_keys = {site: _kept_site(creds, site) for site in sites}

    out.mkdir(parents=True, exist_ok=True)
    if ca_cert is None:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_cert = _certificate("fedmedlora study CA", ca_key, None, ca_key, None)
        _write(creds.ca_key, _pem_key(ca_key), private=True)
        _write(creds.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        creds.created += [creds.ca, creds.ca_key]
    else:
        creds.kept += [creds.ca] + ([creds.ca_key] if ca_key is not None else [])

    if server_kept:
        creds.kept += [creds.server_cert, creds.server_key]
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _certificate(hosts[0], key, ca_cert.subject, ca_key, hosts)
        _write(creds.server_key, _pem_key(key), private=True)
        _write(creds.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        creds.created += [creds.server_cert, creds.server_key]

    for site, (key, has_public) in site_keys.items():
        private, public = creds.site_key(site), creds.site_public_key(site)
        if has_public:
            creds.kept += [private, public] if key is not None else [public]
            continue
        if key is None:
            key = ec.generate_private_key(ec.SECP384R1())
            _write(private, _ssh_private(key), private=True)
            creds.created.append(private)
        else:
            creds.kept.append(private)
        _write(public, _ssh_public(key, site), private=False)
        creds.created.append(public)
    return creds


def server_hosts(cert_path: Path) -> list[str]:
    """The host names and addresses a SuperLink certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]
