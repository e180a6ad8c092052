"""SASL mechanisms as sans-I/O generators (RFC 4422), shared by POP3 ``AUTH``.

Theory of operation
-------------------
A mechanism run is a generator, in the shape of httpx's auth flows::

    flow = sasl.start("SCRAM-SHA-256", initial_response, hostname="mail.example")
    step = next(flow)
    while True:
        match step:
            case sasl.Challenge(data=data):      reply = <client's decoded response>
            case sasl.VerifyPassword():          reply = <bool>
            case sasl.LookupSecret():            reply = <str | None>
            case sasl.LookupScram():             reply = <ScramCredentials | None>
            case sasl.GssAccept() | ...:         reply = <see base.py>
        try:
            step = flow.send(reply)
        except StopIteration as stop:
            outcome = stop.value                 # Success(authcid=...) | Failure(reason=...)
            break

The mechanisms never touch a socket, a database, a clock or a random source
they were not given: slow work (argon2, database lookups) is the driver's,
answering a step.  The POP3 layer does base64, ``*`` cancellation and line
limits; a flow sees decoded octets only.  Additional data with success (the
SCRAM server signature) is a last ``Challenge`` that the client must answer
with an empty response (RFC 5034 §4) before the flow returns ``Success``.

Whatever the client sends (empty, truncated, garbage, oversized, not
UTF-8), a flow yields steps and ends in ``Failure`` with a short fixed
reason that never echoes the input: it is written to logs.  It never raises,
except ``TypeError`` when the driver replies with the wrong type, and
``ValueError`` for a bad injected hostname or nonce (both driver bugs).

Mechanisms (``MECHANISMS``, strongest first): GSSAPI (RFC 4752, Kerberos V5;
the GSS-API calls are the driver's), SCRAM-SHA-256 and SCRAM-SHA-1
(RFC 7677, RFC 5802; no -PLUS), OAUTHBEARER (RFC 7628) and XOAUTH2 (OAuth 2.0
bearer tokens, checked by the driver), PLAIN (RFC 4616), LOGIN (obsolete, for old
clients) and CRAM-MD5 (RFC 2195, legacy; needs a stored plaintext secret).

This package imports nothing of mailslot (DESIGN.md, "Who may import whom").
"""

from mailslot.sasl.base import (
    MAX_RESPONSE_OCTETS,
    Challenge,
    Failure,
    Flow,
    GssAccept,
    GssResult,
    GssUnwrap,
    GssWrap,
    LookupScram,
    LookupSecret,
    MapPrincipal,
    Outcome,
    ScramCredentials,
    Step,
    Success,
    VerifyBearer,
    VerifyPassword,
)
from mailslot.sasl.mechanisms import CLEARTEXT_MECHANISMS, MECHANISMS, SECRET_MECHANISMS, start
from mailslot.sasl.scram import (
    DEFAULT_ITERATIONS,
    HASH_NAMES,
    MIN_ITERATIONS,
    saslprep,
    scram_credentials,
)

__all__ = [
    "CLEARTEXT_MECHANISMS",
    "DEFAULT_ITERATIONS",
    "HASH_NAMES",
    "MAX_RESPONSE_OCTETS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "SECRET_MECHANISMS",
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
    "saslprep",
    "scram_credentials",
    "start",
]
