# -*- test-case-name: tests.test_index -*-
"""
The values the folder store hands to protocols (see L{IMailAccount} and
L{IFolder} in L{mailnet.interfaces}).  Plain frozen data, no behaviour, so
that every store implementation (Maildir + SQLite index today, a networked
database later) returns the same things.
"""

from typing import FrozenSet, Optional, Tuple

import attr

#: The hierarchy delimiter of folder names (Maildir++, as Dovecot's default).
DELIMITER = "."

#: The system flags (RFC 9051 §2.3.2) a store keeps.  C{\\Recent} is not one
#: of them: it is per session (see L{IFolder.claimRecent}).
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})

#: The folders every new account has, with their RFC 6154 special use.
DEFAULT_FOLDERS = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
)


@attr.s(frozen=True, auto_attribs=True)
class FolderInfo:
    """
    One folder in a listing.

    @ivar name: the full name (Unicode; C{DELIMITER} between levels; the
        inbox is always C{"INBOX"}).
    @ivar specialUse: C{"\\Sent"}, C{"\\Drafts"}, C{"\\Trash"},
        C{"\\Junk"}, C{"\\Archive"} or L{None}.
    @ivar subscribed: whether the name is in the subscription list.
    @ivar hasChildren: whether a folder exists below it.
    @ivar selectable: L{False} for a name that exists only because a
        folder below it does (C{\\Noselect} / C{\\NonExistent}).
    """

    name: str
    specialUse: Optional[str] = None
    subscribed: bool = False
    hasChildren: bool = False
    selectable: bool = True


@attr.s(frozen=True, auto_attribs=True)
class FolderStatus:
    """
    What STATUS reports (RFC 9051 §6.3.11), without opening a session.

    @ivar size: the sum of the messages' wire sizes (CRLF octets).
    """

    messages: int
    unseen: int
    uidNext: int
    uidValidity: int
    size: int
    highestModSeq: int
    deleted: int = 0
    recent: int = 0


@attr.s(frozen=True, auto_attribs=True)
class MessageRecord:
    """
    One message in a folder, as the index knows it.

    @ivar uid: its IMAP UID (strictly increasing per folder, never reused
        within one UIDVALIDITY).
    @ivar flags: system flags (from L{SYSTEM_FLAGS}) and keywords, as
        given by clients (keywords keep their case; compare them
        case-insensitively).
    @ivar modSeq: the RFC 7162 mod-sequence of its last change.
    @ivar internalDate: seconds since the epoch (delivery or APPEND time).
    @ivar size: octets on the wire: the message with CRLF line endings, as
        FETCH BODY[] sends it (and as POP3 LIST reports it).
    @ivar key: the store's own name for it (for Maildir: the unique name,
        which is also the POP3 UIDL).
    """

    uid: int
    flags: FrozenSet[str]
    modSeq: int
    internalDate: float
    size: int
    key: str


@attr.s(frozen=True, auto_attribs=True)
class FolderState:
    """
    A folder's content at one moment (after L{IFolder.sync}).

    @ivar messages: every message, sorted by UID.  A session finds what
        changed since the state it last saw by comparing the two (UIDs gone:
        expunged; new UIDs: EXISTS; a higher C{modSeq}: flags changed).
    """

    uidValidity: int
    uidNext: int
    highestModSeq: int
    messages: Tuple[MessageRecord, ...]
