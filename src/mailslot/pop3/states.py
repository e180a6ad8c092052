"""The POP3 state table (RFC 1939 §3-§6, RFC 2449 §5, RFC 2595 §4, RFC 6856).

A session starts in AUTHORIZATION, enters TRANSACTION once the maildrop is
open and locked, and UPDATE only through QUIT.  ``COMMANDS_BY_STATE`` is the
one place that says which command is valid where; the "not valid in this
state" replies and the docs' state table are built from it.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Verb(enum.StrEnum):
    USER = "USER"
    PASS = "PASS"  # noqa: S105 (a command name)
    APOP = "APOP"
    AUTH = "AUTH"
    STLS = "STLS"
    UTF8 = "UTF8"
    LANG = "LANG"
    CAPA = "CAPA"
    STAT = "STAT"
    LIST = "LIST"
    RETR = "RETR"
    DELE = "DELE"
    NOOP = "NOOP"
    RSET = "RSET"
    TOP = "TOP"
    UIDL = "UIDL"
    QUIT = "QUIT"


COMMANDS_BY_STATE: dict[State, frozenset[Verb]] = {
    State.AUTHORIZATION: frozenset(
        {
            Verb.USER,
            Verb.PASS,
            Verb.APOP,
            Verb.AUTH,
            Verb.STLS,
            Verb.UTF8,
            Verb.LANG,
            Verb.CAPA,
            Verb.QUIT,
        }
    ),
    State.TRANSACTION: frozenset(
        {
            Verb.STAT,
            Verb.LIST,
            Verb.RETR,
            Verb.DELE,
            Verb.NOOP,
            Verb.RSET,
            Verb.TOP,
            Verb.UIDL,
            Verb.CAPA,
            Verb.LANG,
            Verb.QUIT,
        }
    ),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}

# Order in which commands are listed in "allowed here" replies.
_ORDER = list(Verb)


def allowed_text(state: State, *, hidden: frozenset[Verb] = frozenset()) -> str:
    """The space-separated list of commands valid in ``state``."""
    verbs = COMMANDS_BY_STATE[state] - hidden
    return " ".join(verb.value for verb in _ORDER if verb in verbs)
