"""OAuth 2.0 bearer logins (OAUTHBEARER, XOAUTH2) against a real server over
real TLS, with JWTs signed by keys made here, and curl as a real client."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers.clients import require_binary
from tests.helpers.lines import LineClient
from tests.helpers.server import ThreadServer, add_user, cli, deliver, running, write_config
from tests.helpers.tls import Pki, make_pki, tls_settings

ISSUER = "https://sso.example.org/realms/mail"
AUDIENCE = "mailslot"
MESSAGE = b"Subject: oauth\r\n\r\nsigned in with a token\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def jwks(keys: dict[str, Any]) -> str:
    entries = []
    for kid in ("rsa", "ec"):
        entry = json.loads(
            jwt.algorithms.get_default_algorithms()["RS256" if kid == "rsa" else "ES256"].to_jwk(
                keys[kid].public_key()
            )
        )
        entry["kid"] = kid
        entries.append(entry)
    return json.dumps({"keys": entries})


def token(keys: dict[str, Any], kid: str = "rsa", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 300,
        "iat": now,
        "email": "alice@example.org",
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    algorithm = "ES256" if kid == "ec" else "RS256"
    return jwt.encode(body, keys[kid], algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
def server(tmp_path: Path, pki: Pki, keys: dict[str, Any]) -> Iterator[ThreadServer]:
    key_file = tmp_path / "jwks.json"
    key_file.write_text(jwks(keys))
    settings = tls_settings(
        tmp_path / "data",
        pki,
        auth__mechanisms=["SCRAM-SHA-256", "OAUTHBEARER", "XOAUTH2"],
        auth__oauth_key=str(key_file),
        auth__oauth_issuer=ISSUER,
        auth__oauth_audience=AUDIENCE,
        auth__penalty_max_delay=0,
    )
    add_user(settings, "alice@example.org", "unused password")
    add_user(settings, "bob@example.org", "unused password")
    deliver(settings, "alice@example.org", MESSAGE)
    with running(settings) as srv:
        yield srv


class Client(LineClient):
    """A POP3S client speaking the OAuth mechanisms by hand."""

    def __init__(self, server: ThreadServer, pki: Pki) -> None:
        raw = socket.create_connection(server.addresses["pop3s"], timeout=30)
        super().__init__(pki.client_context().wrap_socket(raw, server_hostname="localhost"))
        assert self.line().startswith(b"+OK")

    def auth(self, mechanism: str, message: bytes) -> tuple[bytes, bytes | None]:
        """The final answer, and the error challenge's JSON if there was one."""
        assert self.send(b"AUTH " + mechanism.encode()) == b"+ "  # too long for an IR
        answer = self.send(base64.b64encode(message))
        if not answer.startswith(b"+ "):
            return answer, None
        error = base64.b64decode(answer[2:])
        reply = b"\x01" if mechanism == "OAUTHBEARER" else b""
        return self.send(base64.b64encode(reply)), error


def oauthbearer(tok: str, user: str = "") -> bytes:
    authzid = f"a={user}" if user else ""
    return f"n,{authzid},\x01host=localhost\x01port=995\x01auth=Bearer {tok}\x01\x01".encode()


def xoauth2(tok: str, user: str) -> bytes:
    return f"user={user}\x01auth=Bearer {tok}\x01\x01".encode()


@pytest.mark.parametrize("kid", ["rsa", "ec"])
def test_oauthbearer_and_xoauth2_log_in(
    server: ThreadServer, pki: Pki, keys: dict[str, Any], kid: str
) -> None:
    for mechanism, message in (
        ("OAUTHBEARER", oauthbearer(token(keys, kid))),
        ("OAUTHBEARER", oauthbearer(token(keys, kid), "alice@example.org")),
        ("XOAUTH2", xoauth2(token(keys, kid), "Alice@Example.org")),
    ):
        client = Client(server, pki)
        answer, error = client.auth(mechanism, message)
        assert answer == b"+OK Maildrop has 1 messages (%d octets)" % len(MESSAGE)
        assert error is None
        client.close()


