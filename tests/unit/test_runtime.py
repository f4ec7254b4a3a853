"""TLS to Redis: certificates are verified unless turned off on purpose.

A small TLS server speaking just enough RESP (PONG, OK) stands in for a
Redis with a self-signed certificate, as Heroku Redis and many private
deployments have.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from worker.checks import describe, run_check
from worker.errors import SettingsError
from worker.runtime import connect
from worker.settings import Settings


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _serve(conn: ssl.SSLSocket) -> None:
    """Answer each RESP command: PONG to PING, a map to HELLO, OK to anything else."""
    buffer = io.BytesIO()
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer.write(data)
            text = buffer.getvalue()
            while text.startswith(b"*"):
                count_end = text.find(b"\r\n")
                count = int(text[1:count_end])
                pos, parts = count_end + 2, []
                for _ in range(count):
                    size_end = text.find(b"\r\n", pos)
                    if size_end < 0:
                        break
                    size = int(text[pos + 1 : size_end])
                    if len(text) < size_end + 2 + size + 2:
                        break
                    parts.append(text[size_end + 2 : size_end + 2 + size])
                    pos = size_end + 2 + size + 2
                if len(parts) < count:
                    break
                command = parts[0].upper()
                if command == b"HELLO":  # RESP3 handshake: a map with the protocol asked for
                    proto = parts[1] if len(parts) > 1 else b"2"
                    conn.sendall(b"%1\r\n+proto\r\n:" + proto + b"\r\n")
                else:
                    conn.sendall(b"+PONG\r\n" if command == b"PING" else b"+OK\r\n")
                text = text[pos:]
            buffer = io.BytesIO(text)
            buffer.seek(0, io.SEEK_END)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                conn = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            threading.Thread(target=_serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"rediss://127.0.0.1:{port}/0", cert
    stop.set()
    listener.close()


def settings(**env: str) -> Settings:
    return Settings.from_env(env, dotenv=False)


def test_a_self_signed_certificate_is_refused_by_default(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(settings(REDIS_URL=url)).ping()
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(url).ping()  # a bare URL gets the same default


def test_the_certificate_is_accepted_with_its_ca_file(tls_redis: tuple[str, Path]) -> None:
    url, cert = tls_redis
    assert connect(settings(REDIS_URL=url, REDIS_TLS_CA_FILE=str(cert))).ping()


def test_checks_are_off_only_when_asked_or_on_heroku(tls_redis: tuple[str, Path]) -> None:
    url, _ = tls_redis
    assert connect(settings(REDIS_URL=url, REDIS_TLS_VERIFY="false")).ping()
    assert connect(settings(REDIS_TLS_URL=url, DYNO="web.1")).ping()
    # on Heroku, asking for verification turns it back on
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(settings(REDIS_TLS_URL=url, DYNO="web.1", REDIS_TLS_VERIFY="true")).ping()


def test_the_celery_broker_gets_the_same_tls_options(tls_redis: tuple[str, Path]) -> None:
    from worker.celery_app import configure

    url, cert = tls_redis
    verified = configure(settings(REDIS_URL=url, REDIS_TLS_CA_FILE=str(cert)))
    assert verified.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert verified.conf.broker_use_ssl["ssl_ca_certs"] == str(cert)
    off = configure(settings(REDIS_URL=url, REDIS_TLS_VERIFY="no"))
    assert off.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_NONE


def test_exolegs_check_says_which_tls_mode_is_in_force(tls_redis: tuple[str, Path]) -> None:
    url, cert = tls_redis
    rows = dict(describe(settings(REDIS_URL=url)))
    assert rows["Redis TLS"] == "TLS, certificate verified against system CAs"
    rows = dict(describe(settings(REDIS_URL=url, REDIS_TLS_CA_FILE=str(cert))))
    assert rows["Redis TLS"] == f"TLS, certificate verified against CA file {cert}"
    rows = dict(describe(settings(REDIS_URL=url, REDIS_TLS_VERIFY="false")))
    assert rows["Redis TLS"] == "TLS, certificate NOT verified (REDIS_TLS_VERIFY=false)"
    rows = dict(describe(settings(REDIS_TLS_URL=url, DYNO="web.1")))
    assert rows["Redis TLS"] == "TLS, certificate NOT verified (Heroku Redis (self-signed))"
    out = io.StringIO()
    run_check({"REDIS_URL": url, "CALLBACK_TOKEN": "t" * 32}, out=out)
    assert "certificate verified against system CAs" in out.getvalue()
    assert "REDIS_URL" in out.getvalue() and "CERTIFICATE_VERIFY_FAILED" not in out.getvalue()


def test_exolegs_check_notes_an_unverified_redis_outside_heroku(
    tls_redis: tuple[str, Path],
) -> None:
    from worker.checks import security_findings

    url, _ = tls_redis
    _, notes = security_findings(settings(REDIS_URL=url, REDIS_TLS_VERIFY="false"), {})
    assert any("REDIS_TLS_VERIFY=false" in n for n in notes)
    _, heroku = security_findings(settings(REDIS_TLS_URL=url, DYNO="web.1"), {"DYNO": "web.1"})
    assert not any("REDIS_TLS_VERIFY" in n for n in heroku)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_TLS_VERIFY": "maybe"}, "REDIS_TLS_VERIFY"),
        ({"REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "REDIS_TLS_CA_FILE"),
    ],
)
def test_bad_tls_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**env)
    assert str(caught.value).startswith(variable)
