"""What a channel's sender tells the outbox besides success or a WeChatError to retry.

The outbox (app/domain/outbox.py) calls each channel's sender (card.push, wecom.deliver...);
these live here, not in the outbox, so that a sender needs no import of the outbox that calls it.
"""
from __future__ import annotations


class Skip(Exception):
    """Nothing to send any more (the contact is gone): the message is skipped, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Permanent(Exception):
    """Retrying cannot help: the message goes to the dead letters."""
