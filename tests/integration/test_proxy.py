"""A real server behind a PROXY protocol balancer: real sockets, real TLS."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.lines import recv_line
from tests.helpers.proxy import v1, v2, v2_proxy
from tests.helpers.server import ThreadServer, add_user, deliver, make_settings, running
from tests.helpers.tls import Pki, make_pki, tls_settings

PASSWORD = "behind the balancer"
PER_ADDRESS = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"


def session_ends(caplog: pytest.LogCaptureFixture) -> list[str]:
    time.sleep(0.2)  # the server logs after the client saw the close
    return [r.getMessage() for r in caplog.records if "session end" in r.getMessage()]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ThreadServer]:
    settings = tls_settings(
        tmp_path / "data",
        pki,
        server__proxy_networks=["127.0.0.1/32", "::1"],
        server__proxy_timeout=0.5,
        server__max_connections_per_ip=1,
        auth__plaintext_without_tls=True,
    )
    add_user(settings, "alice", PASSWORD)
    deliver(settings, "alice", b"Subject: hi\r\n\r\nthrough the balancer\r\n")
    with running(settings) as srv:
        yield srv


def proxied(srv: ThreadServer, header: bytes, key: str = "pop3") -> socket.socket:
    sock = socket.create_connection(srv.addresses[key], timeout=10)
    sock.sendall(header)
    return sock


def test_the_session_takes_the_client_address_from_a_v1_header(
    server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot.pop3")
    # All three come from 127.0.0.1; the per-address cap of 1 applies to the
    # addresses the headers name.
    first = proxied(server, v1("203.0.113.7"))
    assert recv_line(first).startswith(b"+OK")
    with proxied(server, v1("203.0.113.7")) as same:
        assert recv_line(same) == PER_ADDRESS
    other = proxied(server, v1("2001:db8::7"))
    assert recv_line(other).startswith(b"+OK")
    for sock in (first, other):
        sock.sendall(b"QUIT\r\n")
        assert recv_line(sock).startswith(b"+OK")
        sock.close()
    remotes = sorted(re.findall(r"remote=(\S+)", " ".join(session_ends(caplog))))
    assert remotes == ["2001:db8::7", "203.0.113.7"]


def test_what_follows_the_header_in_the_same_segment_is_the_clients(
    server: ThreadServer,
) -> None:
    with proxied(server, v1("203.0.113.9") + f"USER alice\r\nPASS {PASSWORD}\r\n".encode()) as s:
        assert recv_line(s).startswith(b"+OK")  # greeting
        assert recv_line(s) == b"+OK\r\n"
        assert recv_line(s) == b"+OK Maildrop has 1 messages (37 octets)\r\n"
        s.sendall(b"QUIT\r\n")
        assert recv_line(s).startswith(b"+OK")


def test_a_header_arriving_in_pieces_is_waited_for(server: ThreadServer) -> None:
    header = v2_proxy("198.51.100.4")
    with proxied(server, header[:5]) as sock:
        time.sleep(0.1)
        sock.sendall(header[5:20])
        time.sleep(0.1)
        sock.sendall(header[20:] + b"CAPA\r\n")
        assert recv_line(sock).startswith(b"+OK")  # greeting
        # Not one octet of the header left over for the session to read:
        assert recv_line(sock) == b"+OK Capability list follows\r\n"


class TlsOverHeader:
    """A TLS client on ``sock`` whose ClientHello goes out in one segment
    with ``first`` (the PROXY header): the server must take the header and
    not one octet more."""

    def __init__(self, sock: socket.socket, first: bytes, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        pending = first
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(pending + self.outgoing.read())
                pending = b""
                self._receive()
        sock.sendall(self.outgoing.read())

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("closed by the server")
        self.incoming.write(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def line(self) -> bytes:
        line = b""
        while not line.endswith(b"\r\n"):
            try:
                line += self.tls.read(1)
            except ssl.SSLWantReadError:
                self._receive()
        return line


@pytest.mark.parametrize(
    ("header", "remote"),
    [(v2_proxy("2001:db8::7"), "2001:db8::7"), (v1("203.0.113.7"), "203.0.113.7")],
)
def test_implicit_tls_after_the_header(
    server: ThreadServer,
    pki: Pki,
    header: bytes,
    remote: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot.pop3")
    with socket.create_connection(server.addresses["pop3s"], timeout=10) as sock:
        client = TlsOverHeader(sock, header, pki.client_context())
        assert client.line().startswith(b"+OK")
        client.send(f"USER alice\r\nPASS {PASSWORD}\r\nQUIT\r\n".encode())
        assert client.line() == b"+OK\r\n"
        assert client.line().startswith(b"+OK Maildrop has 1 message")
        assert client.line().startswith(b"+OK")
    assert f"remote={remote} reason=quit" in " ".join(session_ends(caplog))


def test_a_local_header_keeps_the_balancers_address(
    server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot.pop3")
    with proxied(server, v2(0, 0x00, b"") + b"QUIT\r\n") as sock:  # a health check
        assert recv_line(sock).startswith(b"+OK")
        assert recv_line(sock).startswith(b"+OK")
    assert "remote=127.0.0.1 reason=quit" in " ".join(session_ends(caplog))


@pytest.mark.parametrize(
    "opening",
    [
        b"USER alice\r\n",  # no header at all
        b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 110\r\n",
        b"PROXY " + b"x" * 200,
        b"",  # silence until server.proxy_timeout
    ],
)
def test_a_trusted_peer_without_a_good_header_is_dropped_unanswered(
    server: ThreadServer, opening: bytes
) -> None:
    with proxied(server, opening) as sock:
        started = time.monotonic()
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with the opening unread
            answer = b""
        assert answer == b""
        assert time.monotonic() - started < 5
    with proxied(server, v1("203.0.113.7")) as sock:  # still serving
        assert recv_line(sock).startswith(b"+OK")


def test_an_untrusted_peer_cannot_claim_an_address(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "d",
        server__proxy_networks=["10.0.0.0/8"],
        server__max_connections_per_ip=1,
    )
    with running(settings) as srv:
        first = proxied(srv, v1("203.0.113.7"))
        assert recv_line(first).startswith(b"+OK")  # served directly
        assert recv_line(first).startswith(b"-ERR")  # "PROXY" is no POP3 command
        with proxied(srv, v1("203.0.113.8")) as second:  # the cap counts 127.0.0.1
            assert recv_line(second) == PER_ADDRESS
        first.close()
