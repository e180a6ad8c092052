"""APOP (RFC 1939 §7): the client proves it knows the shared secret by sending
MD5(greeting timestamp + secret) as lower-case hex.

MD5 is weak; APOP is offered only when the operator enables it, and only for
accounts that store a recoverable secret.
"""

from __future__ import annotations

import hashlib
import hmac


def apop_digest(timestamp: str, secret: str) -> str:
    """The digest a client sends for ``timestamp`` (with its angle brackets)."""
    data = (timestamp + secret).encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def apop_matches(timestamp: str, secret: str, digest: str) -> bool:
    """Constant-time check of a client's digest."""
    expected = apop_digest(timestamp, secret).encode("ascii")
    return hmac.compare_digest(expected, digest.lower().encode("ascii", "replace"))
