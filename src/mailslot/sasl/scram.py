"""SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), server side.

Theory of operation
-------------------
::

    C: n,,n=user,r=<c-nonce>                         client-first-message
    S: r=<c-nonce><s-nonce>,s=<salt>,i=<iterations>  server-first-message
    C: c=biws,r=<c-nonce><s-nonce>,p=<proof>         client-final-message
    S: v=<server signature>                          server-final-message
    C: (empty)                                       RFC 5034 §4
    S: +OK

The flow parses the client-first message only as far as it needs the user
name, yields ``LookupScram`` for the stored ``ScramCredentials`` (the driver
does the database work), and does the rest with ``hmac``/``hashlib``: the
server side of SCRAM is a handful of HMACs over the "AuthMessage" (§3).  The
stored keys are PBKDF2 results, so a login costs no key stretching on the
server; ``scram_credentials`` does the stretching once, when a password is
set.

Decisions, with the RFC text they follow:

- Channel binding.  We offer no ``-PLUS`` mechanism, so a ``p=`` flag (the
  client demands binding) fails.  A ``y`` flag (the client could bind but
  thinks we cannot) is accepted *only because* we offer no ``-PLUS``: §6 says
  a server that does advertise ``-PLUS`` must fail ``y`` as a downgrade.  If
  ``-PLUS`` is ever offered, change ``_parse_client_first``.
- Authorization identity.  ``a=`` is allowed only when it names the user
  being authenticated; we do not proxy (RFC 4422 §2).
- Unknown users.  When the lookup answers None the exchange goes on with
  fake credentials (a salt derived by HMAC from a server secret and the user
  name, so a repeated probe sees the same salt; the default iteration count)
  and fails at the proof, exactly like a wrong password (RFC 5802 §9 lets an
  attacker probe with the first message).
- Weak stored credentials.  An iteration count below 4096 (RFC 7677 §4,
  RFC 5802 §9) or keys of the wrong length fail the exchange.
- Mandatory extensions (``m=``) fail (§5.1: "the server MUST fail").
- The final message's nonce must equal the server-first nonce (the
  client's nonce plus ours), and the channel-binding data must be exactly the
  gs2 header the client sent first.
- Passwords are normalised with SASLprep (RFC 4013) when the credentials are
  made, as §2.2 requires; a password SASLprep refuses (control characters,
  unassigned code points...) is used as its raw UTF-8 octets, as PostgreSQL
  does, so such passwords still work with clients that send them raw.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Callable, Generator
from dataclasses import dataclass

from mailslot.sasl.base import (
    MechanismFailed,
    Outcome,
    ScramCredentials,
    Step,
    Success,
    ask,
    check_size,
    lookup_scram,
    utf8,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASH_NAMES",
    "MIN_ITERATIONS",
    "SALT_OCTETS",
    "saslprep",
    "scram_credentials",
]

#: The lowest iteration count we store or accept (RFC 7677 §4; RFC 5802 §9).
MIN_ITERATIONS = 4096
#: The iteration count ``scram_credentials`` uses, and fake credentials show.
DEFAULT_ITERATIONS = MIN_ITERATIONS
#: Salt length of new credentials (Dovecot also uses 16 octets).
SALT_OCTETS = 16

#: SCRAM hash name → (hashlib name, digest size in octets).
_HASHES: dict[str, tuple[str, int]] = {
    "SHA-1": ("sha1", 20),
    "SHA-256": ("sha256", 32),
}
#: The hash names ``LookupScram`` and ``scram_credentials`` use.
HASH_NAMES: tuple[str, ...] = tuple(_HASHES)

# RFC 5802 §7: printable = %x21-2B / %x2D-7E (printable ASCII except ",").
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# RFC 5802 §7: attr-val = ALPHA "=" value.
_ATTR_VAL = re.compile(r"[A-Za-z]=.*", re.DOTALL)


def scram_credentials(
    password: str,
    hash_name: str,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> ScramCredentials:
    """Make the credentials a server stores for *password* (RFC 5802 §3).

    *hash_name* is ``"SHA-1"`` or ``"SHA-256"``.  Raises ``ValueError`` for
    an unknown hash, an iteration count below ``MIN_ITERATIONS``, an empty
    salt, or a password that cannot be encoded.
    """
    digest_name, _ = _hash(hash_name)
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"SCRAM iteration count must be at least {MIN_ITERATIONS}")
    if salt is None:
        salt = secrets.token_bytes(SALT_OCTETS)
    if not salt:
        raise ValueError("SCRAM salt must not be empty")
    salted = hashlib.pbkdf2_hmac(digest_name, _password_octets(password), salt, iterations)
    client_key = _hmac(digest_name, salted, b"Client Key")
    return ScramCredentials(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(digest_name, client_key).digest(),
        server_key=_hmac(digest_name, salted, b"Server Key"),
    )


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for a stored string; ``ValueError`` if prohibited."""
    # §2.1 mapping: non-ASCII spaces become SPACE, B.1 maps to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # §2.2 normalisation: NFKC, with the Unicode 3.2 tables stringprep uses.
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for char in prepared:
        # §2.3 prohibited output; §2.5 unassigned code points (stored strings).
        if (
            stringprep.in_table_c12(char)
            or stringprep.in_table_c21_c22(char)
            or stringprep.in_table_c3(char)
            or stringprep.in_table_c4(char)
            or stringprep.in_table_c5(char)
            or stringprep.in_table_c6(char)
            or stringprep.in_table_c7(char)
            or stringprep.in_table_c8(char)
            or stringprep.in_table_c9(char)
            or stringprep.in_table_a1(char)
        ):
            raise ValueError("prohibited character")
    # §2.4 bidirectional characters (RFC 3454 §6).
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("mixed bidirectional text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("malformed bidirectional text")
    return prepared


def _password_octets(password: str) -> bytes:
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = password  # raw octets: see the module docstring
    try:
        return prepared.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("password is not encodable as UTF-8") from None


def _hash(hash_name: str) -> tuple[str, int]:
    try:
        return _HASHES[hash_name]
    except KeyError:
        raise ValueError("unknown SCRAM hash") from None


def _hmac(digest_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, digest_name).digest()


# --------------------------------------------------------------- the flow


@dataclass(frozen=True, slots=True, kw_only=True)
class _ClientFirst:
    gs2_header: str
    bare: str
    username: str
    nonce: str


def scram_flow(
    hash_name: str,
    initial_response: bytes | None,
    *,
    nonce: Callable[[], str],
    server_secret: bytes,
) -> Generator[Step, object, Outcome]:
    """The server side of one SCRAM exchange; see the module docstring."""
    digest_name, size = _hash(hash_name)
    if initial_response is None:
        # RFC 4422 §5 (client-first mechanism): an empty challenge asks for it.
        message = yield from ask(b"")
    else:
        message = check_size(initial_response)
    first = _parse_client_first(message)

    stored = yield from lookup_scram(first.username, hash_name)
    if stored is None:
        credentials = _fake_credentials(hash_name, first.username, server_secret, size)
    else:
        _check_stored(stored, size)
        credentials = stored

    server_nonce = nonce()
    if not _PRINTABLE.fullmatch(server_nonce):
        raise ValueError("the nonce function must return printable ASCII without ','")
    full_nonce = first.nonce + server_nonce
    server_first = (
        f"r={full_nonce},s={base64.b64encode(credentials.salt).decode('ascii')},"
        f"i={credentials.iterations:d}"
    )
    final = yield from ask(server_first.encode("ascii"))
    without_proof, proof = _parse_client_final(final, first.gs2_header, full_nonce, size)

    auth_message = f"{first.bare},{server_first},{without_proof}".encode()
    client_signature = _hmac(digest_name, credentials.stored_key, auth_message)
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    proved = hmac.compare_digest(
        hashlib.new(digest_name, client_key).digest(), credentials.stored_key
    )
    if not proved or stored is None:
        raise MechanismFailed("invalid credentials")

    server_signature = _hmac(digest_name, credentials.server_key, auth_message)
    # RFC 5034 §4: additional data with success goes out as a challenge, and
    # the client must answer it with an empty response.
    reply = yield from ask(b"v=" + base64.b64encode(server_signature))
    if reply:
        raise MechanismFailed("unexpected data after the server-final message")
    return Success(authcid=first.username)


def _parse_client_first(message: bytes) -> _ClientFirst:
    text = utf8(message)
    parts = text.split(",")
    if len(parts) < 4:
        raise MechanismFailed("malformed message")
    flag, authzid_field, *bare_parts = parts
    if flag.startswith("p="):
        raise MechanismFailed("channel binding not supported")
    # "y" is fine only because no -PLUS mechanism is offered (RFC 5802 §6):
    # offering -PLUS makes "y" a downgrade attack that must fail.
    if flag not in ("n", "y"):
        raise MechanismFailed("malformed message")
    if bare_parts[0].startswith("m="):
        raise MechanismFailed("mandatory extension not supported")
    if not bare_parts[0].startswith("n=") or not bare_parts[1].startswith("r="):
        raise MechanismFailed("malformed message")
    username = _saslname(bare_parts[0][2:])
    client_nonce = bare_parts[1][2:]
    if not _PRINTABLE.fullmatch(client_nonce):
        raise MechanismFailed("malformed message")
    if not all(_ATTR_VAL.fullmatch(extension) for extension in bare_parts[2:]):
        raise MechanismFailed("malformed message")
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise MechanismFailed("malformed message")
        if _saslname(authzid_field[2:]) != username:
            raise MechanismFailed("authorization identity not allowed")
    return _ClientFirst(
        gs2_header=f"{flag},{authzid_field},",
        bare=",".join(bare_parts),
        username=username,
        nonce=client_nonce,
    )


def _saslname(value: str) -> str:
    """Decode RFC 5802 §7 ``saslname``: ``=2C`` is ",", ``=3D`` is "="."""
    if not value or "\x00" in value:
        raise MechanismFailed("malformed message")
    pieces = value.split("=")
    for piece in pieces[1:]:
        if piece[:2] not in ("2C", "3D"):
            raise MechanismFailed("malformed message")
    return pieces[0] + "".join(("," if p[:2] == "2C" else "=") + p[2:] for p in pieces[1:])


def _parse_client_final(
    message: bytes, gs2_header: str, full_nonce: str, size: int
) -> tuple[str, bytes]:
    """Check the client-final message; return it without its proof, and the proof."""
    text = utf8(message)
    without_proof, separator, proof_text = text.rpartition(",p=")
    if not separator:
        raise MechanismFailed("malformed message")
    parts = without_proof.split(",")
    if len(parts) < 2 or not parts[0].startswith("c=") or not parts[1].startswith("r="):
        raise MechanismFailed("malformed message")
    if not all(_ATTR_VAL.fullmatch(extension) for extension in parts[2:]):
        raise MechanismFailed("malformed message")
    # For "n" and "y" the channel-binding input is the gs2 header alone.
    if not hmac.compare_digest(_b64decode(parts[0][2:]), gs2_header.encode()):
        raise MechanismFailed("channel binding data mismatch")
    if not hmac.compare_digest(parts[1][2:].encode(), full_nonce.encode()):
        raise MechanismFailed("nonce mismatch")
    proof = _b64decode(proof_text)
    if len(proof) != size:
        raise MechanismFailed("malformed message")
    return without_proof, proof


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
        raise MechanismFailed("malformed message") from None


def _check_stored(credentials: ScramCredentials, size: int) -> None:
    if credentials.iterations < MIN_ITERATIONS:
        raise MechanismFailed("stored SCRAM iteration count too low")
    if (
        not credentials.salt
        or len(credentials.stored_key) != size
        or len(credentials.server_key) != size
    ):
        raise MechanismFailed("stored SCRAM credentials malformed")


def _fake_credentials(
    hash_name: str, username: str, server_secret: bytes, size: int
) -> ScramCredentials:
    """Credentials for an unknown user: a stable salt, keys nobody can match."""
    label = f"mailslot fake SCRAM salt\x00{hash_name}\x00{username}".encode()
    salt = hmac.new(server_secret, label, "sha256").digest()[:SALT_OCTETS]
    return ScramCredentials(
        salt=salt,
        iterations=DEFAULT_ITERATIONS,
        stored_key=secrets.token_bytes(size),
        server_key=secrets.token_bytes(size),
    )
