"""A TLS certificate, its private key and an optional CA bundle, checked together
before they are written as one transaction (`secretfs tls set`).

Layout: the secret NAME becomes three secrets side by side, `NAME.crt` (the
certificate, chain after it), `NAME.key` (the private key) and `NAME.ca.crt` (the CA
bundle, if given); `tls set tls` gives kubernetes's `tls.crt`/`tls.key`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from secretfs.errors import UsageError
from secretfs.refs import Ref

CERT_SUFFIX = ".crt"
KEY_SUFFIX = ".key"
CA_SUFFIX = ".ca.crt"

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class TlsParts:
    """The checked PEM values, each ending with the newline PEM readers need."""

    cert: bytes
    key: bytes
    ca: bytes | None
    subject: str
    not_after: str


def part_refs(name: Ref) -> tuple[Ref, Ref, Ref]:
    """The certificate's, the key's and the CA bundle's secrets for `name`."""
    if name.field:
        raise UsageError(f"a TLS pair is a whole secret name, not a field: {name}")
    return tuple(  # type: ignore[return-value]
        Ref(name.scope, name.name + suffix) for suffix in (CERT_SUFFIX, KEY_SUFFIX, CA_SUFFIX)
    )


def _pem(data: bytes) -> bytes:
    # nginx and OpenSSL read a last line without "\n", other readers (ssh, some Go) do not.
    return data if data.endswith(b"\n") else data + b"\n"


def _certs(data: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(f"{what} is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        # cryptography's message may quote the input: name only the file.
        raise UsageError(f"{what} does not parse as PEM certificates") from None


def check(cert: bytes, key: bytes, ca: bytes | None) -> TlsParts:
    """Refuse a certificate, key or CA that does not parse, or a key that does not belong
    to the certificate (the first one in the file: the leaf)."""
    leaf = _certs(cert, "--cert")[0]
    if b"PRIVATE KEY-----" not in key:
        raise UsageError("--key is not a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise UsageError(
            "--key is encrypted: servers read it without a passphrase; decrypt it first"
            " (openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError("--key does not parse as a PEM private key") from None
    if private.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise UsageError(
            "--key does not match --cert (their public keys differ): nothing was written"
        )
    if ca is not None:
        _certs(ca, "--ca")
    return TlsParts(
        _pem(cert),
        _pem(key),
        None if ca is None else _pem(ca),
        leaf.subject.rfc4514_string(),
        leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
