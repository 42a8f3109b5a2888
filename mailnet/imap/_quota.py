# -*- test-case-name: tests.test_quota -*-
"""
IMAP QUOTA (RFC 9208) over L{mailnet.quota.Quotas}, ready for the IMAP
server to use: one quota root per user, named C{""}, holding every folder
of the account.  Pure: no protocol state.

The server (L{mailnet.imap.server}) uses it in four places: the
capabilities, the C{GETQUOTAROOT}/C{GETQUOTA}/C{SETQUOTA} commands,
APPEND, which is refused with C{NO [OVERQUOTA]} before its literal is read
when the message does not fit, and COPY, refused the same way before
anything is copied when the messages do not fit.  A MOVE stays within
the one root: it changes no usage and is never refused for the quota.

Sizes are checked as the client sees them (the APPEND literal, the
messages' C{RFC822.SIZE}), with CRLF line ends, against the usage as
stored (LF): a little stricter than the figure, never looser.
"""

from typing import Any, List, Optional

#: The only quota root: the whole account (RFC 9208 §3.2 "" root).
ROOT = ""

#: RFC 9208 §4.3: the response code of a refused APPEND, COPY or MOVE.
OVERQUOTA = "OVERQUOTA"


def capabilities(quotas: Any) -> List[bytes]:
    """RFC 9208 §3: QUOTA and the resources we count."""
    if quotas is None:
        return []
    return [b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE"]


def _quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


def quotaResponses(quotas: Any, address: str) -> List[bytes]:
    """
    The untagged C{QUOTA} response of the user's root (RFC 9208 §5.1):
    STORAGE in units of 1024 octets, rounded up; MESSAGE in messages.
    Empty when the user has no quota.
    """
    limit = quotas.limitFor(address)
    if not limit:
        return []
    octets, count = quotas.usage(address)
    resources = []
    if limit.octets is not None:
        resources.append(b"STORAGE %d %d" % (-(-octets // 1024), limit.octets // 1024))
    if limit.messages is not None:
        resources.append(b"MESSAGE %d %d" % (count, limit.messages))
    return [b"* QUOTA " + _quoted(ROOT) + b" (" + b" ".join(resources) + b")"]


def quotaRootResponses(quotas: Any, address: str, mailbox: bytes) -> List[bytes]:
    """
    C{GETQUOTAROOT}: the mailbox's roots (RFC 9208 §5.2), then their quotas.

    @param mailbox: the mailbox name as the server writes it (encoded, quoted).
    """
    if not quotas.limitFor(address):
        return [b"* QUOTAROOT " + mailbox]
    return [b"* QUOTAROOT " + mailbox + b" " + _quoted(ROOT)] + quotaResponses(quotas, address)


def refusal(quotas: Any, address: str, size: int, messages: int = 1) -> Optional[str]:
    """
    @param size: the octets to be added.
    @param messages: how many messages they are (APPEND one, COPY several).
    @return: the C{NO} text for an APPEND or COPY that does not fit the
        user's quota (RFC 9208 §4.3, response code OVERQUOTA), or L{None}
        when it fits.
    """
    if quotas is None:
        return None
    limit = quotas.limitFor(address)
    if not limit:
        return None
    octets, count = quotas.usage(address)
    if (limit.octets is not None and octets + size > limit.octets) or (
        limit.messages is not None and count + messages > limit.messages
    ):
        return "[OVERQUOTA] The mailbox is full"
    return None
