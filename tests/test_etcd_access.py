"""Username/password and TLS (server CA, client certificate) are applied as configured."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import Service
from tests.services import EtcdServer, TLSFiles, etcdctl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("auth-etcd") / "data").start()
    etcdctl("user", "add", "root:root-password", endpoint=server.url)
    etcdctl("auth", "enable", endpoint=server.url)
    yield server
    server.stop()


def test_username_and_password(make_service: Callable[..., Service], auth_etcd: EtcdServer) -> None:
    service = make_service(etcd_overrides={"endpoints": [auth_etcd.url], "username": "root",
                                           "password": "root-password"})
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()


def test_wrong_password_is_a_500_that_says_so(make_service: Callable[..., Service], auth_etcd: EtcdServer) -> None:
    service = make_service(etcd_overrides={"endpoints": [auth_etcd.url], "username": "root", "password": "wrong"})
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith("failed to save an etcd backup: ")
    assert f"{auth_etcd.url}: authentication refused" in message
    assert "wrong" not in message


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
           issuer_key: ec.EllipticCurvePrivateKey, usage: list[x509.ObjectIdentifier] | None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if usage is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False).add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path, prefix: str = "") -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _issue(f"{prefix}test-ca", ca_key, None, ca_key, None)
    files = {}
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = _key()
        cert = _issue(f"{role}", key, ca, ca_key, [usage])
        files[f"{role}_cert"] = _write_pem(directory / f"{role}.pem", cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = _write_pem(directory / f"{role}-key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_path = _write_pem(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    return TLSFiles(ca=ca_path, **files)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    base = tmp_path_factory.mktemp("tls-etcd")
    server = EtcdServer(base / "data", tls=make_tls_files(base / "pki")).start()
    yield server
    server.stop()


def test_tls_with_files(make_service: Callable[..., Service], tls_etcd: EtcdServer) -> None:
    assert tls_etcd.tls is not None
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca-file": str(tls_etcd.tls.ca),
        "tls-cert-file": str(tls_etcd.tls.client_cert), "tls-key-file": str(tls_etcd.tls.client_key),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()


def test_tls_with_inline_pem(make_service: Callable[..., Service], tls_etcd: EtcdServer) -> None:
    assert tls_etcd.tls is not None
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca": tls_etcd.tls.ca.read_text(),
        "tls-cert": tls_etcd.tls.client_cert.read_text(), "tls-key": tls_etcd.tls.client_key.read_text(),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()


def test_tls_with_a_wrong_ca_is_refused(make_service: Callable[..., Service], tls_etcd: EtcdServer,
                                        tmp_path: Path) -> None:
    assert tls_etcd.tls is not None
    other = make_tls_files(tmp_path / "other", prefix="other-")
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca-file": str(other.ca), "timeout": "1s",
        "tls-cert-file": str(tls_etcd.tls.client_cert), "tls-key-file": str(tls_etcd.tls.client_key),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith(f"failed to save an etcd backup: no etcd endpoint answered: {tls_etcd.url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert service.client.get("/api/v1/backup").get_json() == []
