"""``start``: pick a mechanism; PLAIN, LOGIN and CRAM-MD5 themselves.

SCRAM lives in ``mailslot.sasl.scram``.  Every mechanism body is a generator
that raises ``MechanismFailed`` for anything wrong with the client's input;
``start`` wraps it so the flow returns ``Failure`` instead.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Generator

from mailslot.sasl.base import (
    Failure,
    Flow,
    MechanismFailed,
    Outcome,
    Step,
    Success,
    ask,
    check_size,
    lookup_secret,
    utf8,
    verify_password,
)
from mailslot.sasl.gssapi import gssapi_flow
from mailslot.sasl.oauth import oauthbearer_flow, xoauth2_flow
from mailslot.sasl.scram import scram_flow

__all__ = ["CLEARTEXT_MECHANISMS", "MECHANISMS", "SECRET_MECHANISMS", "start"]

#: Every mechanism ``start`` runs, strongest first (the order to advertise).
MECHANISMS: tuple[str, ...] = (
    "GSSAPI",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "OAUTHBEARER",
    "XOAUTH2",
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
)
#: Mechanisms that send the password itself, or a bearer token as good as
#: one: offer them only under TLS (RFC 2595 §2.3; RFC 8314; RFC 7628 §5).
CLEARTEXT_MECHANISMS: frozenset[str] = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
#: Mechanisms that need a recoverable, password-equivalent secret stored
#: (RFC 2195 "Security Considerations"): off unless the operator enables them.
SECRET_MECHANISMS: frozenset[str] = frozenset({"CRAM-MD5"})

#: Key for deriving fake SCRAM salts of unknown users, per process unless the
#: caller passes a persistent ``server_secret`` to ``start``.
_PROCESS_SECRET = secrets.token_bytes(32)

# A CRAM-MD5 nonce goes inside an RFC 822 msg-id: no "<", ">", "@" or ",".
_CRAM_NONCE = re.compile(r"[\x21-\x2b\x2d-\x3b\x3d\x3f\x41-\x7e]+")
# The host part of the msg-id, from our own configuration.
_HOSTNAME = re.compile(r"[\x21-\x2b\x2d-\x3b\x3d\x3f\x41-\x7e]{1,255}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32}")


def _random_nonce() -> str:
    # 128 random bits as decimal: "random digits" for CRAM-MD5 (RFC 2195 §2),
    # a printable nonce for SCRAM (RFC 5802 §5.1).
    return str(secrets.randbits(128))


def start(
    mechanism: str,
    initial_response: bytes | None,
    *,
    hostname: str,
    nonce: Callable[[], str] = _random_nonce,
    clock: Callable[[], float] = time.time,
    server_secret: bytes = _PROCESS_SECRET,
    gss_context: object | None = None,
) -> Flow:
    """Start one exchange of *mechanism* (case-insensitive; see ``MECHANISMS``).

    *initial_response* is the decoded RFC 5034 initial response (``b""`` for
    ``=``), or None if the client sent none.  *hostname* goes into the
    CRAM-MD5 challenge; *nonce* and *clock* make challenges unique (inject
    them to make tests deterministic); *server_secret* keys the fake SCRAM
    salts of unknown users (pass a persistent one so that they do not change
    when the server restarts); *gss_context* is the driver's GSS-API context
    for this exchange, passed back in the GSSAPI steps (without one, GSSAPI
    fails at once).  An unknown mechanism gives a flow that fails at once.
    ``ValueError`` for an invalid *hostname* (configuration).
    """
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError("hostname is not valid in a CRAM-MD5 challenge")
    name = mechanism.upper()
    body: Generator[Step, object, Outcome] | None
    match name:
        case "PLAIN":
            body = _plain(initial_response)
        case "LOGIN":
            body = _login(initial_response)
        case "CRAM-MD5":
            body = _cram_md5(initial_response, hostname=hostname, nonce=nonce, clock=clock)
        case "GSSAPI":
            body = gssapi_flow(initial_response, gss_context)
        case "OAUTHBEARER":
            body = oauthbearer_flow(initial_response)
        case "XOAUTH2":
            body = xoauth2_flow(initial_response)
        case "SCRAM-SHA-1" | "SCRAM-SHA-256":
            body = scram_flow(
                name.removeprefix("SCRAM-"),
                initial_response,
                nonce=nonce,
                server_secret=server_secret,
            )
        case _:
            body = None
    return _run(body)


def _run(body: Generator[Step, object, Outcome] | None) -> Flow:
    if body is None:
        return Failure(reason="unsupported mechanism")
    try:
        return (yield from body)
    except MechanismFailed as exc:
        return Failure(reason=exc.reason)


# ------------------------------------------------------------------ PLAIN


def _plain(initial_response: bytes | None) -> Generator[Step, object, Outcome]:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``."""
    if initial_response is None:
        message = yield from ask(b"")
    else:
        message = check_size(initial_response)
    fields = message.split(b"\x00")
    if len(fields) != 3:
        raise MechanismFailed("malformed message")
    authzid, authcid, password = (utf8(field) for field in fields)
    if not authcid:
        raise MechanismFailed("empty authentication identity")
    if not password:
        raise MechanismFailed("empty password")
    # We do not proxy: an authzid may only name the user itself (RFC 4616 §2).
    if authzid and authzid != authcid:
        raise MechanismFailed("authorization identity not allowed")
    if not (yield from verify_password(authcid, password)):
        raise MechanismFailed("invalid credentials")
    return Success(authcid=authcid)


