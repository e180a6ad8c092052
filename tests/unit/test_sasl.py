"""SASL mechanisms as generators: RFC examples, hand and third-party clients, fuzz."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailslot import sasl
from mailslot.sasl import (
    Challenge,
    Failure,
    Flow,
    LookupScram,
    LookupSecret,
    Outcome,
    ScramCredentials,
    Step,
    Success,
    VerifyPassword,
)

HOST = "mail.example.org"


# ----------------------------------------------------------------- helpers


def finish(flow: Flow, reply: object) -> Outcome:
    """Send the last reply and return the outcome it produces."""
    with pytest.raises(StopIteration) as stop:
        flow.send(reply)
    outcome: Outcome = stop.value.value
    return outcome


def first_step(flow: Flow) -> Step | Outcome:
    """The first step, or the outcome if the flow ends at once."""
    try:
        return next(flow)
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome


def drive(
    flow: Flow, respond: Callable[[Step], object], max_steps: int = 20
) -> tuple[list[Step], Outcome]:
    """Run *flow* to its end, answering each step with *respond*."""
    steps: list[Step] = []
    try:
        step = next(flow)
        while True:
            steps.append(step)
            assert len(steps) <= max_steps, "flow does not end"
            step = flow.send(respond(step))
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return steps, outcome


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def __call__(self) -> str:
        self.value += 1
        return str(self.value)


def start(mechanism: str, initial: bytes | None = None, **kwargs: object) -> Flow:
    return sasl.start(mechanism, initial, hostname=HOST, **kwargs)  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ general


def test_mechanisms() -> None:
    assert sasl.MECHANISMS == (
        "GSSAPI",
        "SCRAM-SHA-256",
        "SCRAM-SHA-1",
        "OAUTHBEARER",
        "XOAUTH2",
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
    )
    assert frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"}) == sasl.CLEARTEXT_MECHANISMS
    assert frozenset({"CRAM-MD5"}) == sasl.SECRET_MECHANISMS


@pytest.mark.parametrize(
    "name", ["DIGEST-MD5", "SCRAM-SHA-256-PLUS", "", "PLAIN\x00", "KERBEROS_V4"]
)
def test_unsupported_mechanism_fails_at_once(name: str) -> None:
    assert first_step(start(name, b"\x00a\x00b")) == Failure(reason="unsupported mechanism")


def test_gssapi_without_a_context_fails_at_once() -> None:
    assert first_step(start("GSSAPI", b"token")) == Failure(reason="GSSAPI is not configured")


def test_mechanism_names_are_case_insensitive() -> None:
    assert first_step(start("plain", b"\x00tim\x00pw")) == VerifyPassword(
        authcid="tim", password="pw"
    )
    assert first_step(start("Scram-Sha-1", b"n,,n=tim,r=abc")) == LookupScram(
        authcid="tim", hash_name="SHA-1"
    )


@pytest.mark.parametrize("hostname", ["", "a b", "host>", "<host", "a@b", "a,b", "x" * 256, "hôst"])
def test_invalid_hostname_is_a_configuration_error(hostname: str) -> None:
    with pytest.raises(ValueError):
        sasl.start("PLAIN", None, hostname=hostname)


def test_wrong_reply_type_is_a_driver_bug() -> None:
    flow = start("PLAIN")
    assert next(flow) == Challenge(data=b"")
    with pytest.raises(TypeError):
        flow.send("not bytes")
    flow = start("PLAIN", b"\x00tim\x00pw")
    next(flow)
    with pytest.raises(TypeError):
        flow.send(1)
    flow = start("CRAM-MD5", nonce=lambda: "1")
    next(flow)
    flow.send(b"tim " + b"0" * 32)
    with pytest.raises(TypeError):
        flow.send(b"secret")
    flow = start("SCRAM-SHA-1", b"n,,n=tim,r=abc")
    next(flow)
    with pytest.raises(TypeError):
        flow.send(("salt", 4096, b"", b""))


# -------------------------------------------------------------------- PLAIN


def test_plain_with_initial_response() -> None:
    flow = start("PLAIN", b"\x00tim\x00tanstaaf")
    assert next(flow) == VerifyPassword(authcid="tim", password="tanstaaf")
    assert finish(flow, True) == Success(authcid="tim")


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    flow = start("PLAIN")
    assert next(flow) == Challenge(data=b"")
    assert flow.send(b"tim\x00tim\x00pass word") == VerifyPassword(
        authcid="tim", password="pass word"
    )
    assert finish(flow, True) == Success(authcid="tim")


def test_plain_wrong_password() -> None:
    flow = start("PLAIN", b"\x00tim\x00wrong")
    next(flow)
    assert finish(flow, False) == Failure(reason="invalid credentials")


def test_plain_authzid_must_be_the_user() -> None:
    flow = start("PLAIN", b"admin\x00tim\x00pw")
    assert first_step(flow) == Failure(reason="authorization identity not allowed")


def test_plain_fields_of_255_octets_and_more() -> None:
    user = "u" * 255
    password = "p" * 255
    message = f"{user}\x00{user}\x00{password}".encode()
    assert first_step(start("PLAIN", message)) == VerifyPassword(authcid=user, password=password)
    long_password = "пароль " * 300  # 4200 octets
    message = b"\x00tim\x00" + long_password.encode()
    assert first_step(start("PLAIN", message)) == VerifyPassword(
        authcid="tim", password=long_password
    )


def test_plain_utf8_and_spaces_are_kept() -> None:
    flow = start("PLAIN", "\x00josé\x00 pass\tword ".encode())
    assert next(flow) == VerifyPassword(authcid="josé", password=" pass\tword ")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "malformed message"),
        (b"timpw", "malformed message"),
        (b"tim\x00pw", "malformed message"),
        (b"\x00tim\x00pw\x00", "malformed message"),
        (b"\x00\x00tim\x00pw", "malformed message"),
        (b"\x00\x00pw", "empty authentication identity"),
        (b"\x00tim\x00", "empty password"),
        (b"\x00tim\xff\x00pw", "not UTF-8"),
        (b"\x00tim\x00p\xe9", "not UTF-8"),
        (b"\xff\x00tim\x00pw", "not UTF-8"),
        (b"\x00tim\x00" + b"p" * 100_000, "response too long"),
    ],
)
def test_plain_rejects_malformed_messages(message: bytes, reason: str) -> None:
    assert first_step(start("PLAIN", message)) == Failure(reason=reason)
    flow = start("PLAIN")
    next(flow)
    assert finish(flow, message) == Failure(reason=reason)


# -------------------------------------------------------------------- LOGIN


def test_login() -> None:
    flow = start("LOGIN")
    assert next(flow) == Challenge(data=b"Username:")
    assert flow.send(b"tim") == Challenge(data=b"Password:")
    assert flow.send(b"pass word") == VerifyPassword(authcid="tim", password="pass word")
    assert finish(flow, True) == Success(authcid="tim")


def test_login_username_as_initial_response() -> None:
    flow = start("LOGIN", b"tim")
    assert next(flow) == Challenge(data=b"Password:")
    assert flow.send(b"pw") == VerifyPassword(authcid="tim", password="pw")
    assert finish(flow, False) == Failure(reason="invalid credentials")


def test_login_empty_initial_response_asks_for_the_username() -> None:
    flow = start("LOGIN", b"")
    assert next(flow) == Challenge(data=b"Username:")


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        (b"", b"pw", "empty authentication identity"),
        (b"tim", b"", "empty password"),
        (b"t\xffim", b"pw", "not UTF-8"),
        (b"tim", b"\xc3", "not UTF-8"),
        (b"tim", b"x" * 100_000, "response too long"),
    ],
)
def test_login_rejects(username: bytes, password: bytes, reason: str) -> None:
    flow = start("LOGIN")
    next(flow)
    flow.send(username)
    assert finish(flow, password) == Failure(reason=reason)


def test_login_oversized_username() -> None:
    flow = start("LOGIN")
    next(flow)
    assert finish(flow, b"u" * 100_000) == Failure(reason="response too long")
    assert first_step(start("LOGIN", b"u" * 100_000)) == Failure(reason="response too long")


# ----------------------------------------------------------------- CRAM-MD5

RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC2195_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"


def rfc2195_flow() -> Flow:
    return sasl.start(
        "CRAM-MD5",
        None,
        hostname="postoffice.reston.mci.net",
        nonce=lambda: "1896",
        clock=lambda: 697170952.7,
    )


def test_cram_md5_rfc2195_example() -> None:
    flow = rfc2195_flow()
    assert next(flow) == Challenge(data=RFC2195_CHALLENGE)
    assert flow.send(RFC2195_RESPONSE) == LookupSecret(authcid="tim")
    assert finish(flow, "tanstaaftanstaaf") == Success(authcid="tim")


def test_cram_md5_upper_case_hex_is_accepted() -> None:
    flow = rfc2195_flow()
    next(flow)
    flow.send(RFC2195_RESPONSE.upper().replace(b"TIM", b"tim"))
    assert finish(flow, "tanstaaftanstaaf") == Success(authcid="tim")


@pytest.mark.parametrize("secret", [None, "", "tanstaaftanstaafX", "TANSTAAFTANSTAAF", "\ud800"])
def test_cram_md5_wrong_or_missing_secret(secret: str | None) -> None:
    flow = rfc2195_flow()
    next(flow)
    flow.send(RFC2195_RESPONSE)
    assert finish(flow, secret) == Failure(reason="invalid credentials")


def test_cram_md5_unknown_user_costs_an_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_new = hmac.new

    def counting_new(key: bytes, msg: bytes, digestmod: str) -> hmac.HMAC:
        calls.append(digestmod)
        return real_new(key, msg, digestmod)

    monkeypatch.setattr(hmac, "new", counting_new)
    for secret in ("tanstaaftanstaaf", None):
        flow = rfc2195_flow()
        next(flow)
        flow.send(RFC2195_RESPONSE)
        finish(flow, secret)
    assert calls == ["md5", "md5"]


def test_cram_md5_challenges_are_unique() -> None:
    challenges = set()
    for _ in range(50):
        step = next(sasl.start("CRAM-MD5", None, hostname=HOST))
        assert isinstance(step, Challenge)
        assert step.data.startswith(b"<") and step.data.endswith(b"@" + HOST.encode() + b">")
        challenges.add(step.data)
    assert len(challenges) == 50
    counter = Counter()
    first = next(sasl.start("CRAM-MD5", None, hostname=HOST, nonce=counter, clock=lambda: 5.0))
    second = next(sasl.start("CRAM-MD5", None, hostname=HOST, nonce=counter, clock=lambda: 5.0))
    assert first == Challenge(data=b"<1.5@mail.example.org>")
    assert second == Challenge(data=b"<2.5@mail.example.org>")


def test_cram_md5_refuses_an_initial_response() -> None:
    assert first_step(start("CRAM-MD5", b"tim")) == Failure(reason="unexpected initial response")
    assert first_step(start("CRAM-MD5", b"")) == Failure(reason="unexpected initial response")


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"", "malformed message"),
        (b"tim", "malformed message"),
        (b"b913a602c7eda7a495b4e6e7334d3890", "malformed message"),
        (b" b913a602c7eda7a495b4e6e7334d3890", "malformed message"),
        (b"tim b913a602c7eda7a495b4e6e7334d389", "malformed message"),
        (b"tim b913a602c7eda7a495b4e6e7334d38900", "malformed message"),
        (b"tim g913a602c7eda7a495b4e6e7334d3890", "malformed message"),
        (b"tim b913a602c7eda7a495b4e6e7334d3890 ", "malformed message"),
        (b"t\xffm b913a602c7eda7a495b4e6e7334d3890", "not UTF-8"),
        (b"t" * 100_000 + b" b913a602c7eda7a495b4e6e7334d3890", "response too long"),
    ],
)
def test_cram_md5_rejects_malformed_responses(response: bytes, reason: str) -> None:
    flow = rfc2195_flow()
    next(flow)
    assert finish(flow, response) == Failure(reason=reason)


def test_cram_md5_user_names_with_spaces() -> None:
    challenge = b"<1.2@h>"
    digest = hmac.new(b"secret", challenge, "md5").hexdigest()
    flow = sasl.start("CRAM-MD5", None, hostname="h", nonce=lambda: "1", clock=lambda: 2)
    next(flow)
    assert flow.send(f"tim smith {digest}".encode()) == LookupSecret(authcid="tim smith")
    assert finish(flow, "secret") == Success(authcid="tim smith")


def test_cram_md5_bad_injected_nonce_is_a_driver_bug() -> None:
    with pytest.raises(ValueError):
        next(start("CRAM-MD5", nonce=lambda: "a>b"))


# -------------------------------------------------------------------- SCRAM


@dataclass
class ScramClient:
    """A SCRAM client from the RFC 5802 §3 formulas, with hashlib and hmac only."""

    hash_name: str
    user: str
    password: str
    client_nonce: str = "rOprNGfwEbeRWgbNEkqO"
    gs2_header: str = "n,,"
    server_signature: bytes = field(default=b"", init=False)
    bare: str = field(default="", init=False)

    @property
    def digest(self) -> str:
        return {"SHA-1": "sha1", "SHA-256": "sha256"}[self.hash_name]

    def first(self) -> bytes:
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        self.bare = f"n={name},r={self.client_nonce}"
        return (self.gs2_header + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        assert attrs["r"].startswith(self.client_nonce)
        assert len(attrs["r"]) > len(self.client_nonce)
        salted = hashlib.pbkdf2_hmac(
            self.digest, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", self.digest).digest()
        stored_key = hashlib.new(self.digest, client_key).digest()
        server_key = hmac.new(salted, b"Server Key", self.digest).digest()
        without_proof = f"c={b64(self.gs2_header.encode())},r={attrs['r']}"
        auth_message = f"{self.bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.digest).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = hmac.new(server_key, auth_message, self.digest).digest()
        return f"{without_proof},p={b64(proof)}".encode()

    def verify_server(self, server_final: bytes) -> bool:
        return server_final == b"v=" + base64.b64encode(self.server_signature)


HASHES = [("SCRAM-SHA-1", "SHA-1"), ("SCRAM-SHA-256", "SHA-256")]


@pytest.fixture(scope="module")
def pencil() -> dict[str, ScramCredentials]:
    return {name: sasl.scram_credentials("pencil", name) for name in ("SHA-1", "SHA-256")}


def test_scram_sha_1_rfc5802_example() -> None:
    # RFC 5802 §5: user "user", password "pencil".
    credentials = sasl.scram_credentials(
        "pencil", "SHA-1", salt=base64.b64decode("QSXCR+Q6sek8bf92")
    )
    flow = start(
        "SCRAM-SHA-1", b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", nonce=lambda: "3rfcNHYJY1ZVvWVs7j"
    )
    assert next(flow) == LookupScram(authcid="user", hash_name="SHA-1")
    assert flow.send(credentials) == Challenge(
        data=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert flow.send(
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    ) == Challenge(data=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    assert finish(flow, b"") == Success(authcid="user")


def test_scram_sha_256_rfc7677_example() -> None:
    # RFC 7677 §3: user "user", password "pencil".
    credentials = sasl.scram_credentials(
        "pencil", "SHA-256", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    )
    flow = start(
        "SCRAM-SHA-256",
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        nonce=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    )
    assert next(flow) == LookupScram(authcid="user", hash_name="SHA-256")
    assert flow.send(credentials) == Challenge(
        data=b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert flow.send(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ) == Challenge(data=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert finish(flow, b"") == Success(authcid="user")


def test_scram_credentials_match_dovecot() -> None:
    # doveadm pw -s SCRAM-SHA-256 -p pencil:
    # {SCRAM-SHA-256}4096,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,
    # RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=
    credentials = sasl.scram_credentials(
        "pencil", "SHA-256", salt=base64.b64decode("xi9wzNGJoiykMy1fRcduJw==")
    )
    assert credentials == ScramCredentials(
        salt=base64.b64decode("xi9wzNGJoiykMy1fRcduJw=="),
        iterations=4096,
        stored_key=base64.b64decode("qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds="),
        server_key=base64.b64decode("RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws="),
    )
    # doveadm pw -s SCRAM-SHA-1 -p pencil
    credentials = sasl.scram_credentials(
        "pencil", "SHA-1", salt=base64.b64decode("Rt0BHiVgCu9eErV0w8v1eg==")
    )
    assert b64(credentials.stored_key) == "mQUcEaa8JoA9+ngL81u0UkqJ5bo="
    assert b64(credentials.server_key) == "i7BQ1zuxtNSFZCg3hyAP0zmU+U4="


def run_scram(
    mechanism: str,
    client: ScramClient,
    credentials: ScramCredentials | None,
    *,
    initial: bool = True,
    **kwargs: object,
) -> tuple[Outcome, bool]:
    """A whole exchange; returns the outcome and whether the client trusted the server."""
    flow = start(mechanism, client.first() if initial else None, **kwargs)
    step = next(flow)
    if not initial:
        assert step == Challenge(data=b"")
        step = flow.send(client.first())
    assert step == LookupScram(authcid=client.user, hash_name=mechanism.removeprefix("SCRAM-"))
    step = flow.send(credentials)
    assert isinstance(step, Challenge)
    try:
        step = flow.send(client.final(step.data))
    except StopIteration as stop:
        return stop.value, False
    assert isinstance(step, Challenge)
    trusted = client.verify_server(step.data)
    return finish(flow, b""), trusted


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
@pytest.mark.parametrize("initial", [True, False])
def test_scram_full_exchange(
    mechanism: str, hash_name: str, initial: bool, pencil: dict[str, ScramCredentials]
) -> None:
    client = ScramClient(hash_name, "user", "pencil")
    outcome, trusted = run_scram(mechanism, client, pencil[hash_name], initial=initial)
    assert outcome == Success(authcid="user")
    assert trusted


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_with_scramp_client(mechanism: str, hash_name: str) -> None:
    scramp = pytest.importorskip("scramp")
    credentials = sasl.scram_credentials("pencil", hash_name, iterations=5000)
    client = scramp.ScramClient([mechanism], "user@example.com", "pencil")
    flow = start(mechanism, client.get_client_first().encode())
    assert next(flow) == LookupScram(authcid="user@example.com", hash_name=hash_name)
    step = flow.send(credentials)
    assert isinstance(step, Challenge)
    assert b",i=5000" in step.data
    client.set_server_first(step.data.decode())
    step = flow.send(client.get_client_final().encode())
    assert isinstance(step, Challenge)
    client.set_server_final(step.data.decode())  # raises if the signature is wrong
    assert finish(flow, b"") == Success(authcid="user@example.com")


def test_scram_saslprep_password_works_with_scramp_client() -> None:
    scramp = pytest.importorskip("scramp")
    # RFC 4013 §3: U+00AD maps to nothing, U+2168 (ROMAN NUMERAL NINE) to "IX".
    credentials = sasl.scram_credentials("I\u00adX\u2168", "SHA-256")
    client = scramp.ScramClient(["SCRAM-SHA-256"], "user", "IXIX")
    flow = start("SCRAM-SHA-256", client.get_client_first().encode())
    next(flow)
    step = flow.send(credentials)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = flow.send(client.get_client_final().encode())
    assert isinstance(step, Challenge)
    client.set_server_final(step.data.decode())
    assert finish(flow, b"") == Success(authcid="user")


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_wrong_password(
    mechanism: str, hash_name: str, pencil: dict[str, ScramCredentials]
) -> None:
    client = ScramClient(hash_name, "user", "pencil2")
    outcome, trusted = run_scram(mechanism, client, pencil[hash_name])
    assert outcome == Failure(reason="invalid credentials")
    assert not trusted


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_unknown_user_looks_like_a_wrong_password(mechanism: str, hash_name: str) -> None:
    secret = b"k" * 32
    client = ScramClient(hash_name, "ghost", "pencil")
    outcome, _ = run_scram(mechanism, client, None, server_secret=secret)
    assert outcome == Failure(reason="invalid credentials")

    def server_first(user: str, key: bytes) -> bytes:
        flow = start(
            mechanism, f"n,,n={user},r=abc".encode(), nonce=lambda: "xyz", server_secret=key
        )
        next(flow)
        step = flow.send(None)
        assert isinstance(step, Challenge)
        return step.data

    # The salt is stable for one user, differs between users, and the
    # iteration count is the default one.
    assert server_first("ghost", secret) == server_first("ghost", secret)
    assert server_first("ghost", secret) != server_first("ghost2", secret)
    assert server_first("ghost", secret) != server_first("ghost", b"other")
    attrs = dict(p.split("=", 1) for p in server_first("ghost", secret).decode().split(","))
    assert attrs["i"] == "4096"
    assert len(base64.b64decode(attrs["s"])) == 16


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_tampered_final_message(
    mechanism: str, hash_name: str, pencil: dict[str, ScramCredentials]
) -> None:
    def exchange(tamper: Callable[[bytes], bytes]) -> Outcome:
        client = ScramClient(hash_name, "user", "pencil")
        flow = start(mechanism, client.first())
        next(flow)
        step = flow.send(pencil[hash_name])
        assert isinstance(step, Challenge)
        return finish(flow, tamper(client.final(step.data)))

    def replace_attr(key: str, change: Callable[[str], str]) -> Callable[[bytes], bytes]:
        def tamper(final: bytes) -> bytes:
            parts = final.decode().split(",")
            return ",".join(
                f"{key}={change(p[2:])}" if p.startswith(f"{key}=") else p for p in parts
            ).encode()

        return tamper

    def flip_proof(value: str) -> str:
        proof = bytearray(base64.b64decode(value))
        proof[0] ^= 1
        return b64(bytes(proof))

    # The nonce: ours changed, the client's changed, or only the client's part.
    assert exchange(
        replace_attr("r", lambda r: r[:-1] + ("A" if r[-1] != "A" else "B"))
    ) == Failure(reason="nonce mismatch")
    assert exchange(replace_attr("r", lambda r: "X" + r[1:])) == Failure(reason="nonce mismatch")
    assert exchange(replace_attr("r", lambda r: r.split("=")[0][:20])) == Failure(
        reason="nonce mismatch"
    )
    assert exchange(replace_attr("r", lambda r: r + "more")) == Failure(reason="nonce mismatch")
    assert exchange(replace_attr("p", flip_proof)) == Failure(reason="invalid credentials")
    assert exchange(replace_attr("p", lambda p: b64(base64.b64decode(p)[:-1]))) == Failure(
        reason="malformed message"
    )
    assert exchange(replace_attr("p", lambda p: p + "!")) == Failure(reason="malformed message")
    assert exchange(replace_attr("c", lambda c: b64(b"y,,"))) == Failure(
        reason="channel binding data mismatch"
    )
    assert exchange(replace_attr("c", lambda c: "%%%")) == Failure(reason="malformed message")


def test_scram_channel_binding_flags(pencil: dict[str, ScramCredentials]) -> None:
    # p=: the client insists on channel binding, which we do not offer.
    flow = start("SCRAM-SHA-256", b"p=tls-unique,,n=user,r=abc")
    assert first_step(flow) == Failure(reason="channel binding not supported")
    flow = start("SCRAM-SHA-256", b"p=tls-exporter,,n=user,r=abc")
    assert first_step(flow) == Failure(reason="channel binding not supported")
    # y: the client could bind but believes we cannot.  Right, since no
    # -PLUS is offered; the gs2 header goes into c= as sent.
    client = ScramClient("SHA-256", "user", "pencil", gs2_header="y,,")
    outcome, trusted = run_scram("SCRAM-SHA-256", client, pencil["SHA-256"])
    assert outcome == Success(authcid="user")
    assert trusted
    for flag in (b"x", b"", b"N", b"yy", b"n=x"):
        assert first_step(start("SCRAM-SHA-256", flag + b",,n=user,r=abc")) == Failure(
            reason="malformed message"
        )


def test_scram_authzid(pencil: dict[str, ScramCredentials]) -> None:
    client = ScramClient("SHA-256", "user", "pencil", gs2_header="n,a=user,")
    outcome, _ = run_scram("SCRAM-SHA-256", client, pencil["SHA-256"])
    assert outcome == Success(authcid="user")
    flow = start("SCRAM-SHA-256", b"n,a=admin,n=user,r=abc")
    assert first_step(flow) == Failure(reason="authorization identity not allowed")
    flow = start("SCRAM-SHA-256", b"n,b=user,n=user,r=abc")
    assert first_step(flow) == Failure(reason="malformed message")


def test_scram_escaped_user_names(pencil: dict[str, ScramCredentials]) -> None:
    client = ScramClient("SHA-1", "a,b=c", "pencil")
    assert client.first() == b"n,,n=a=2Cb=3Dc,r=rOprNGfwEbeRWgbNEkqO"
    outcome, _ = run_scram("SCRAM-SHA-1", client, pencil["SHA-1"])
    assert outcome == Success(authcid="a,b=c")
    for name in (b"a=41", b"a=", b"a=2", b"=", b"a\x00b", b""):
        assert first_step(start("SCRAM-SHA-1", b"n,,n=" + name + b",r=abc")) == Failure(
            reason="malformed message"
        )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"n,,m=ext,n=user,r=abc", "mandatory extension not supported"),
        (b"n,,n=user", "malformed message"),
        (b"n,,r=abc,n=user", "malformed message"),
        (b"n,,n=user,r=", "malformed message"),
        (b"n,,n=user,r=a\x7fb", "malformed message"),
        (b"n,,n=user,r=abc,", "malformed message"),
        (b"n,,n=user,r=abc,1=x", "malformed message"),
        (b"n,,n=us\xffer,r=abc", "not UTF-8"),
        (b"n,,n=user,r=" + b"a" * 100_000, "response too long"),
        (b"", "malformed message"),
        (b"n,,", "malformed message"),
    ],
)
def test_scram_rejects_bad_client_first(message: bytes, reason: str) -> None:
    assert first_step(start("SCRAM-SHA-256", message)) == Failure(reason=reason)


def test_scram_extensions_are_ignored(pencil: dict[str, ScramCredentials]) -> None:
    flow = start("SCRAM-SHA-256", b"n,,n=user,r=abc,x=future")
    assert next(flow) == LookupScram(authcid="user", hash_name="SHA-256")


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_truncated_messages_fail(
    mechanism: str, hash_name: str, pencil: dict[str, ScramCredentials]
) -> None:
    client = ScramClient(hash_name, "user", "pencil")
    first = client.first()
    server_nonce = "S" * 24
    flow = start(mechanism, first, nonce=lambda: server_nonce)
    next(flow)
    step = flow.send(pencil[hash_name])
    assert isinstance(step, Challenge)
    final = client.final(step.data)
    for cut in range(len(first)):
        flow = start(mechanism, first[:cut], nonce=lambda: server_nonce)
        result = first_step(flow)
        # A prefix may still name a user and carry a (shorter) nonce; the
        # final message then fails.
        if isinstance(result, LookupScram):
            assert isinstance(flow.send(pencil[hash_name]), Challenge)
            result = finish(flow, final)
        assert isinstance(result, Failure)
    for cut in range(len(final)):
        flow = start(mechanism, first, nonce=lambda: server_nonce)
        next(flow)
        flow.send(pencil[hash_name])
        assert isinstance(finish(flow, final[:cut]), Failure)


def test_scram_server_final_must_get_an_empty_reply(pencil: dict[str, ScramCredentials]) -> None:
    client = ScramClient("SHA-256", "user", "pencil")
    flow = start("SCRAM-SHA-256", client.first())
    next(flow)
    step = flow.send(pencil["SHA-256"])
    assert isinstance(step, Challenge)
    step = flow.send(client.final(step.data))
    assert isinstance(step, Challenge)
    assert finish(flow, b"=") == Failure(reason="unexpected data after the server-final message")


def test_scram_refuses_weak_or_malformed_stored_credentials(
    pencil: dict[str, ScramCredentials],
) -> None:
    good = pencil["SHA-256"]
    cases = [
        (
            ScramCredentials(
                salt=good.salt,
                iterations=4095,
                stored_key=good.stored_key,
                server_key=good.server_key,
            ),
            "stored SCRAM iteration count too low",
        ),
        (
            ScramCredentials(
                salt=good.salt, iterations=1, stored_key=good.stored_key, server_key=good.server_key
            ),
            "stored SCRAM iteration count too low",
        ),
        (
            ScramCredentials(
                salt=b"", iterations=4096, stored_key=good.stored_key, server_key=good.server_key
            ),
            "stored SCRAM credentials malformed",
        ),
        (pencil["SHA-1"], "stored SCRAM credentials malformed"),  # 20-octet keys for SHA-256
    ]
    for credentials, reason in cases:
        flow = start("SCRAM-SHA-256", b"n,,n=user,r=abc")
        next(flow)
        assert finish(flow, credentials) == Failure(reason=reason)


def test_scram_server_nonce_is_random() -> None:
    nonces = set()
    for _ in range(20):
        flow = start("SCRAM-SHA-1", b"n,,n=user,r=abc")
        next(flow)
        step = flow.send(None)
        assert isinstance(step, Challenge)
        nonce = step.data.decode().split(",")[0][2:]
        assert nonce.startswith("abc") and len(nonce) > 3 + 20
        nonces.add(nonce)
    assert len(nonces) == 20


def test_scram_bad_injected_nonce_is_a_driver_bug() -> None:
    flow = start("SCRAM-SHA-1", b"n,,n=user,r=abc", nonce=lambda: "a,b")
    next(flow)
    with pytest.raises(ValueError):
        flow.send(None)


# ------------------------------------------------------- scram_credentials


def test_scram_credentials_shape() -> None:
    one = sasl.scram_credentials("pw", "SHA-1")
    two = sasl.scram_credentials("pw", "SHA-256", iterations=10_000)
    assert (len(one.salt), one.iterations, len(one.stored_key), len(one.server_key)) == (
        16,
        4096,
        20,
        20,
    )
    assert (len(two.salt), two.iterations, len(two.stored_key), len(two.server_key)) == (
        16,
        10_000,
        32,
        32,
    )
    assert sasl.scram_credentials("pw", "SHA-1").salt != one.salt


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hash_name": "SHA-512"},
        {"hash_name": "sha-256"},
        {"hash_name": "SHA-256", "iterations": 4095},
        {"hash_name": "SHA-256", "salt": b""},
    ],
)
def test_scram_credentials_refuse(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sasl.scram_credentials("pw", **kwargs)  # type: ignore[arg-type]


def test_scram_credentials_saslprep_and_raw_fallback() -> None:
    salt = b"s" * 16
    same = sasl.scram_credentials("IX", "SHA-256", salt=salt)
    assert sasl.scram_credentials("I\u00adX", "SHA-256", salt=salt) == same
    assert sasl.scram_credentials("\u2168", "SHA-256", salt=salt) == same
    assert sasl.scram_credentials("I\u00a0X", "SHA-256", salt=salt) == sasl.scram_credentials(
        "I X", "SHA-256", salt=salt
    )
    # SASLprep refuses control characters: the raw octets are used instead.
    raw = hashlib.pbkdf2_hmac("sha256", b"tab\there", salt, 4096)
    expected = hmac.new(raw, b"Server Key", "sha256").digest()
    assert sasl.scram_credentials("tab\there", "SHA-256", salt=salt).server_key == expected
    # A surrogateescape'd octet survives as that octet.
    raw = hashlib.pbkdf2_hmac("sha256", b"bad\xff", salt, 4096)
    expected = hmac.new(raw, b"Server Key", "sha256").digest()
    assert sasl.scram_credentials("bad\udcff", "SHA-256", salt=salt).server_key == expected
    with pytest.raises(ValueError):
        sasl.scram_credentials("\ud800", "SHA-256")


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("I\u00adX", "IX"),  # RFC 4013 §3 examples
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("", ""),
        ("\u0627\u0628", "\u0627\u0628"),
    ],
)
def test_saslprep(text: str, prepared: str) -> None:
    assert sasl.saslprep(text) == prepared


@pytest.mark.parametrize(
    "text", ["\u0007", "\u0627\u0031", "a\u0627", "\u0627a\u0628", "\ue000", "\U000e0001"]
)
def test_saslprep_prohibited(text: str) -> None:
    with pytest.raises(ValueError):
        sasl.saslprep(text)


# --------------------------------------------------------------------- fuzz

CREDENTIALS = sasl.scram_credentials("pencil", "SHA-256", salt=b"0123456789abcdef")
CREDENTIALS_SHA1 = sasl.scram_credentials("pencil", "SHA-1", salt=b"0123456789abcdef")

client_messages = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"\x00",
            b"\x00a\x00b",
            b"n,,n=user,r=abc",
            b"y,,n=user,r=abc",
            b"c=biws,r=abc,p=AAAA",
            b"tim b913a602c7eda7a495b4e6e7334d3890",
            b"\xff\xfe",
            b"x" * (sasl.MAX_RESPONSE_OCTETS + 1),
            b"x" * 100_000,
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mechanism=st.sampled_from(sasl.MECHANISMS),
    initial=st.one_of(st.none(), client_messages),
    data=st.data(),
)
def test_fuzz_flows_only_yield_steps_and_end_in_an_outcome(
    mechanism: str, initial: bytes | None, data: st.DataObject
) -> None:
    def respond(step: Step) -> object:
        match step:
            case Challenge():
                return data.draw(client_messages)
            case VerifyPassword():
                return data.draw(st.booleans())
            case LookupSecret():
                return data.draw(st.sampled_from([None, "", "tanstaaftanstaaf"]))
            case LookupScram(hash_name=hash_name):
                good = CREDENTIALS if hash_name == "SHA-256" else CREDENTIALS_SHA1
                return data.draw(st.sampled_from([None, good, CREDENTIALS_SHA1]))
        raise AssertionError(step)

    steps, outcome = drive(start(mechanism, initial), respond)
    assert all(
        isinstance(s, Challenge | VerifyPassword | LookupSecret | LookupScram) for s in steps
    )
    assert isinstance(outcome, Success | Failure)
    if isinstance(outcome, Failure):
        # Reasons are fixed texts: never the client's input.
        assert len(outcome.reason) < 60
        assert outcome.reason.isascii()
    else:
        # Only PLAIN and LOGIN can succeed against random input (with a
        # "True" password check); SCRAM and CRAM-MD5 cannot.
        assert mechanism in ("PLAIN", "LOGIN")


def mutations(message: bytes) -> Iterator[bytes]:
    """Single-octet changes, deletions and truncations of *message*."""
    for i in range(len(message)):
        yield message[:i]
        yield message[:i] + message[i + 1 :]
        for octet in (0x00, 0x2C, 0x3D, 0x80, 0xFF):
            if message[i] != octet:
                yield message[:i] + bytes([octet]) + message[i + 1 :]


@pytest.mark.parametrize(("mechanism", "hash_name"), HASHES)
def test_scram_mutated_messages_never_raise_or_succeed(mechanism: str, hash_name: str) -> None:
    credentials = CREDENTIALS if hash_name == "SHA-256" else CREDENTIALS_SHA1
    client = ScramClient(hash_name, "user", "pencil")
    first = client.first()
    server_nonce = "S" * 24
    flow = start(mechanism, first, nonce=lambda: server_nonce)
    next(flow)
    step = flow.send(credentials)
    assert isinstance(step, Challenge)
    final = client.final(step.data)
    for bad_first in mutations(first):
        # A changed first message changes the AuthMessage: the proof is wrong.
        _, outcome = drive(
            start(mechanism, bad_first, nonce=lambda: server_nonce),
            lambda s: credentials if isinstance(s, LookupScram) else final,
        )
        assert isinstance(outcome, Failure)
    for bad_final in mutations(final):
        replies = iter([credentials, bad_final, b""])
        _, outcome = drive(
            start(mechanism, first, nonce=lambda: server_nonce),
            lambda s, replies=replies: next(replies),  # type: ignore[misc]
        )
        assert isinstance(outcome, Failure)


# ------------------------------------------------------------------- GSSAPI
# The GSS-API calls are the driver's (tests/integration/test_gssapi.py runs
# them against a real KDC); here a scripted driver checks the sequencing.


class ScriptedGss:
    """Answers GSSAPI steps: ``rounds`` AP exchanges, "wrapping" by prefix."""

    def __init__(self, rounds: int = 1, last_token: bytes = b"ap-rep") -> None:
        self.rounds = rounds
        self.last_token = last_token
        self.client_choice = bytes([1, 0, 0, 0])
        self.seen: list[bytes] = []

    def __call__(self, step: Step) -> object:
        match step:
            case sasl.GssAccept(context=context, token=token):
                assert context is self
                self.seen.append(token)
                if token == b"bad":
                    return None
                if len(self.seen) < self.rounds:
                    return sasl.GssResult(token=b"more", complete=False)
                return sasl.GssResult(
                    token=self.last_token, complete=True, principal="tim@EXAMPLE.ORG"
                )
            case sasl.GssWrap(data=data):
                return b"W" + data
            case sasl.GssUnwrap(data=data):
                return data[1:] if data.startswith(b"W") else None
            case sasl.MapPrincipal(principal="tim@EXAMPLE.ORG", authzid=authzid):
                return "tim" if authzid in ("", "tim") else None
            case Challenge(data=b"ap-rep"):
                return b""
            case Challenge(data=data) if data.startswith(b"W"):
                return b"W" + self.client_choice
            case Challenge(data=b"more"):
                return b"token-2"
            case Challenge(data=b""):
                return b"token-1"
        raise AssertionError(step)


def test_gssapi_kerberos_exchange() -> None:
    gss = ScriptedGss()
    steps, outcome = drive(start("GSSAPI", b"ap-req", gss_context=gss), gss)
    assert outcome == Success(authcid="tim")
    assert [type(step).__name__ for step in steps] == [
        "GssAccept",
        "Challenge",  # the AP-REP, answered with nothing
        "GssWrap",
        "Challenge",  # the wrapped offer: no security layer, size 0
        "GssUnwrap",
        "MapPrincipal",
    ]
    assert steps[3] == Challenge(data=b"W\x01\x00\x00\x00")
    assert gss.seen == [b"ap-req"]


def test_gssapi_without_initial_response_and_several_rounds() -> None:
    gss = ScriptedGss(rounds=2, last_token=b"")
    steps, outcome = drive(start("GSSAPI", gss_context=gss), gss)
    assert outcome == Success(authcid="tim")
    assert steps[0] == Challenge(data=b"")
    assert gss.seen == [b"token-1", b"token-2"]
    # No last output token: no empty round trip before the offer.
    assert [type(s).__name__ for s in steps[4:]] == [
        "GssWrap",
        "Challenge",
        "GssUnwrap",
        "MapPrincipal",
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"token": b"bad"}, "GSS-API token refused"),
        ({"choice": bytes([2, 0, 16, 0])}, "security layer not offered"),
        ({"choice": bytes([1, 0, 0])}, "malformed message"),
        ({"choice": bytes([1, 0, 0, 0]) + b"root"}, "principal not allowed"),
        ({"choice": bytes([1, 0, 0, 0]) + b"\xff"}, "not UTF-8"),
        ({"rounds": 9}, "too many GSS-API rounds"),
        ({"unwrap": b"X1234"}, "malformed message"),
        ({"after_last": b"extra"}, "unexpected data after the last token"),
    ],
)
def test_gssapi_failures(change: dict[str, object], reason: str) -> None:
    gss = ScriptedGss(rounds=int(change.get("rounds", 1)))  # type: ignore[call-overload]
    gss.client_choice = change.get("choice", gss.client_choice)  # type: ignore[assignment]

    def respond(step: Step) -> object:
        if "unwrap" in change and isinstance(step, Challenge) and step.data.startswith(b"W"):
            return change["unwrap"]
        if "after_last" in change and step == Challenge(data=b"ap-rep"):
            return change["after_last"]
        return gss(step)

    _, outcome = drive(start("GSSAPI", change.get("token", b"ap-req"), gss_context=gss), respond)  # type: ignore[arg-type]
    assert outcome == Failure(reason=reason)


def test_gssapi_wrong_reply_types_are_driver_bugs() -> None:
    flow = start("GSSAPI", b"ap-req", gss_context=object())
    assert isinstance(next(flow), sasl.GssAccept)
    with pytest.raises(TypeError):
        flow.send(b"not a GssResult")


# -------------------------------------------------------- OAUTHBEARER, XOAUTH2
# Token checks are the driver's (tests/integration/test_oauth.py signs real
# JWTs); here the message formats and the error exchanges.


def bearer_driver(good: str = "tok3n") -> Callable[[Step], object]:
    def respond(step: Step) -> object:
        match step:
            case sasl.VerifyBearer(token=token, user=user):
                return "tim" if token == good and user in ("", "tim") else None
            case Challenge():
                return b"\x01"
        raise AssertionError(step)

    return respond


@pytest.mark.parametrize(
    "message",
    [
        b"n,a=tim,\x01host=mail.example\x01port=110\x01auth=Bearer tok3n\x01\x01",
        b"n,,\x01auth=Bearer tok3n\x01\x01",
        b"y,,\x01auth=bearer tok3n\x01\x01",
    ],
)
def test_oauthbearer(message: bytes) -> None:
    steps, outcome = drive(start("OAUTHBEARER", message), bearer_driver())
    assert outcome == Success(authcid="tim")
    assert steps == [sasl.VerifyBearer(token="tok3n", user="tim" if b"a=tim" in message else "")]


def test_oauthbearer_escaped_authzid_and_no_initial_response() -> None:
    flow = start("OAUTHBEARER")
    assert next(flow) == Challenge(data=b"")
    step = flow.send(b"n,a=t=2Ci=3Dm,\x01auth=Bearer x\x01\x01")
    assert step == sasl.VerifyBearer(token="x", user="t,i=m")


def test_oauthbearer_bad_token_gets_the_error_challenge_first() -> None:
    message = b"n,,\x01auth=Bearer wrong\x01\x01"
    steps, outcome = drive(start("OAUTHBEARER", message), bearer_driver())
    assert outcome == Failure(reason="invalid token")
    assert steps[-1] == Challenge(data=b'{"status": "invalid_token", "schemes": "bearer"}')


@pytest.mark.parametrize(
    ("mechanism", "message", "reason"),
    [
        ("OAUTHBEARER", b"n,,\x01auth=Bearer x\x01", "malformed message"),
        ("OAUTHBEARER", b"p=tls-unique,,\x01auth=Bearer x\x01\x01", "malformed message"),
        ("OAUTHBEARER", b"n,b=tim,\x01auth=Bearer x\x01\x01", "malformed message"),
        ("OAUTHBEARER", b"n,,\x01host=x\x01\x01", "no auth= field"),
        ("OAUTHBEARER", b"n,,\x01auth=Basic dGltOnB3\x01\x01", "not a bearer token"),
        ("OAUTHBEARER", b"n,,\x01auth=Bearer \x01\x01", "not a bearer token"),
        ("OAUTHBEARER", b"n,,\x01auth=Bearer \xff\x01\x01", "not UTF-8"),
        ("XOAUTH2", b"auth=Bearer x\x01\x01", "malformed message"),
        ("XOAUTH2", b"user=tim\x01auth=Bearer x", "malformed message"),
    ],
)
def test_oauth_malformed_messages(mechanism: str, message: bytes, reason: str) -> None:
    assert first_step(start(mechanism, message)) == Failure(reason=reason)


def test_xoauth2() -> None:
    message = b"user=tim\x01auth=Bearer tok3n\x01\x01"
    steps, outcome = drive(start("XOAUTH2", message), bearer_driver())
    assert outcome == Success(authcid="tim")
    assert steps == [sasl.VerifyBearer(token="tok3n", user="tim")]
    steps, outcome = drive(start("XOAUTH2", b"user=tim\x01auth=Bearer no\x01\x01"), bearer_driver())
    assert outcome == Failure(reason="invalid token")
    assert steps[-1] == Challenge(data=b'{"status": "401", "schemes": "bearer"}')


def test_verify_bearer_reply_type_is_checked() -> None:
    flow = start("XOAUTH2", b"user=tim\x01auth=Bearer x\x01\x01")
    next(flow)
    with pytest.raises(TypeError):
        flow.send(42)
