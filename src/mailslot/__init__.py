"""mailslot: a POP3 server (RFC 1939, RFC 2449) on Maildir."""

__version__ = "0.1.0"
