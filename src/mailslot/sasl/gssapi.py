"""The GSSAPI mechanism (RFC 4752): Kerberos V5 logins.

The mechanism sequences the exchange; the GSS-API calls themselves are
steps the driver answers with its own security context (``context``, opaque
here): ``GssAccept`` until the context is established, then the security
layer negotiation, wrapped.  mailslot offers no security layer (TLS is the
channel's protection), so it sends ``[1, 0, 0, 0]`` (layer "none", maximum
size 0) and wants the client to choose exactly that.  The client's
authorization identity, if any, is passed with its principal to
``MapPrincipal``: the driver decides which login that is, if any.
"""

from __future__ import annotations

from collections.abc import Generator

from mailslot.sasl.base import (
    GssAccept,
    GssResult,
    GssUnwrap,
    GssWrap,
    MapPrincipal,
    MechanismFailed,
    Outcome,
    Step,
    Success,
    ask,
    check_size,
    utf8,
)

__all__ = ["gssapi_flow"]

_NO_SECURITY_LAYER = 1
#: Kerberos needs one round (AP-REQ, AP-REP); a few more for other mechanisms.
_MAX_ROUNDS = 5


def gssapi_flow(
    initial_response: bytes | None, context: object | None
) -> Generator[Step, object, Outcome]:
    if context is None:
        raise MechanismFailed("GSSAPI is not configured")
    if initial_response is None:
        token = yield from ask(b"")
    else:
        token = check_size(initial_response)
    for _ in range(_MAX_ROUNDS):
        result = yield GssAccept(context=context, token=token)
        if result is None:
            raise MechanismFailed("GSS-API token refused")
        if not isinstance(result, GssResult):
            raise TypeError("the reply to GssAccept must be a GssResult or None")
        if result.complete:
            break
        token = yield from ask(result.token)
    else:
        raise MechanismFailed("too many GSS-API rounds")
    if result.token and (yield from ask(result.token)):
        # RFC 4752 §3.1: the last output token is answered with nothing.
        raise MechanismFailed("unexpected data after the last token")
    offer = yield GssWrap(context=context, data=bytes([_NO_SECURITY_LAYER, 0, 0, 0]))
    if not isinstance(offer, bytes):
        raise TypeError("the reply to GssWrap must be bytes")
    choice = yield GssUnwrap(context=context, data=(yield from ask(offer)))
    if choice is not None and not isinstance(choice, bytes):
        raise TypeError("the reply to GssUnwrap must be bytes or None")
    if choice is None or len(choice) < 4:
        raise MechanismFailed("malformed message")
    if choice[0] != _NO_SECURITY_LAYER:
        raise MechanismFailed("security layer not offered")
    authzid = utf8(choice[4:])
    login = yield MapPrincipal(context=context, principal=result.principal, authzid=authzid)
    if login is not None and not isinstance(login, str):
        raise TypeError("the reply to MapPrincipal must be a str or None")
    if not login:
        raise MechanismFailed("principal not allowed")
    return Success(authcid=login)
