"""Allow and block lists: a block entry makes the message spam; an allow entry counts only
when the sender proved it is who the entry names.

Reads ``ctx.lists`` (a :class:`~mailsift.service.lists.store.ListMatch` for the
From address) and ``ctx.auth`` (the trusted
:class:`~mailsift.service.authres.AuthResults`). Anyone can write any From address, so an
allow entry lowers the score only when SPF or DKIM passed for a domain aligned with that
From domain, per our own MTA's Authentication-Results header; otherwise the reason
``allowlist_unverified`` is reported with weight 0 and the score stands.

Whose entries count: the message's verdict, shared by every recipient, takes the global
lists (and, outbound, the sender's own); a recipient's own entries go into that
recipient's verdict only (:func:`owner_reasons`, run per recipient beside the personal
layer), so bob's block of a sender never refuses carol her copy. An owner's block
refuses the message to that owner alone: the gateway removes them from the recipients.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailsift.reasons import ALLOWLIST_UNVERIFIED, ALLOWLISTED, BLOCKLISTED
from mailsift.service.authres import AuthResults
from mailsift.service.checks.base import CheckContext, Reason
from mailsift.service.lists.store import ListMatch
from mailsift.service.settings import Action, Settings

__all__ = ["OWNER_ACTION", "REASONS", "list_reasons", "owner_reasons"]

# Log-odds per reason (name -> weight, description).
REASONS: dict[str, tuple[float, str]] = {
    BLOCKLISTED: (
        20.0,
        "the sender is on a block list: the message is spam whatever else it looks like "
        "(also forces the spam action while the model is still learning)",
    ),
    ALLOWLISTED: (
        -6.0,
        "the sender is on an allow list and authenticated (SPF or DKIM aligned with From)",
    ),
    ALLOWLIST_UNVERIFIED: (
        0.0,
        "the sender is on an allow list but did not authenticate; the score stands",
    ),
}


OWNER_ACTION: Action = "reject"
"""What an owner's own block entry does to their copy: refused (the gateway removes that
recipient; the others keep theirs). A copy cannot be held or tagged on its own."""


def list_reasons(ctx: CheckContext) -> Iterator[Reason]:
    """The message's list reasons (``ctx.lists``: global entries, and outbound the
    sender's own)."""
    yield from _reasons(ctx.lists, ctx.auth, ctx.settings)


def owner_reasons(match: ListMatch, auth: AuthResults | None, settings: Settings) -> list[Reason]:
    """One recipient's own list reasons: only when their own entry (``scope`` user)
    decided the sender; a global entry is already in the message's reasons."""
    if match.scope != "user":
        return []
    return list(_reasons(match, auth, settings, owner=True))


def _reasons(
    match: ListMatch | None, auth: AuthResults | None, settings: Settings, *, owner: bool = False
) -> Iterator[Reason]:
    if match is None or match.kind is None or match.entry is None:
        return
    whose = f" of {match.user}" if match.user else ""
    which = f"the {match.scope} {match.kind} list{whose} ({match.entry})"
    if match.kind == "block":
        weight, _ = REASONS[BLOCKLISTED]
        yield Reason(
            BLOCKLISTED,
            weight,
            f"sender is on {which}",
            action=OWNER_ACTION if owner else settings.spam_action,
            verdict="spam",
        )
        return
    if auth is not None and auth.aligned_pass and _entry_covers(match.entry, auth.from_domain):
        how = " and ".join(
            name
            for name, ok in (
                ("SPF", auth.spf_aligned),
                ("DKIM", auth.dkim_aligned),
                ("DMARC", auth.dmarc == "pass"),
            )
            if ok
        )
        yield Reason(
            ALLOWLISTED,
            REASONS[ALLOWLISTED][0],
            f"sender is on {which}; {how} passed for {auth.from_domain}",
        )
        return
    yield Reason(
        ALLOWLIST_UNVERIFIED,
        REASONS[ALLOWLIST_UNVERIFIED][0],
        f"sender is on {which}, but no trusted Authentication-Results header shows SPF or "
        "DKIM passing for a domain aligned with the From domain; the allow entry is ignored",
    )


def _entry_covers(entry: str, from_domain: str | None) -> bool:
    """The authenticated From domain is the one the entry names (or lies under it).

    Guards against matching the list on one address (say the envelope sender) and the
    authentication on another.
    """
    if not from_domain:
        return False
    domain = entry.rpartition("@")[2]
    return from_domain == domain or ("@" not in entry and from_domain.endswith("." + domain))
