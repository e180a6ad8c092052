"""The POP3 protocol, sans-I/O: bytes in, events and bytes out.

Events and answers live in ``mailslot.pop3.events``.
"""

from mailslot.pop3.session import (
    MAX_COMMAND_LINE,
    MAX_RESPONSE_LINE,
    LocalProtocolError,
    RespCode,
    Session,
    SessionOptions,
    SessionStatistics,
)
from mailslot.pop3.states import COMMANDS_BY_STATE, State, Verb

__all__ = [
    "COMMANDS_BY_STATE",
    "MAX_COMMAND_LINE",
    "MAX_RESPONSE_LINE",
    "LocalProtocolError",
    "RespCode",
    "Session",
    "SessionOptions",
    "SessionStatistics",
    "State",
    "Verb",
]
