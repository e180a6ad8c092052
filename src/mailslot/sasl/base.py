"""The values a SASL flow yields and returns, and the helpers every mechanism uses.

A flow is a generator (``Flow``).  Each value it yields is a ``Step``: a
``Challenge`` for the client, or a question for the world (``VerifyPassword``,
``LookupSecret``, ``LookupScram``).  The driver answers each step by sending
the reply into the generator:

=================  ==========================================================
step               reply the driver sends back
=================  ==========================================================
``Challenge``      the client's decoded response, ``bytes``
``VerifyPassword`` ``bool``: the password is right for ``authcid``
``LookupSecret``   ``str | None``: the recoverable secret, None if unknown
``LookupScram``    ``ScramCredentials | None``: None if unknown
``GssAccept``      ``GssResult | None``: None if the token was refused
``GssWrap``        ``bytes``: the wrapped message
``GssUnwrap``      ``bytes | None``: None if it does not unwrap
``MapPrincipal``   ``str | None``: the login name, None if not allowed
``VerifyBearer``   ``str | None``: the login the token is good for, or None
=================  ==========================================================

The ``Gss*`` steps carry ``context``, an opaque per-exchange object the
driver passed to ``start``: the GSS-API security context lives with the
driver, which has the keytab; the mechanism only sequences the exchange.

The flow ends by returning an ``Outcome`` (``StopIteration.value``):
``Success(authcid=...)`` or ``Failure(reason=...)``.  Client input can only
ever lead to a ``Failure``; a reply of the wrong type is a driver bug and
raises ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "MAX_RESPONSE_OCTETS",
    "Challenge",
    "Failure",
    "Flow",
    "GssAccept",
    "GssResult",
    "GssUnwrap",
    "GssWrap",
    "LookupScram",
    "LookupSecret",
    "MapPrincipal",
    "Outcome",
    "ScramCredentials",
    "Step",
    "Success",
    "VerifyBearer",
    "VerifyPassword",
]

#: Longest client response a mechanism accepts, in decoded octets.  The POP3
#: layer bounds the base64 line too; this bounds the work a mechanism does.
#: Dovecot's buffer for one SASL response (``LOGIN_MAX_AUTH_BUF_SIZE``,
#: src/login-common/client-common.h); RFC 4616 §2 only asks for 255 octets
#: per PLAIN field.
MAX_RESPONSE_OCTETS = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """Send ``data`` to the client (POP3: ``+ <base64>``); reply with its response."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyPassword:
    """Check ``password`` for ``authcid``; reply ``True`` if it is right."""

    authcid: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupSecret:
    """Reply with the recoverable plaintext secret of ``authcid`` (CRAM-MD5), or None."""

    authcid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupScram:
    """Reply with ``authcid``'s SCRAM credentials for ``hash_name``, or None.

    ``hash_name`` is ``"SHA-1"`` or ``"SHA-256"``.
    """

    authcid: str
    hash_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GssAccept:
    """GSS_Accept_sec_context on ``context`` with the client's ``token``;
    reply with a ``GssResult``, or None if the token was refused."""

    context: object
    token: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GssResult:
    token: bytes  # the output token, b"" if none
    complete: bool
    principal: str = ""  # the client's principal name, once complete


@dataclass(frozen=True, slots=True, kw_only=True)
class GssWrap:
    """GSS_Wrap ``data`` (integrity only); reply with the wrapped octets."""

    context: object
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GssUnwrap:
    """GSS_Unwrap ``data``; reply with the plain octets, or None."""

    context: object
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MapPrincipal:
    """May Kerberos ``principal`` log in, as ``authzid`` if not empty?  Reply
    with the login name it maps to, or None."""

    context: object
    principal: str
    authzid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyBearer:
    """Is the OAuth 2.0 bearer ``token`` valid, and for which login?  ``user``
    is the name the client gave with it ("" if none): the token's login must
    be that one.  Reply with the login, or None."""

    token: str
    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramCredentials:
    """What a server stores for SCRAM (RFC 5802 §3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Success:
    """The client proved it is ``authcid``."""

    authcid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Authentication failed.  ``reason`` is fixed text, never client input."""

    reason: str


Step: TypeAlias = (
    Challenge
    | VerifyPassword
    | LookupSecret
    | LookupScram
    | GssAccept
    | GssWrap
    | GssUnwrap
    | MapPrincipal
    | VerifyBearer
)
Outcome: TypeAlias = Success | Failure
Flow: TypeAlias = Generator[Step, object, Outcome]


class MechanismFailed(Exception):
    """Raised inside a mechanism to end the flow with ``Failure(reason)``.

    Internal: ``start`` turns it into the returned ``Failure``; it never
    leaves a flow.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_size(message: bytes) -> bytes:
    """*message*, unless it is longer than ``MAX_RESPONSE_OCTETS``."""
    if len(message) > MAX_RESPONSE_OCTETS:
        raise MechanismFailed("response too long")
    return message


def ask(data: bytes) -> Generator[Step, object, bytes]:
    """Send a challenge; return the client's response (bounded)."""
    reply = yield Challenge(data=data)
    if not isinstance(reply, bytes):
        raise TypeError("the reply to a Challenge must be bytes")
    return check_size(reply)


def verify_password(authcid: str, password: str) -> Generator[Step, object, bool]:
    reply = yield VerifyPassword(authcid=authcid, password=password)
    if not isinstance(reply, bool):
        raise TypeError("the reply to VerifyPassword must be a bool")
    return reply


def lookup_secret(authcid: str) -> Generator[Step, object, str | None]:
    reply = yield LookupSecret(authcid=authcid)
    if reply is not None and not isinstance(reply, str):
        raise TypeError("the reply to LookupSecret must be a str or None")
    return reply


def lookup_scram(authcid: str, hash_name: str) -> Generator[Step, object, ScramCredentials | None]:
    reply = yield LookupScram(authcid=authcid, hash_name=hash_name)
    if reply is not None and not isinstance(reply, ScramCredentials):
        raise TypeError("the reply to LookupScram must be ScramCredentials or None")
    return reply


def utf8(message: bytes) -> str:
    """Decode *message* as strict UTF-8 (RFC 4616 §2, RFC 5802 §5.1)."""
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise MechanismFailed("not UTF-8") from None
