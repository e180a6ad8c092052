"""Maildrop location templates, like Dovecot's ``mail_location``.

A template such as ``/srv/mail/{domain}/{user}/Maildir`` is parsed once, at
construction: only the ``{user}`` and ``{domain}`` placeholders exist, with no
conversion, format spec, attribute or index (``{user.__class__}`` would
otherwise reach into Python objects), and ``{{``/``}}`` stand for literal
braces.  Expansion then only concatenates.

The values come from the network (a login name, an LMTP recipient), so each
one used by the template is checked before it reaches a path: no path
separators, control characters or leading dot (which also rules out ``.`` and
``..``), not empty, at most 255 octets (one path component).  A value the
template does not use is not checked: a single-domain setup using only
``{user}`` may get an empty domain.
"""

from __future__ import annotations

import os
import re
from string import Formatter
from typing import Final

FIELDS: Final = frozenset({"user", "domain"})

# C0 and C1 controls, DEL, both path separators, and lone surrogates (which
# os.fsencode would turn into arbitrary bytes via surrogateescape).
_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f/\\\\\ud800-\udfff]")
_NAME_MAX: Final = 255


class InvalidName(ValueError):
    """A user or domain value that must not become part of a path."""


def check_name(kind: str, value: str) -> None:
    """Raise ``InvalidName`` unless ``value`` is safe as one path component."""
    if not value:
        raise InvalidName(f"empty {kind}")
    if value.startswith("."):
        raise InvalidName(f"{kind} starts with a dot: {value!r}")
    if _FORBIDDEN.search(value):
        raise InvalidName(f"{kind} contains a forbidden character: {value!r}")
    if len(value.encode("utf-8")) > _NAME_MAX:
        raise InvalidName(f"{kind} longer than {_NAME_MAX} octets")


def _root(parts: list[tuple[str, str | None]]) -> str:
    """The directory every expansion lies below: up to the last ``/`` before
    the first placeholder, or the parent of a template without one."""
    fixed = ""
    for literal, field in parts:
        fixed += literal
        if field is not None:
            return os.path.normpath(fixed[: fixed.rindex("/") + 1])
    return os.path.dirname(os.path.normpath(fixed))


class LocationTemplate:
    """A parsed location template; ``expand`` gives the maildrop's path."""

    __slots__ = ("_parts", "root", "template", "uses_domain", "uses_user")

    def __init__(self, template: str) -> None:
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(Formatter().parse(template))
        except ValueError as exc:  # unbalanced braces
            raise ValueError(f"bad location template {template!r}: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if field is not None and (field not in FIELDS or spec or conversion):
                raise ValueError(
                    f"unknown placeholder {{{field}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} in location {template!r}; "
                    f"only {{user}} and {{domain}} are allowed"
                )
            parts.append((literal, field))
        if not template.startswith("/"):
            raise ValueError(f"location must be an absolute path: {template!r}")
        self.template = template
        self._parts = tuple(parts)
        self.uses_user = any(field == "user" for _, field in parts)
        self.uses_domain = any(field == "domain" for _, field in parts)
        self.root = _root(parts)

    def expand(self, *, user: str, domain: str) -> str:
        """The path for ``user``/``domain``; ``InvalidName`` if a used value is unsafe."""
        if self.uses_user:
            check_name("user", user)
        if self.uses_domain:
            check_name("domain", domain)
        values = {"user": user, "domain": domain}
        return "".join(literal + (values[field] if field else "") for literal, field in self._parts)

    def __repr__(self) -> str:
        return f"LocationTemplate({self.template!r})"
