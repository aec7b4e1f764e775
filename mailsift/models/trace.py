"""Header fields that the receiving side writes, and so say nothing about the sender.

The receiving site's servers stamp each message with results of their own: SPF and
authentication results, ARC seals, Exchange's organisation stamps, and mailsift's own
``X-Mailsift-*`` verdict headers on mail it delivered. Which of them a message carries
depends on where it was received, not on who sent it; learned as features, they teach
a model the collecting site's set-up (a 2007 corpus's ham carried ``Received-SPF`` and
its spam did not, so modern phishing looked like ham), and mailsift's own headers on a
reported message would teach the model its own verdict. The numbers in ``Received``
(times, dates, addresses, queue ids) are of the same kind: they tell when and by which
host, never what.
"""

from __future__ import annotations

__all__ = ["OWN_HEADER_PREFIX", "added_by_receiver"]

OWN_HEADER_PREFIX = "X-Mailsift-"
"""mailsift's own verdict headers (the milter writes them and removes any it received)."""

_RECEIVER_ADDED = (
    "received-spf",
    "authentication-results",
    "arc-",
    "x-ms-exchange-organization-",
    OWN_HEADER_PREFIX.lower(),
)


def added_by_receiver(name: str) -> bool:
    """Whether a (lower-case) header field name is one the receiving side adds.

    >>> added_by_receiver("arc-seal"), added_by_receiver("dkim-signature")
    (True, False)
    """
    return name.startswith(_RECEIVER_ADDED)