def test_oauth_is_not_offered_before_tls(server: ThreadServer) -> None:
    with socket.create_connection(server.address, timeout=30) as sock:
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b"AUTH\r\n")
        listing = []
        while (line := file.readline()) != b".\r\n":
            listing.append(line.strip())
        assert b"OAUTHBEARER" not in listing and b"XOAUTH2" not in listing


def refusals(keys: dict[str, Any]) -> list[tuple[str, bytes]]:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}
    claims["email"] = "alice@example.org"
    secret = "a shared secret of thirty-two bytes!"
    hs256 = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "rsa"})
    stranger = jwt.encode(claims, keys["stranger"], algorithm="RS256", headers={"kid": "rsa"})
    unsigned = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in ({"alg": "none", "typ": "JWT"}, claims)
    )
    return [
        ("expired", oauthbearer(token(keys, exp=int(time.time()) - 120))),
        ("other audience", oauthbearer(token(keys, aud="webmail"))),
        ("other issuer", oauthbearer(token(keys, iss="https://evil.example"))),
        ("no expiry", oauthbearer(token(keys, exp=None))),
        ("HMAC-signed", oauthbearer(hs256)),
        ("unsigned", oauthbearer(unsigned + ".")),
        ("signed by another key", oauthbearer(stranger)),
        ("no such account", oauthbearer(token(keys, email="carol@example.org"))),
        ("no email claim", oauthbearer(token(keys, email=None))),
        ("someone else's token", oauthbearer(token(keys), "bob@example.org")),
        ("someone else's token", xoauth2(token(keys), "bob@example.org")),
        ("garbage", oauthbearer("not.a.jwt")),
    ]


def test_bad_tokens_are_refused_after_the_error_challenge(
    server: ThreadServer, pki: Pki, keys: dict[str, Any]
) -> None:
    for why, message in refusals(keys):
        client = Client(server, pki)
        mechanism = "XOAUTH2" if message.startswith(b"user=") else "OAUTHBEARER"
        answer, error = client.auth(mechanism, message)
        assert answer == b"-ERR [AUTH] Authentication failed", why
        assert error is not None and json.loads(error)["schemes"] == "bearer", why
        client.close()


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_curl_fetches_with_a_bearer_token(
    server: ThreadServer, pki: Pki, keys: dict[str, Any], mechanism: str
) -> None:
    curl = require_binary("curl")
    port = server.addresses["pop3s"][1]
    result = subprocess.run(
        [
            curl,
            "-sS",
            "--cacert",
            str(pki.ca_file),
            "--login-options",
            f"AUTH={mechanism}",
            "-u",
            "alice@example.org:",
            "--oauth2-bearer",
            token(keys),
            f"pop3s://localhost:{port}/1",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == MESSAGE


def test_oauth_settings_are_checked(tmp_path: Path, keys: dict[str, Any]) -> None:
    config = write_config(tmp_path / "a", auth__mechanisms=["OAUTHBEARER"])
    result = cli("check-config", "-c", str(config))
    assert result.returncode == 2 and b"auth.oauth_key" in result.stderr
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    base = {"auth__mechanisms": ["XOAUTH2"], "auth__oauth_key": str(pem)}
    config = write_config(tmp_path / "b", **base, auth__oauth_issuer=ISSUER)
    result = cli("check-config", "-c", str(config))
    assert result.returncode == 2 and b"auth.oauth_audience" in result.stderr
    good = {**base, "auth__oauth_issuer": ISSUER, "auth__oauth_audience": AUDIENCE}
    assert cli("check-config", "-c", str(write_config(tmp_path / "c", **good))).returncode == 0
    pem.write_text("not a key")
    result = cli("check-config", "-c", str(write_config(tmp_path / "d", **good)))
    assert result.returncode == 2 and b"config error: auth.oauth_key" in result.stderr
    assert b"Traceback" not in result.stderr
