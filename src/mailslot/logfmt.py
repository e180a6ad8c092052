"""Text from the network, made safe for one log line.

A leaf module: the POP3 and LMTP drivers, the auth backend and the CLI all
log names that a client chose.
"""

from __future__ import annotations


def printable(text: str | None) -> str:
    """Escape control characters and spaces so a peer cannot forge log lines
    (or split one into fields); ``None`` becomes ``-``."""
    if text is None:
        return "-"
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")