# ------------------------------------------------------------------ LOGIN


def _login(initial_response: bytes | None) -> Generator[Step, object, Outcome]:
    """The obsolete LOGIN mechanism (draft-murchison-sasl-login).

    Server-first, but some clients send the user name as an initial response;
    like Dovecot we take it, and an empty one means "no user name yet".
    """
    if initial_response:
        username_octets = check_size(initial_response)
    else:
        username_octets = yield from ask(b"Username:")
    password_octets = yield from ask(b"Password:")
    username = utf8(username_octets)
    password = utf8(password_octets)
    if not username:
        raise MechanismFailed("empty authentication identity")
    if not password:
        raise MechanismFailed("empty password")
    if not (yield from verify_password(username, password)):
        raise MechanismFailed("invalid credentials")
    return Success(authcid=username)


# --------------------------------------------------------------- CRAM-MD5


def _cram_md5(
    initial_response: bytes | None,
    *,
    hostname: str,
    nonce: Callable[[], str],
    clock: Callable[[], float],
) -> Generator[Step, object, Outcome]:
    """RFC 2195: HMAC-MD5 keyed with the shared secret over our challenge."""
    if initial_response is not None:
        raise MechanismFailed("unexpected initial response")
    random_part = nonce()
    if not _CRAM_NONCE.fullmatch(random_part):
        raise ValueError("the nonce function returned characters not allowed in a msg-id")
    # RFC 2195 §2: "random digits, a timestamp, and the fully-qualified
    # primary host name", in msg-id syntax; unique per exchange.
    challenge = f"<{random_part}.{int(clock()):d}@{hostname}>".encode("ascii")
    response = utf8((yield from ask(challenge)))
    username, separator, digest = response.rpartition(" ")
    if not separator or not username or not _HEX_DIGEST.fullmatch(digest):
        raise MechanismFailed("malformed message")
    key = _secret_key((yield from lookup_secret(username)))
    # An unknown user (or one with no secret stored) costs the same HMAC as
    # a known one, with a key nobody knows, and fails like a wrong digest.
    expected = hmac.new(key or secrets.token_bytes(16), challenge, "md5").hexdigest()
    if not hmac.compare_digest(expected, digest.lower()) or key is None:
        raise MechanismFailed("invalid credentials")
    return Success(authcid=username)


def _secret_key(secret: str | None) -> bytes | None:
    """The HMAC key for *secret*; None if there is no usable secret."""
    if not secret:
        return None
    try:
        return secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
