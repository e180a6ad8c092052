"""Real TLS (trustme certificates), SASL, APOP and attack resistance against
a real server on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import poplib
import shutil
import signal
import socket
import ssl
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp

from mailslot.config import Settings
from mailslot.pop3.apop import apop_digest
from tests.helpers.lines import recv_line
from tests.helpers.server import (
    ProcessServer,
    ThreadServer,
    add_user,
    deliver,
    running,
    write_config,
)
from tests.helpers.tls import Pki, make_pki, tls_settings

PASSWORD = "tls pass \t with tab"
SCRAM_PASSWORD = "pässwörd with spaces"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def settings(tmp_path: Path, pki: Pki) -> Settings:
    s = tls_settings(
        tmp_path / "data",
        pki,
        auth__mechanisms=["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN", "CRAM-MD5"],
        auth__store_secrets=True,
        auth__apop=True,
        auth__penalty_max_delay=0,
        tls__handshake_timeout=1,
    )
    add_user(s, "alice", PASSWORD, store_secret=True)
    add_user(s, "sam", SCRAM_PASSWORD)  # SASLprep forbids the TAB in PASSWORD
    deliver(s, "alice", b"Subject: secret\r\n\r\nover TLS only\r\n")
    return s


@pytest.fixture
def server(settings: Settings) -> Iterator[ThreadServer]:
    with running(settings) as srv:
        yield srv


def recv_multiline(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n.\r\n"):
        chunk = sock.recv(4096)
        assert chunk
        data += chunk
    return data


# ---------------------------------------------------------------- STLS / POP3S


def test_stls_then_user_pass(server: ThreadServer, pki: Pki) -> None:
    client = poplib.POP3(*server.address, timeout=30)
    caps = client.capa()
    assert "STLS" in caps and "USER" not in caps
    assert "PLAIN" not in caps["SASL"] and "SCRAM-SHA-256" in caps["SASL"]
    assert client.stls(pki.client_context()).startswith(b"+OK")
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps and "PLAIN" in caps["SASL"]
    client.user("alice")
    client.pass_(PASSWORD)
    assert b"over TLS only" in b"\r\n".join(client.retr(1)[1])
    client.quit()


def test_pop3s(server: ThreadServer, pki: Pki) -> None:
    client = poplib.POP3_SSL(*server.addresses["pop3s"], context=pki.client_context(), timeout=30)
    assert "STLS" not in client.capa()
    client.user("alice")
    assert client.pass_(PASSWORD).startswith(b"+OK Maildrop has 1")
    client.quit()


def test_plaintext_auth_refused_without_tls(server: ThreadServer) -> None:
    client = poplib.POP3(*server.address, timeout=30)
    with pytest.raises(poplib.error_proto) as exc:
        client.user("alice")
    assert exc.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    client.quit()


def test_stls_wrong_uses(server: ThreadServer, pki: Pki) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        recv_line(sock)
        sock.sendall(b"STLS now\r\n")
        assert recv_line(sock) == b"-ERR Too many arguments\r\n"
        sock.sendall(b"STLS\r\n")
        assert recv_line(sock) == b"+OK Begin TLS negotiation\r\n"
        tls = pki.client_context().wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"STLS\r\n")
        assert recv_line(tls) == b"-ERR TLS is already active\r\n"
        tls.sendall(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
        assert recv_line(tls) == b"+OK\r\n"
        assert recv_line(tls).startswith(b"+OK Maildrop has")
        tls.sendall(b"STLS\r\n")
        assert recv_line(tls).startswith(b"-ERR Command not valid in TRANSACTION")
        tls.sendall(b"QUIT\r\n")
        assert recv_line(tls).startswith(b"+OK")
        tls.close()


@pytest.mark.parametrize("tail", [b"CAPA\r\n", b"USER alice\r\n"])
def test_stls_command_injection_is_not_executed(
    server: ThreadServer, pki: Pki, tail: bytes
) -> None:
    """CVE-2011-0411 class: bytes pipelined after STLS in the same packet."""
    with socket.create_connection(server.address, timeout=10) as sock:
        recv_line(sock)
        sock.sendall(b"STLS\r\n" + tail)
        assert recv_line(sock) == b"+OK Begin TLS negotiation\r\n"
        try:
            tls = pki.client_context().wrap_socket(sock, server_hostname="localhost")
        except (ssl.SSLError, ConnectionError):
            return  # the server fed the plaintext to TLS and failed: also safe
        # Nothing was answered in plaintext, and nothing runs after the handshake.
        tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
        assert recv_line(tls) == b"-ERR Send USER first\r\n"
        tls.sendall(b"NOOP\r\n")
        assert recv_line(tls).startswith(b"-ERR Command not valid")
        tls.close()


def test_half_open_handshake_is_dropped(server: ThreadServer) -> None:
    with socket.create_connection(server.addresses["pop3s"], timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server: tls.handshake_timeout = 1
        assert time.monotonic() - started < 8


def test_stls_handshake_timeout(server: ThreadServer) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        recv_line(sock)
        sock.sendall(b"STLS\r\n")
        assert recv_line(sock) == b"+OK Begin TLS negotiation\r\n"
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 8


def test_failed_handshake_closes_only_that_connection(server: ThreadServer, pki: Pki) -> None:
    with socket.create_connection(server.addresses["pop3s"], timeout=10) as sock:
        sock.sendall(b"this is not TLS\r\n" * 10)
        received = b""
        while chunk := sock.recv(100):  # at most a TLS alert, then the close
            received += chunk
        assert b"+OK" not in received and b"-ERR" not in received
    client = poplib.POP3_SSL(*server.addresses["pop3s"], context=pki.client_context(), timeout=30)
    assert "USER" in client.capa()
    client.quit()


def old_tls_client(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = pki.client_context()
    with warnings.catch_warnings():  # the stdlib deprecates these versions too
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_refused(server: ThreadServer, pki: Pki, version: ssl.TLSVersion) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        poplib.POP3_SSL(
            *server.addresses["pop3s"], context=old_tls_client(pki, version), timeout=10
        )
    # The same client code with TLS 1.2 gets in: the refusal is the version.
    ok = poplib.POP3_SSL(
        *server.addresses["pop3s"], context=old_tls_client(pki, ssl.TLSVersion.TLSv1_2), timeout=10
    )
    ok.quit()


# ---------------------------------------------------------------- SASL


class SaslClient:
    def __init__(self, server: ThreadServer, pki: Pki) -> None:
        raw = socket.create_connection(server.addresses["pop3s"], timeout=10)
        self.sock = pki.client_context().wrap_socket(raw, server_hostname="localhost")
        self.greeting = recv_line(self.sock)

    def send(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return recv_line(self.sock)

    def challenge(self, reply: bytes) -> bytes:
        assert reply.startswith(b"+ "), reply
        return base64.b64decode(reply[2:].strip())

    def close(self) -> None:
        self.sock.sendall(b"QUIT\r\n")
        recv_line(self.sock)
        self.sock.close()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_sasl_plain(server: ThreadServer, pki: Pki) -> None:
    c = SaslClient(server, pki)
    assert c.send(b"AUTH PLAIN " + b64(f"\0alice\0{PASSWORD}".encode())).startswith(b"+OK Maildrop")
    c.close()
    c = SaslClient(server, pki)
    assert c.send(b"AUTH PLAIN") == b"+ \r\n"
    assert c.send(b64(b"\0alice\0wrong")) == b"-ERR [AUTH] Authentication failed\r\n"
    assert c.send(b"AUTH PLAIN " + b64(f"bob\0alice\0{PASSWORD}".encode())).startswith(
        b"-ERR [AUTH]"
    )
    c.close()


def test_sasl_login(server: ThreadServer, pki: Pki) -> None:
    c = SaslClient(server, pki)
    assert c.challenge(c.send(b"AUTH LOGIN")) == b"Username:"
    assert c.challenge(c.send(b64(b"alice"))) == b"Password:"
    assert c.send(b64(PASSWORD.encode())).startswith(b"+OK Maildrop")
    c.close()


def test_sasl_cram_md5(server: ThreadServer, pki: Pki) -> None:
    for password, ok in ((PASSWORD, True), ("wrong", False)):
        c = SaslClient(server, pki)
        challenge = c.challenge(c.send(b"AUTH CRAM-MD5"))
        assert challenge.startswith(b"<") and challenge.endswith(b">")
        digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        reply = c.send(b64(b"alice " + digest.encode()))
        assert reply.startswith(b"+OK Maildrop") == ok, reply
        c.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_sasl_scram(server: ThreadServer, pki: Pki, mechanism: str) -> None:
    c = SaslClient(server, pki)
    client = scramp.ScramClient([mechanism], "sam", SCRAM_PASSWORD)
    first = client.get_client_first().encode()
    server_first = c.challenge(c.send(f"AUTH {mechanism} ".encode() + b64(first)))
    client.set_server_first(server_first.decode())
    server_final = c.challenge(c.send(b64(client.get_client_final().encode())))
    client.set_server_final(server_final.decode())  # verifies the server signature
    assert c.send(b"").startswith(b"+OK Maildrop")
    c.close()


def test_sasl_scram_wrong_password(server: ThreadServer, pki: Pki) -> None:
    c = SaslClient(server, pki)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "sam", "wrong")
    server_first = c.challenge(
        c.send(b"AUTH SCRAM-SHA-256 " + b64(client.get_client_first().encode()))
    )
    client.set_server_first(server_first.decode())
    assert c.send(b64(client.get_client_final().encode())).startswith(b"-ERR [AUTH]")
    c.close()


def test_sasl_cancel_and_bad_base64(server: ThreadServer, pki: Pki) -> None:
    c = SaslClient(server, pki)
    assert c.send(b"AUTH SCRAM-SHA-256") == b"+ \r\n"
    assert c.send(b"*") == b"-ERR [AUTH] Authentication cancelled\r\n"
    assert c.send(b"AUTH PLAIN !!!") == b"-ERR [AUTH] Invalid base64 in initial response\r\n"
    c.close()


def test_apop_with_greeting_timestamp(server: ThreadServer) -> None:
    client = poplib.POP3(*server.address, timeout=30)
    timestamp = client.getwelcome().split()[-1].decode()
    assert timestamp.startswith("<") and timestamp.endswith(">")
    assert apop_digest(timestamp, PASSWORD)
    assert client.apop("alice", PASSWORD).startswith(b"+OK Maildrop")
    client.quit()
    client = poplib.POP3(*server.address, timeout=30)
    with pytest.raises(poplib.error_proto):
        client.apop("alice", "wrong")
    client.quit()


# ---------------------------------------------------------------- attack resistance


def attempt(
    address: tuple[str, int], pki: Pki, user: str, password: str, source: str = "127.0.0.1"
) -> tuple[bytes, float]:
    raw = socket.create_connection(address, timeout=30, source_address=(source, 0))
    sock = pki.client_context().wrap_socket(raw, server_hostname="localhost")
    recv_line(sock)
    started = time.monotonic()
    sock.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
    recv_line(sock)
    reply = recv_line(sock)
    elapsed = time.monotonic() - started
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return reply, elapsed


def test_brute_force_slows_down_then_is_refused(tmp_path: Path, pki: Pki) -> None:
    settings = tls_settings(
        tmp_path / "d", pki, auth__penalty_max_delay=2, auth__penalty_block_after=4
    )
    add_user(settings, "victim", PASSWORD)
    with running(settings) as srv:
        address = srv.addresses["pop3s"]
        delays = [attempt(address, pki, "victim", f"guess{n}")[1] for n in range(4)]
        assert delays[-1] > delays[0] + 0.5, delays  # it slows down
        reply, _ = attempt(address, pki, "victim", PASSWORD)  # blocked even when right
        assert reply == b"-ERR [AUTH] Authentication failed\r\n"
        reply, _ = attempt(address, pki, "someone", PASSWORD, source="127.0.0.2")
        assert reply == b"-ERR [AUTH] Authentication failed\r\n"  # unknown user, other IP
        add_user(settings, "other", PASSWORD)
        reply, _ = attempt(address, pki, "other", PASSWORD, source="127.0.0.2")
        assert reply.startswith(b"+OK Maildrop"), reply


def test_unknown_user_and_wrong_password_take_the_same_time(tmp_path: Path, pki: Pki) -> None:
    settings = tls_settings(
        tmp_path / "d",
        pki,
        auth__penalty_max_delay=0,
        auth__penalty_block_after=1000,
        auth__argon2_memory_kib=16384,
    )
    with running(settings) as srv:
        # A real argon2id hash with the same parameters as the dummy one.
        add_user(settings, "known", PASSWORD)
        address = srv.addresses["pop3s"]
        known, unknown = [], []
        for _ in range(12):
            known.append(attempt(address, pki, "known", "wrong")[1])
            unknown.append(attempt(address, pki, "unknown", "wrong")[1])
    a, b = statistics.median(known), statistics.median(unknown)
    print(f"\nwrong password {a * 1000:.1f} ms, unknown user {b * 1000:.1f} ms")
    assert abs(a - b) < 0.5 * max(a, b), (a, b)


def test_sighup_reloads_the_certificate_without_dropping_sessions(tmp_path: Path) -> None:
    old = make_pki(tmp_path / "old")
    config = write_config(
        tmp_path / "data",
        tls__cert=str(old.cert),
        tls__key=str(old.key),
        pop3s__listen=["127.0.0.1:0"],
    )
    srv = ProcessServer(config)
    try:
        address = srv.addresses["pop3s"]
        session = poplib.POP3_SSL(*address, context=old.client_context(), timeout=30)
        new = make_pki(tmp_path / "new")  # another CA: the old trust cannot verify it
        shutil.copyfile(new.cert, old.cert)
        shutil.copyfile(new.key, old.key)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                fresh = poplib.POP3_SSL(*address, context=new.client_context(), timeout=30)
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        fresh.quit()
        assert "USER" in session.capa()  # the old session is still there
        session.quit()
        with pytest.raises(ssl.SSLCertVerificationError):
            poplib.POP3_SSL(*address, context=old.client_context(), timeout=30)
    finally:
        srv.stop()
    assert any("SIGHUP: reloaded" in line for line in srv.lines)


def test_loopback_may_be_trusted_explicitly(tmp_path: Path, pki: Pki) -> None:
    strict = tls_settings(tmp_path / "a", pki)
    trusting = tls_settings(tmp_path / "b", pki, auth__plaintext_on_loopback=True)
    for settings, allowed in ((strict, False), (trusting, True)):
        add_user(settings, "alice", PASSWORD)
        with running(settings) as srv:
            client = poplib.POP3(*srv.address, timeout=30)
            assert ("USER" in client.capa()) == allowed
            if allowed:
                client.user("alice")
                assert client.pass_(PASSWORD).startswith(b"+OK")
            else:
                with pytest.raises(poplib.error_proto):
                    client.user("alice")
            client.quit()
