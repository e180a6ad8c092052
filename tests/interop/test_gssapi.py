"""Kerberos V5 logins (SASL GSSAPI, RFC 4752) against a real MIT KDC.

A private realm (``tests/helpers/kerberos.py``): the server's keytab holds
``pop/localhost``; clients get tickets from the KDC with ``kinit``.  The
clients are python-gssapi driving ``AUTH GSSAPI`` by hand over a real
socket (to check each step), curl (``--login-options AUTH=GSSAPI``) and
fetchmail (``auth gssapi``).
"""

from __future__ import annotations

import base64
import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import require_binary
from tests.helpers.kerberos import Realm
from tests.helpers.lines import LineClient
from tests.helpers.server import (
    ThreadServer,
    add_user,
    cli,
    deliver,
    make_settings,
    running,
    write_config,
)

pytestmark = pytest.mark.interop

MESSAGE = b"Subject: kerberos\r\n\r\nno password crossed the wire\r\n"


def _gssapi():  # the module, or a skip
    try:
        import gssapi  # noqa: PLC0415
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: the gssapi package is not installed")
        pytest.skip("the gssapi package is not installed (pip install 'mailslot[gssapi]')")
    return gssapi


@pytest.fixture(scope="module")
def realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    _gssapi()
    realm = Realm.create(tmp_path_factory.mktemp("krb"))
    realm.add_principal("pop/localhost")
    for name in ("alice", "carol", "alice/admin"):
        realm.add_principal(name)
    try:
        yield realm
    finally:
        realm.stop()


@pytest.fixture
def server(realm: Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadServer]:
    for key in ("KRB5_CONFIG", "KRB5CCNAME"):
        monkeypatch.setenv(key, realm.env[key])
    settings = make_settings(
        tmp_path / "data",
        auth__mechanisms=["GSSAPI", "SCRAM-SHA-256"],
        auth__gssapi_keytab=str(realm.keytabs["pop/localhost"]),
        auth__penalty_max_delay=0,
    )
    add_user(settings, "alice", "unused password")
    add_user(settings, "bob", "unused password")
    deliver(settings, "alice", MESSAGE)
    with running(settings) as srv:
        yield srv


class Client(LineClient):
    """A POP3 client speaking AUTH GSSAPI with python-gssapi."""

    def __init__(self, server: ThreadServer, principal: str, realm: Realm) -> None:
        realm.kinit(principal)
        super().__init__(socket.create_connection(server.address, timeout=30))
        assert self.line().startswith(b"+OK")

    def auth(self, authzid: bytes = b"", layer: int = 1) -> bytes:
        gssapi = _gssapi()
        target = gssapi.Name("pop@localhost", gssapi.NameType.hostbased_service)
        context = gssapi.SecurityContext(name=target, usage="initiate")
        first = base64.b64encode(context.step())
        if len(b"AUTH GSSAPI " + first) + 2 <= 255:
            answer = self.send(b"AUTH GSSAPI " + first)
        else:  # RFC 5034 §4: too long for an initial response
            assert self.send(b"AUTH GSSAPI") == b"+ "
            answer = self.send(first)
        while not context.complete:
            assert answer.startswith(b"+ "), answer
            token = context.step(base64.b64decode(answer[2:]))
            answer = self.send(base64.b64encode(token or b""))
        if answer.startswith(b"+ ") and not answer[2:]:
            answer = self.send(b"")  # the server's last token was empty
        assert answer.startswith(b"+ "), answer
        offer = context.unwrap(base64.b64decode(answer[2:])).message
        assert offer == b"\x01\x00\x00\x00"  # no security layer, size 0
        choice = context.wrap(bytes([layer, 0, 0, 0]) + authzid, encrypt=False).message
        return self.send(base64.b64encode(choice))


def test_capa_offers_gssapi_before_tls(server: ThreadServer, realm: Realm) -> None:
    client = Client(server, "alice", realm)
    assert client.send(b"CAPA").startswith(b"+OK")
    lines = list(iter(client.line, b"."))
    assert b"SASL GSSAPI SCRAM-SHA-256" in lines
    client.close()


