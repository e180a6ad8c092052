"""Kerberos V5 through GSS-API (the ``gssapi`` package, MIT krb5), for the
SASL GSSAPI mechanism: the acceptor side of one exchange per login.

Needs the optional dependency: ``pip install 'mailslot[gssapi]'`` (it
builds against the system's krb5: Debian ``libkrb5-dev``).  The server's
keys come from ``auth.gssapi_keytab``; any service principal in it is
accepted (``pop/mail.example.org@REALM``, the name clients ask tickets for).

A client's principal maps to a login only in the realm of the service
principal it authenticated to: ``alice@EXAMPLE.ORG`` logs in as ``alice``
(and so, with no ``@domain``, in ``auth.default_domain``); principals of
other realms, and instances (``alice/admin``), are refused.  The account
must exist in the user database like any other.
"""

from __future__ import annotations

from mailslot.sasl import GssResult

try:
    import gssapi
    from gssapi.raw.misc import GSSError
except ImportError as exc:  # pragma: no cover - exercised only without the package
    raise ImportError(
        "GSSAPI needs the gssapi package: pip install 'mailslot[gssapi]' "
        "(it builds against the system's Kerberos: apt-get install libkrb5-dev gcc)"
    ) from exc

__all__ = ["GssAcceptor", "GssError", "acceptor_credentials"]


class GssError(Exception):
    """The keytab cannot be used."""


def acceptor_credentials(keytab: str) -> gssapi.Credentials:
    """Acceptor credentials for every service principal in ``keytab``."""
    try:
        return gssapi.Credentials(usage="accept", store={"keytab": keytab})
    except GSSError as exc:
        raise GssError(f"{keytab}: {exc.gen_message()}") from None


class GssAcceptor:
    """One GSSAPI exchange: ``accept`` tokens, then ``wrap``/``unwrap`` the
    security-layer negotiation, then ``login`` for the principal."""

    __slots__ = ("_context",)

    def __init__(self, credentials: gssapi.Credentials) -> None:
        self._context = gssapi.SecurityContext(creds=credentials, usage="accept")

    def accept(self, token: bytes) -> GssResult | None:
        try:
            output = self._context.step(token) or b""
        except GSSError:
            return None
        if not self._context.complete:
            return GssResult(token=output, complete=False)
        return GssResult(token=output, complete=True, principal=str(self._context.initiator_name))

    def wrap(self, data: bytes) -> bytes:
        return bytes(self._context.wrap(data, encrypt=False).message)

    def unwrap(self, data: bytes) -> bytes | None:
        try:
            return bytes(self._context.unwrap(data).message)
        except GSSError:
            return None

    def login(self, principal: str, authzid: str) -> str | None:
        """The login ``principal`` maps to (see the module docstring); an
        ``authzid`` must name that same login or principal."""
        name, at, realm = principal.rpartition("@")
        own = str(self._context.target_name).rpartition("@")[2]
        if not at or not name or realm != own or "/" in name:
            return None
        if authzid and authzid not in (name, principal):
            return None
        return name
