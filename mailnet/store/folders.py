# -*- test-case-name: tests.test_folders -*-
"""
IMAP folders on disk: a user's Maildir++ tree (as Dovecot lays it out) and
its per-user index (L{mailnet.store.index}).

The inbox is the user's Maildir (L{mailnet.store.maildir.MaildirStore.pathFor});
folder C{a.b} is the directory C{.a.b} below it, its name in modified
UTF-7 as Dovecot writes it, holding C{cur/ new/ tmp/} and an empty
C{maildirfolder} file.  The subscriptions are the file C{subscriptions}
in the Maildir (one name per line, Dovecot's format).

This module also holds the rules that every L{IMailAccount} implementation
shares (the memory one in L{mailnet.testing} too): which names are valid,
how flags combine, how APPENDed messages are normalised.
"""

from typing import FrozenSet, Iterable, List, Optional, Tuple

import twisted.mail.imap4  # noqa: F401 -- registers the "imap4-utf-7" codec

from mailnet.errors import BadFolderName
from mailnet.store.records import DELIMITER, SYSTEM_FLAGS, FolderInfo

#: The longest folder name: the whole name is one directory name on disk.
MAX_NAME_OCTETS = 200
#: The deepest hierarchy.
MAX_DEPTH = 16
#: Folder name characters refused: LIST wildcards, the path separator, and
#: controls.
_REFUSED = frozenset("*%/\\") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}

_SYSTEM_BY_LOWER = {flag.lower(): flag for flag in SYSTEM_FLAGS}
#: The longest keyword, and how many keywords one message may carry.
MAX_KEYWORD = 100
MAX_KEYWORDS = 64


def isInbox(name: str) -> bool:
    return name.upper() == "INBOX"


def normalizeName(name: str) -> str:
    """
    The canonical form of a folder name: C{INBOX} in any case (also as the
    first level of a longer name) becomes C{"INBOX"}.

    @raise BadFolderName: an empty level, a refused character, too long
        or too deep.
    """
    if not isinstance(name, str):
        raise BadFolderName(name=name, reason="it is not text")
    levels = name.split(DELIMITER)
    if isInbox(levels[0]):
        levels[0] = "INBOX"
        name = DELIMITER.join(levels)
    if any(level == "" for level in levels):
        raise BadFolderName(name=name, reason="it has an empty level")
    if any(c in _REFUSED for c in name):
        raise BadFolderName(name=name, reason="it holds a character folders cannot have")
    if len(levels) > MAX_DEPTH:
        raise BadFolderName(name=name, reason="it is nested more than %d levels deep" % (MAX_DEPTH,))
    if len(encodeName(name)) > MAX_NAME_OCTETS:
        raise BadFolderName(name=name, reason="it is too long")
    return name


def encodeName(name: str) -> str:
    """A folder name as its directory under the Maildir has it (without the leading dot)."""
    return name.encode("imap4-utf-7").decode("ascii")


def decodeName(encoded: str) -> Optional[str]:
    """The inverse of L{encodeName}; L{None} for a name that is not modified UTF-7."""
    try:
        return encoded.encode("ascii").decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        return None


def parents(name: str) -> List[str]:
    """C{"a.b.c"} -> C{["a", "a.b"]}."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


def isBelow(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + DELIMITER)


def folderListing(existing: Iterable[Tuple[str, Optional[str]]], subscribed: Iterable[str]) -> List[FolderInfo]:
    """
    The answer of L{IMailAccount.listFolders}: every folder, every name
    that exists only as a parent (C{selectable=False, hasChildren=True}),
    and every subscribed name that does not exist (C{selectable=False,
    hasChildren=False}: LIST (SUBSCRIBED) reports it C{\\NonExistent}),
    sorted by name, the inbox first.

    @param existing: C{(name, specialUse)} of the folders that exist.
    """
    uses = dict(existing)
    subscribed = set(subscribed)
    names = set(uses) | subscribed
    for name in list(uses):
        names.update(parents(name))
    withChildren = set()
    for name in uses:
        withChildren.update(parents(name))
    result = []
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        result.append(
            FolderInfo(
                name=name,
                specialUse=uses.get(name),
                subscribed=name in subscribed,
                hasChildren=name in withChildren,
                selectable=name in uses,
            )
        )
    return result


def normalizeFlags(flags: Iterable[str]) -> FrozenSet[str]:
    """
    System flags in their canonical case; keywords as given, one of each
    case-insensitively; C{\\Recent} (per session) and unknown
    backslash-flags dropped, as are keywords beyond the bounds.
    """
    result = {}
    for flag in flags:
        lower = flag.lower()
        if lower.startswith("\\"):
            system = _SYSTEM_BY_LOWER.get(lower)
            if system is not None:
                result[lower] = system
            continue
        if not flag or len(flag) > MAX_KEYWORD or lower in result:
            continue
        if any(c <= " " or c in '(){%*"\\]' or c == "\x7f" for c in flag):
            continue
        result[lower] = flag
    keywords = [k for k in result if not k.startswith("\\")]
    for extra in keywords[MAX_KEYWORDS:]:
        del result[extra]
    return frozenset(result.values())


def applyFlags(current: FrozenSet[str], flags: FrozenSet[str], mode: str) -> FrozenSet[str]:
    """
    STORE: C{"+"} adds C{flags}, C{"-"} removes them, C{""} replaces;
    keywords compare case-insensitively (an existing keyword keeps its
    case).
    """
    flags = normalizeFlags(flags)
    if mode == "":
        return flags
    lower = {f.lower() for f in flags}
    if mode == "-":
        return frozenset(f for f in current if f.lower() not in lower)
    if mode == "+":
        have = {f.lower() for f in current}
        return normalizeFlags(list(current) + [f for f in flags if f.lower() not in have])
    raise ValueError("mode must be '+', '-' or ''")


class LineEndings:
    """
    Normalises a message APPENDed by a client into the stored form: CRLF,
    a bare CR and a bare LF each become one LF.  Counts the octets stored
    and the octets of the wire form (each LF sent as CRLF).
    """

    def __init__(self) -> None:
        self._pendingCR = False
        self.stored = 0
        self.lines = 0

    @property
    def wire(self) -> int:
        return self.stored + self.lines

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._pendingCR:
            data = b"\r" + data
            self._pendingCR = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pendingCR = True
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self.stored += len(data)
        self.lines += data.count(b"\n")
        return data

    def flush(self) -> bytes:
        if self._pendingCR:
            self._pendingCR = False
            self.stored += 1
            self.lines += 1
            return b"\n"
        return b""