@pytest.mark.parametrize("authzid", [b"", b"alice", b"alice@MAILSLOT.TEST"])
def test_kerberos_login(server: ThreadServer, realm: Realm, authzid: bytes) -> None:
    client = Client(server, "alice", realm)
    assert client.auth(authzid) == b"+OK Maildrop has 1 messages (%d octets)" % len(MESSAGE)
    assert client.send(b"STAT") == b"+OK 1 %d" % len(MESSAGE)
    client.close()


@pytest.mark.parametrize(
    ("principal", "authzid", "layer"),
    [
        ("alice", b"bob", 1),  # no proxy logins
        ("carol", b"", 1),  # a principal without a mailslot account
        ("alice/admin", b"", 1),  # an instance, not a user
        ("alice", b"", 2),  # a security layer mailslot did not offer
    ],
)
def test_kerberos_refusals(
    server: ThreadServer, realm: Realm, principal: str, authzid: bytes, layer: int
) -> None:
    client = Client(server, principal, realm)
    assert client.auth(authzid, layer) == b"-ERR [AUTH] Authentication failed"
    client.close()


def test_a_garbage_token_is_refused(server: ThreadServer, realm: Realm) -> None:
    client = Client(server, "alice", realm)
    token = base64.b64encode(b"\x60\x82not a kerberos token")
    assert client.send(b"AUTH GSSAPI " + token) == b"-ERR [AUTH] Authentication failed"
    client.close()


def test_curl_fetches_with_kerberos(server: ThreadServer, realm: Realm) -> None:
    curl = require_binary("curl")
    realm.kinit("alice")
    port = server.address[1]
    result = subprocess.run(
        [
            curl,
            "-sS",
            "--login-options",
            "AUTH=GSSAPI",
            "-u",
            "alice@MAILSLOT.TEST:",  # curl wants the realm for GSSAPI
            f"pop3://localhost:{port}/1",
        ],
        env=realm.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == MESSAGE


def test_gssapi_needs_a_usable_keytab(tmp_path: Path) -> None:
    _gssapi()
    config = write_config(tmp_path / "d", auth__mechanisms=["GSSAPI"])
    result = cli("check-config", "-c", str(config))
    assert result.returncode == 2
    assert b"auth.mechanisms: GSSAPI needs auth.gssapi_keytab" in result.stderr
    config = write_config(
        tmp_path / "e", auth__mechanisms=["GSSAPI"], auth__gssapi_keytab=str(tmp_path / "none")
    )
    result = cli("check-config", "-c", str(config))
    assert result.returncode == 2, result.stdout
    assert b"config error: auth.gssapi_keytab" in result.stderr
    assert b"Traceback" not in result.stderr


def test_fetchmail_fetches_with_kerberos(
    server: ThreadServer, realm: Realm, tmp_path: Path
) -> None:
    fetchmail = require_binary("fetchmail")
    realm.kinit("alice")
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll localhost service {server.address[1]} protocol pop3 auth gssapi timeout 60\n"
        f'  user "alice" sslproto "" no sslcertck keep no rewrite\n'
        f'  mda "cat > $(mktemp {out}/msg.XXXXXXXX)"\n'
    )
    rc.chmod(0o600)
    env = {**realm.env, "HOME": str(tmp_path), "FETCHMAILUSER": pwd.getpwuid(os.getuid()).pw_name}
    result = subprocess.run(
        [
            fetchmail,
            "-f",
            str(rc),
            "--nodetach",
            "--nosyslog",
            "-v",
            "--pidfile",
            str(tmp_path / "pid"),
        ],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    log = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert "AUTH GSSAPI" in log, log[-3000:]
    stored = [path.read_bytes() for path in out.iterdir()]
    assert len(stored) == 1
    assert stored[0].replace(b"\r\n", b"\n").endswith(MESSAGE.replace(b"\r\n", b"\n"))
