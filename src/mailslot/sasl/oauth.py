"""OAuth 2.0 bearer tokens: OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's
older form, which Microsoft 365 and many clients still use).

Both carry a bearer token the client got from an authorization server;
the mechanism only parses the client's message and asks the driver
(``VerifyBearer``) whether the token names an account, and which one.  A
refused token gets the error challenge each specification prescribes (a
JSON status the client must answer, with ``\\x01`` for OAUTHBEARER and an
empty response for XOAUTH2) before the flow fails.
"""

from __future__ import annotations

import json
from collections.abc import Generator

from mailslot.sasl.base import (
    MechanismFailed,
    Outcome,
    Step,
    Success,
    VerifyBearer,
    ask,
    check_size,
    utf8,
)

__all__ = ["oauthbearer_flow", "xoauth2_flow"]

_KVSEP = "\x01"


def _client_message(initial_response: bytes | None) -> Generator[Step, object, str]:
    if initial_response is None:
        return utf8((yield from ask(b"")))
    return utf8(check_size(initial_response))


def _bearer(pairs: list[str]) -> str:
    """The token of the ``auth=Bearer <token>`` pair (RFC 7628 §3.1)."""
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "auth":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise MechanismFailed("not a bearer token")
            return token.strip()
    raise MechanismFailed("no auth= field")


def _verify(token: str, user: str) -> Generator[Step, object, str | None]:
    login = yield VerifyBearer(token=token, user=user)
    if login is not None and not isinstance(login, str):
        raise TypeError("the reply to VerifyBearer must be a str or None")
    return login or None


def oauthbearer_flow(initial_response: bytes | None) -> Generator[Step, object, Outcome]:
    """RFC 7628 §3.1: ``gs2-header kvsep *(kvpair kvsep) kvsep``."""
    message = yield from _client_message(initial_response)
    if not message.endswith(_KVSEP + _KVSEP):
        raise MechanismFailed("malformed message")
    header, *pairs = message[:-2].split(_KVSEP)
    flag, comma, rest = header.partition(",")
    authzid_field, comma2, tail = rest.partition(",")
    if flag not in ("n", "y") or not comma or not comma2 or tail:
        raise MechanismFailed("malformed message")  # "p=": no channel binding here
    user = ""
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise MechanismFailed("malformed message")
        # RFC 5801 saslname: "," and "=" arrive as "=2C" and "=3D".
        user = authzid_field[2:].replace("=2C", ",").replace("=3D", "=")
    login = yield from _verify(_bearer(pairs), user)
    if login is None:
        # §3.2.2: an error challenge, answered by a lone kvsep.
        yield from ask(json.dumps({"status": "invalid_token", "schemes": "bearer"}).encode())
        raise MechanismFailed("invalid token")
    return Success(authcid=login)


def xoauth2_flow(initial_response: bytes | None) -> Generator[Step, object, Outcome]:
    """``user=<user> ^A auth=Bearer <token> ^A ^A``."""
    message = yield from _client_message(initial_response)
    if not message.endswith(_KVSEP + _KVSEP):
        raise MechanismFailed("malformed message")
    fields = message[:-2].split(_KVSEP)
    user_field = fields[0]
    if not user_field.startswith("user="):
        raise MechanismFailed("malformed message")
    login = yield from _verify(_bearer(fields[1:]), user_field[5:])
    if login is None:
        # The error goes as a challenge; the client answers with nothing.
        yield from ask(json.dumps({"status": "401", "schemes": "bearer"}).encode())
        raise MechanismFailed("invalid token")
    return Success(authcid=login)
