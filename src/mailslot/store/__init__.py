"""Maildrop storage: the interface and its backends."""

from mailslot.store.base import (
    DeliveryError,
    Maildrop,
    MaildropBusy,
    MaildropError,
    MaildropStore,
    MaildropUnavailable,
    MessageGone,
    MessageInfo,
)

__all__ = [
    "DeliveryError",
    "Maildrop",
    "MaildropBusy",
    "MaildropError",
    "MaildropStore",
    "MaildropUnavailable",
    "MessageGone",
    "MessageInfo",
]
