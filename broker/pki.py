"""X.509 material for a fleet broker: a private CA, TLS server and client certificates, CRLs.

Everything is built with the ``cryptography`` library. Keys are EC P-256 (ECDSA with
SHA-256): OpenSSL, and so Mosquitto and Python's ``ssl``, accept them for TLS 1.2 and
1.3, and they are much cheaper to make than RSA on a Raspberry Pi class device.
Ed25519 is deliberately not used here: many TLS stacks do not accept it in
certificates (it is used for message signatures instead, see ``broker.signing``).

File helpers write private keys with mode 0600 through a temporary file and an atomic
rename, so a crash never leaves a half-written or briefly world-readable key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.errors import ConfigError

__all__ = [
    "CertificateAuthority",
    "build_crl",
    "issue_certificate",
    "load_ca",
    "load_certificate",
    "new_ca",
    "subject_alt_names",
    "write_bytes_atomic",
    "write_certificate",
    "write_private_key",
]

# Certificates start a little in the past so a device whose clock lags the CA's
# by a few minutes does not see "certificate is not yet valid".
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateAuthority:
    """The fleet CA: its key signs every certificate and CRL of the fleet."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def new_ca(
    *, common_name: str, organization: str, valid_days: int, now: dt.datetime
) -> CertificateAuthority:
    """A new self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, organization)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, cert)


def subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts``: IP addresses as IPAddress, everything else as DNSName."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def issue_certificate(
    ca: CertificateAuthority,
    *,
    common_name: str,
    usage: Literal["server", "client"],
    valid_days: int,
    now: dt.datetime,
    hosts: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a leaf certificate for it, signed by ``ca``.

    ``usage="server"`` needs ``hosts`` (the names clients connect to: they become the
    subject alternative names that TLS hostname checks read); ``"client"`` certificates
    carry the identity in their CN, which Mosquitto's ``use_identity_as_username``
    turns into the MQTT username.
    """
    if usage == "server" and not hosts:
        raise ConfigError("a server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=valid_days), ca.cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, _organization(ca)))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False
        )
    return key, builder.sign(ca.key, hashes.SHA256())


def _organization(ca: CertificateAuthority) -> str:
    attrs = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attrs[0].value) if attrs else "fedge"


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    number: int,
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    """A CRL listing ``(serial, revocation time)`` pairs, signed by ``ca``.

    OpenSSL refuses *every* client certificate once the CRL's next-update time has
    passed, so the CRL stays valid as long as the CA does. That is safe here: the CRL
    is a local file the broker reads, not a document fetched over the network where
    an attacker could replay an old one.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


# Files ------------------------------------------------------------------------------------


def write_bytes_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file created with ``mode``, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a stale temp file from a crash must not keep its mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to os.open
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PEM (PKCS#8, unencrypted: services start unattended) with mode 0600."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_bytes_atomic(path, pem, mode=0o600)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    """PEM certificate, world-readable (certificates are public)."""
    write_bytes_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate; a missing or malformed file is a :class:`ConfigError`."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from exc


def load_ca(key_path: Path, cert_path: Path) -> CertificateAuthority:
    """Load the fleet CA written by :func:`new_ca` and the file helpers."""
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read CA key {key_path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: the fleet CA key must be an EC key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} does not belong to the CA certificate {cert_path}")
    return CertificateAuthority(key, cert)
