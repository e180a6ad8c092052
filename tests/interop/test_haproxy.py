"""A real HAProxy in front of mailslot, passing the client's address on
with the PROXY protocol, as the README's "Behind a load balancer" section
configures it.

HAProxy (TCP mode) listens on 127.0.0.2 and forwards to mailslot on
127.0.0.1: POP3 with ``send-proxy-v2``, POP3S (TLS passed through, not
terminated) with ``send-proxy``.  mailslot trusts 127.0.0.1 only.  Clients
(Python's poplib) connect to HAProxy from 127.0.0.3 and 127.0.0.4, and
mailslot must see those addresses: in its per-address limit
(``server.max_connections_per_ip = 1``) and in its logs.  HAProxy's health
checks run meanwhile (every 300 ms, with the header too) and must disturb
nothing.
"""

from __future__ import annotations

import poplib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.clients import require_binary
from tests.helpers.server import ProcessServer, cli, free_port, write_config
from tests.helpers.tls import Pki, make_pki

pytestmark = pytest.mark.interop

PASSWORD = "balanced pass"
PROBE = "127.0.0.9"  # where the readiness probes come from
BALANCER = "127.0.0.1"  # where HAProxy connects to mailslot from
MESSAGE = b"Subject: via haproxy\r\n\r\nthe client's address survives\r\n"

HAPROXY_CFG = """\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend pop3
    bind 127.0.0.2:{pop3_front}
    default_backend pop3
backend pop3
    server mailslot {pop3} send-proxy-v2 check inter 300ms
frontend pop3s
    bind 127.0.0.2:{pop3s_front}
    default_backend pop3s
backend pop3s
    server mailslot {pop3s} send-proxy check inter 300ms
"""


class FromAddress(poplib.POP3):
    """poplib connecting to HAProxy from a chosen loopback address, over
    implicit TLS when given a context."""

    def __init__(self, port: int, source: str, tls: ssl.SSLContext | None = None) -> None:
        self.source = source
        self.tls = tls
        super().__init__("127.0.0.2", port, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        address = (self.host, self.port)
        sock = socket.create_connection(address, timeout, source_address=(self.source, 0))
        if self.tls is None:
            return sock
        return self.tls.wrap_socket(sock, server_hostname="localhost")


@dataclass
class Balanced:
    server: ProcessServer
    pop3: int  # HAProxy's front ports
    pop3s: int
    pki: Pki

    def log(self) -> str:
        return "".join(self.server.lines)

    def remotes(self) -> list[str]:
        time.sleep(0.3)  # the server logs after the client saw the close
        text = "".join(self.server.lines)
        remotes = re.findall(r"session end user=\S* remote=(\S+)", text)
        # Leave out the probes and HAProxy's health checks (LOCAL headers).
        return [remote for remote in remotes if remote not in (PROBE, BALANCER)]


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[Balanced]:
    haproxy = require_binary("haproxy")
    pki = make_pki(tmp_path / "pki")
    config = str(
        write_config(
            tmp_path / "data",
            pop3s__listen=["127.0.0.1:0"],
            tls__cert=str(pki.cert),
            tls__key=str(pki.key),
            server__proxy_networks=["127.0.0.1/32"],
            server__max_connections_per_ip=1,
        )
    )
    added = cli("user", "add", "-c", config, "alice", "--password-stdin", stdin=PASSWORD.encode())
    assert added.returncode == 0, added.stderr
    assert cli("deliver", "-c", config, "alice", stdin=MESSAGE).returncode == 0
    server = ProcessServer(Path(config))
    fronts = {"pop3_front": free_port(), "pop3s_front": free_port()}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        HAPROXY_CFG.format(
            pop3="{}:{}".format(*server.addresses["pop3"]),
            pop3s="{}:{}".format(*server.addresses["pop3s"]),
            **fronts,
        )
    )
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for port in fronts.values():
            _wait_for(("127.0.0.2", port), proc)
        yield Balanced(server, fronts["pop3_front"], fronts["pop3s_front"], pki)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        assert server.stop() == 0
        assert "Traceback" not in "".join(server.lines)


def _wait_for(address: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("haproxy exited: " + proc.communicate()[0].decode(errors="replace"))
        try:
            socket.create_connection(address, timeout=1, source_address=(PROBE, 0)).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"haproxy did not listen on {address}")


def test_pop3_through_haproxy_sees_the_client(balanced: Balanced) -> None:
    first = FromAddress(balanced.pop3, "127.0.0.3")
    first.user("alice")
    first.pass_(PASSWORD)
    _, lines, _ = first.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == MESSAGE
    # The per-address cap (1) counts 127.0.0.3, not HAProxy's 127.0.0.1:
    # a second client from there is refused, one from 127.0.0.4 is not.
    with socket.create_connection(
        ("127.0.0.2", balanced.pop3), 30, source_address=("127.0.0.3", 0)
    ) as refused:
        assert refused.recv(200) == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
    other = FromAddress(balanced.pop3, "127.0.0.4")
    other.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        other.pass_(PASSWORD)  # the maildrop is alice's first session's
    other.quit()
    first.quit()
    assert sorted(balanced.remotes()) == ["127.0.0.3", "127.0.0.4"], balanced.log()


def test_pop3s_passed_through_haproxy_sees_the_client(balanced: Balanced) -> None:
    context = balanced.pki.client_context()
    client = FromAddress(balanced.pop3s, "127.0.0.3", context)
    client.user("alice")
    client.pass_(PASSWORD)
    assert client.stat() == (1, len(MESSAGE))
    client.quit()
    assert balanced.remotes() == ["127.0.0.3"], balanced.log()
