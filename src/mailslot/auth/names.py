"""Login names: from what a client typed to the account it names.

Theory of operation
-------------------
A POP3 client logs in with ``USER`` / ``APOP`` / ``AUTH`` and a name.  That
name picks a maildrop, and a maildrop is a directory on disk, so the name is
untrusted input on its way to a path.  Everything that turns a login into an
``Account`` happens here, in one place, and an ``Account`` can only exist in
its canonical, validated form (``Account.__post_init__`` checks), so a layer
holding an ``Account`` never has to re-check it.

Three spellings name the same account::

    john@example.com    virtual-domain login
    john+example.com    the same, for clients that cannot send "@" (SDPS form)
    john                the same, when the server's default domain is example.com

1. If the login contains ``@`` it is split at the *last* ``@`` and ``+`` means
   nothing (``a+b@host`` is user ``a+b``).  Otherwise, if it contains ``+``, it
   is split at the last ``+`` (``a+b+host`` is user ``a+b`` at ``host``).
   Otherwise the domain is the default domain.
2. The name is normalised: Unicode NFC, then lower-cased.  Accounts are
   case-insensitive, as with Dovecot's ``%Lu``: ``JOHN@Host`` is ``john@host``.
   UTF-8 names (RFC 6856 UTF8 capability; ``josé``, ``пользователь@пример.рф``)
   are valid.
3. The name is validated, and a rejected name raises ``InvalidName`` carrying
   a short reason that never echoes the input (the input is attacker-chosen
   and reasons end up in logs):

   - an empty user or domain;
   - a full name (``user@domain``) over 255 octets of UTF-8;
   - control characters (C0 incl. NUL/TAB/CR/LF, DEL, C1), lone surrogates,
     and any Unicode space or line/paragraph separator (``" "``, NBSP, U+2028);
   - ``/`` or ``\\``;
   - a user or domain that starts with ``.`` (which covers ``.`` and ``..``),
     or ``..`` anywhere.

   Together these rules mean a user or domain is always a single, harmless
   path component, and prints on one log line.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

__all__ = ["MAX_NAME_OCTETS", "Account", "InvalidName", "parse_domain", "parse_login"]

#: Longest full name, ``user@domain``, in UTF-8 octets.  RFC 5321 §4.5.3.1.3
#: bounds a path at 256 octets including the angle brackets; 255 also keeps
#: any name inside one ``NAME_MAX`` path component.
MAX_NAME_OCTETS = 255

#: Longest login we even try to normalise, in code points: a bound on the work
#: done for hostile input.  NFC shrinks a string by at most a factor of four
#: in code points (U+1FAF is four code points decomposed) and lower-casing never
#: shrinks it, so nothing that could still be a valid name is cut off; POP3
#: command lines are 255 octets anyway (RFC 2449 §4).
MAX_LOGIN_CHARS = 4 * MAX_NAME_OCTETS

_PATH_SEPARATORS = frozenset("/\\")


class InvalidName(ValueError):
    """A login name that cannot name an account.

    ``str(exc)`` is a short, fixed reason ("empty domain", ...) that never
    contains the offending input, so it is safe to log.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A canonical account: lower-case NFC ``user`` at ``domain``.

    Constructing one validates it (``InvalidName`` otherwise), so every
    ``Account`` is safe to use as path components.
    """

    user: str
    domain: str

    def __post_init__(self) -> None:
        _check_part(self.user, "user name")
        _check_part(self.domain, "domain")
        if "@" in self.domain:
            raise InvalidName("'@' in domain")
        if _normalise(self.user) != self.user or _normalise(self.domain) != self.domain:
            raise InvalidName("name not in canonical form")
        if len(self.name.encode("utf-8")) > MAX_NAME_OCTETS:
            raise InvalidName(f"name longer than {MAX_NAME_OCTETS} octets")

    @property
    def name(self) -> str:
        """The canonical name, ``user@domain``: the key of the user database."""
        return f"{self.user}@{self.domain}"


def parse_login(login: str, *, default_domain: str) -> Account:
    """Resolve what a client sent as its login name to an ``Account``.

    Raises ``InvalidName`` for a name that can name no account, and plain
    ``ValueError`` if *default_domain* is itself invalid (a configuration
    error, not the client's).
    """
    domain_fallback = _default_domain(default_domain)
    if len(login) > MAX_LOGIN_CHARS:
        raise InvalidName(f"name longer than {MAX_NAME_OCTETS} octets")
    name = _normalise(login)
    if "@" in name:
        user, _, domain = name.rpartition("@")
    elif "+" in name:
        user, _, domain = name.rpartition("+")
    else:
        user, domain = name, domain_fallback
    return Account(user=user, domain=domain)


def parse_domain(domain: str) -> str:
    """Return the canonical form of a bare domain (for configuration checks).

    Raises ``InvalidName`` if no account could live in *domain*.
    """
    if len(domain) > MAX_LOGIN_CHARS:
        raise InvalidName(f"name longer than {MAX_NAME_OCTETS} octets")
    canonical = _normalise(domain)
    # The shortest account in the domain, "x@domain", must be valid.
    return Account(user="x", domain=canonical).domain


@functools.lru_cache(maxsize=16)
def _default_domain(domain: str) -> str:
    # Cached: parse_login is called with the same configured value every time.
    try:
        return parse_domain(domain)
    except InvalidName as exc:
        raise ValueError(f"invalid default domain: {exc}") from None


def _normalise(text: str) -> str:
    # NFC first so that decomposed and precomposed input lower-case alike;
    # NFC again because lower-casing may leave a composable sequence
    # (e.g. U+0130 lower-cases to "i" + U+0307).
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).lower())


def _check_part(part: str, what: str) -> None:
    """Raise ``InvalidName`` unless *part* is one harmless path component."""
    if not part:
        raise InvalidName(f"empty {what}")
    for char in part:
        if char in _PATH_SEPARATORS:
            raise InvalidName(f"path separator in {what}")
        category = unicodedata.category(char)
        # Cc: C0 controls, DEL, C1 controls; Cs: lone surrogates (not UTF-8).
        if category in ("Cc", "Cs"):
            raise InvalidName(f"control character in {what}")
        # Zs, Zl, Zp: spaces and line/paragraph separators.
        if category[0] == "Z":
            raise InvalidName(f"space in {what}")
    # A leading dot covers "." and "..", and keeps names off hidden files.
    if part.startswith("."):
        raise InvalidName(f"{what} starts with a dot")
    if ".." in part:
        raise InvalidName(f"'..' in {what}")
