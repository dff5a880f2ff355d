"""TLS files are read and parsed at config load, not at the first connection: etcd's CA, client certificate
and key, the API's certificate and key, S3's CA file. What is not PEM, not a certificate, not a private key,
or a key that is not its certificate's, is one line naming the key (the content is never quoted: a key is
secret, and a placeholder may sit where it should be)."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from common.config.errors import ConfigError

INLINE = "the inline PEM"
"""How a message names a PEM given in the config itself (no path to show)."""


def certificates(key: str, shown: str, pem: bytes) -> list[x509.Certificate]:
    """The certificates of `pem` (a CA bundle, or a certificate and its chain), at least one."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(key, f"{shown}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(key, f"{shown}: not a certificate (a CERTIFICATE block that does not parse)") from None


def private_key(key: str, shown: str, pem: bytes) -> PrivateKeyTypes:
    """The unencrypted private key of `pem`."""
    if b"PRIVATE KEY-----" not in pem:
        raise ConfigError(key, f"{shown}: no PEM private key in it (expected -----BEGIN ... PRIVATE KEY-----)")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # it needs a password
        raise ConfigError(key, f"{shown}: the private key is encrypted; give it unencrypted (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(key, f"{shown}: not a private key (a PRIVATE KEY block that does not parse)") from None


def check_pair(cert_key: str, cert_shown: str, cert_pem: bytes, key_key: str, key_shown: str, key_pem: bytes) -> None:
    """Parse a certificate (and its chain) and its private key; refuse a key that is not the certificate's."""
    leaf = certificates(cert_key, cert_shown, cert_pem)[0]
    key = private_key(key_key, key_shown, key_pem)
    if _public(leaf.public_key()) != _public(key.public_key()):
        where = "" if cert_shown == INLINE else f" ({cert_shown})"
        raise ConfigError(key_key, f"{key_shown} is not the key of {cert_key}{where}: give the pair that was issued "
                                   "together")


def _public(public_key: Any) -> bytes:  # every kind of public key cryptography loads has public_bytes
    data: bytes = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return data
