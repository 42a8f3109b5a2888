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

import os
import re
import shutil
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import twisted.mail.imap4  # noqa: F401 -- registers the "imap4-utf-7" codec
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mailnet.errors import BadFolderName, CannotDeleteFolder, FolderExists, NoSuchFolder
from mailnet.interfaces import IFolder, IMailAccount, IMessageReceiver
from mailnet.store.maildir import SPOOL_IN_MEMORY, ensureMaildir, fsyncDirectory, uniqueName, withFlags
from mailnet.store.records import DEFAULT_FOLDERS, DELIMITER, SYSTEM_FLAGS, FolderInfo, FolderStatus

if TYPE_CHECKING:
    from mailnet.store.index import FolderIndex

log = Logger()

#: The subscription list's file name in the Maildir root (as Dovecot's).
SUBSCRIPTIONS = "subscriptions"

#: The longest folder name: the whole name is one directory name on disk.
MAX_NAME_OCTETS = 200
#: The deepest hierarchy.
MAX_DEPTH = 16
#: The most folders (and, separately, subscribed names) one account may have:
#: CREATE and SUBSCRIBE come from the network.
MAX_FOLDERS = 5000
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


def _defaultUse(name: str) -> Optional[str]:
    return dict(DEFAULT_FOLDERS).get(name)


def readSubscriptions(path: str) -> List[str]:
    """
    Dovecot's C{subscriptions} file: one name per line (modified UTF-7,
    C{.} between levels), or Dovecot 2.3's version 2 (a C{V\\t2} line, an
    empty line, then UTF-8 names with a tab between levels).
    """
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    names: List[str] = []
    if lines and lines[0].startswith("V\t"):
        lines = lines[lines.index("") + 1 :] if "" in lines else []
        candidates = [line.replace("\t", DELIMITER) for line in lines]
    else:
        candidates = [decodeName(line) or line for line in lines]
    for candidate in candidates:
        try:
            name = normalizeName(candidate)
        except BadFolderName:
            continue
        if name not in names:
            names.append(name)
    return names


def writeSubscriptions(path: str, names: Iterable[str]) -> None:
    """Replace the subscription list durably (written, synced, renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write("".join(encodeName(n) + "\n" for n in names).encode("ascii"))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsyncDirectory(os.path.dirname(path) or ".")


@implementer(IMailAccount)
class MaildirAccount:
    """
    One user's Maildir++ folders and index; see L{AccountRegistry} for how
    the sessions of a process share it.

    Every disk operation runs in the thread pool, one at a time per
    account (a L{DeferredLock}); the SQLite transactions of
    L{mailnet.store.index} keep other processes out meanwhile.
    """

    def __init__(
        self,
        address: str,
        path: str,
        run: Callable[..., Deferred],
        watcher=None,
        parse: Optional[Callable] = None,
        load: Optional[Callable] = None,
        hostname: str = "",
    ) -> None:
        from mailnet.store.index import AccountIndex

        self.address = address
        self.path = path
        self._run = run
        self._watcher = watcher
        self._parse = parse
        self._load = load
        self._hostname = hostname
        self._index: AccountIndex = AccountIndex(path)
        self._indexes: Dict[str, "FolderIndex"] = {}
        self._folders: Dict[str, "MaildirFolder"] = {}
        self._lock = DeferredLock()
        self._ready = False
        self._refs = 0

    # -- on the reactor thread -------------------------------------------

    def _do(self, f: Callable, *args) -> Deferred:
        """Run C{f(*args)} in the thread pool, after the account's other operations."""
        return self._lock.run(self._run, f, *args)

    def _notify(self, *names: str) -> None:
        for name in names:
            folder = self._folders.get(name)
            if folder is not None:
                folder._notify()

    def _then(self, d: Deferred, *names: str) -> Deferred:
        def notify(result):
            self._notify(*names)
            return result

        return d.addCallback(notify)

    def _ready_(self) -> Deferred:
        """Fires once the Maildir and the default folders exist."""
        if self._ready:
            return succeed(None)
        return self._do(self._prepare)

    def listFolders(self) -> Deferred:
        return self._do(self._listFolders)

    def createFolder(self, name: str, specialUse: Optional[str] = None) -> Deferred:
        return self._do(self._createFolder, name, specialUse)

    def deleteFolder(self, name: str) -> Deferred:
        def deleted(name: str) -> None:
            folder = self._folders.pop(name, None)
            if folder is not None:
                folder._notify()

        return self._do(self._deleteFolder, name).addCallback(deleted)

    def renameFolder(self, oldName: str, newName: str) -> Deferred:
        def renamed(moves: List[Tuple[str, str]]) -> None:
            opened = [(new, self._folders.pop(old)) for old, new in moves if old in self._folders]
            for new, folder in opened:
                folder.name = new
                self._folders[new] = folder
                folder._rewatch()
            if not moves:
                self._notify("INBOX")

        return self._do(self._renameFolder, oldName, newName).addCallback(renamed)

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred:
        return self._do(self._setSubscribed, name, subscribed)

    def status(self, name: str) -> Deferred:
        return self._do(self._status, name)

    def openFolder(self, name: str) -> Deferred:
        def opened(index: "FolderIndex") -> "MaildirFolder":
            folder = self._folders.get(index.name)
            if folder is None or folder._index is not index:
                folder = self._folders[index.name] = MaildirFolder(self, index)
            folder._refs += 1
            return folder

        return self._do(self._openFolder, name).addCallback(opened)

    def append(self, name: str, flags: FrozenSet[str], internalDate: Optional[float]) -> "AppendReceiver":
        return AppendReceiver(self, name, frozenset(flags), internalDate)

    def shutdown(self) -> Deferred:
        """Close the index (the last session of the account is gone)."""
        for folder in list(self._folders.values()):
            folder._stopWatching()
        self._folders.clear()
        return self._do(self._index.close)

    # -- in the thread pool, one at a time ---------------------------------

    def _folderPath(self, name: str) -> str:
        return self.path if name == "INBOX" else os.path.join(self.path, "." + encodeName(name))

    def _folderIndex(self, name: str) -> "FolderIndex":
        from mailnet.store.index import FolderIndex

        self._prepare()
        name = normalizeName(name)
        index = self._indexes.get(name)
        if index is None:
            index = self._indexes[name] = FolderIndex(self._index, name, self._folderPath(name), self._hostname)
        return index

    def _prepare(self) -> None:
        """Create the Maildir, and the default folders of an account that has none."""
        if self._ready:
            return
        ensureMaildir(self.path)
        subscriptions = os.path.join(self.path, SUBSCRIPTIONS)
        if not os.path.exists(subscriptions) and not any(os.path.isdir(self._folderPath(n)) for n, _ in DEFAULT_FOLDERS if n != "INBOX"):
            for name, use in DEFAULT_FOLDERS:
                if name != "INBOX":
                    self._makeFolder(name, use)
            writeSubscriptions(subscriptions, [name for name, _ in DEFAULT_FOLDERS])
        self._ready = True

    def _makeFolder(self, name: str, specialUse: Optional[str]) -> None:
        path = self._folderPath(name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        with open(os.path.join(path, "maildirfolder"), "ab"):
            pass
        fsyncDirectory(path)
        fsyncDirectory(self.path)
        with self._index.transaction():
            self._index.createFolderRow(name, self._index.newUidValidity(), 1, specialUse)
        self._indexes.pop(name, None)

    def _existing(self) -> List[str]:
        """The folders on disk (not the inbox)."""
        names = []
        for entry in os.scandir(self.path):
            if not entry.name.startswith(".") or entry.name.startswith("..") or not entry.is_dir():
                continue
            name = decodeName(entry.name[1:])
            if name is None or name.upper() == "INBOX":
                continue
            try:
                names.append(normalizeName(name))
            except BadFolderName:
                continue
        return names

    def _subscriptions(self) -> List[str]:
        return readSubscriptions(os.path.join(self.path, SUBSCRIPTIONS))

    def _subscribe(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        current = self._subscriptions()
        remove = set(remove)
        updated = [n for n in current if n not in remove]
        updated.extend(n for n in add if n not in updated)
        if updated != current:
            writeSubscriptions(os.path.join(self.path, SUBSCRIPTIONS), updated)

    def _listFolders(self) -> List[FolderInfo]:
        self._prepare()
        uses = self._index.specialUses()
        existing = [("INBOX", None)] + [(n, uses.get(n) or _defaultUse(n)) for n in self._existing()]
        return folderListing(existing, self._subscriptions())

    def _createFolder(self, name: str, specialUse: Optional[str]) -> None:
        self._prepare()
        name = normalizeName(name[:-1] if name.endswith(DELIMITER) else name)
        if name == "INBOX" or os.path.isdir(self._folderPath(name)):
            raise FolderExists(name=name)
        missing = [p for p in parents(name) if p != "INBOX" and not os.path.isdir(self._folderPath(p))]
        if 1 + len(self._existing()) + len(missing) + 1 > MAX_FOLDERS:
            raise BadFolderName(name=name, reason="an account holds at most %d folders" % (MAX_FOLDERS,))
        for parent in parents(name):
            if parent != "INBOX" and not os.path.isdir(self._folderPath(parent)):
                self._makeFolder(parent, None)
        self._makeFolder(name, specialUse)
        self._subscribe(add=[name])

    def _deleteFolder(self, name: str) -> str:
        self._prepare()
        name = normalizeName(name)
        if name == "INBOX":
            raise CannotDeleteFolder(name=name, reason="the inbox is always there")
        path = self._folderPath(name)
        if not os.path.isdir(path):
            raise NoSuchFolder(name=name)
        trash = os.path.join(self.path, "tmp", "mailnet-deleted-" + uniqueName(self._hostname))
        os.rename(path, trash)
        fsyncDirectory(self.path)
        with self._index.transaction():
            self._index.dropFolder(name)
        self._indexes.pop(name, None)
        self._subscribe(remove=[name])
        shutil.rmtree(trash, ignore_errors=True)
        return name

    def _renameFolder(self, oldName: str, newName: str) -> List[Tuple[str, str]]:
        self._prepare()
        old = normalizeName(oldName)
        new = normalizeName(newName)
        if not os.path.isdir(self._folderPath(old)):
            raise NoSuchFolder(name=old)
        if new == "INBOX" or os.path.isdir(self._folderPath(new)):
            raise FolderExists(name=new)
        if new == old or isBelow(new, old):
            raise BadFolderName(name=new, reason="a folder cannot move below itself")
        if old == "INBOX":
            self._renameInbox(new)
            return []
        moves = [(n, new + n[len(old) :]) for n in [old] + sorted(n for n in self._existing() if isBelow(n, old))]
        for _, target in moves:
            normalizeName(target)
            if os.path.isdir(self._folderPath(target)):
                raise FolderExists(name=target)
        for parent in parents(new):
            if parent != "INBOX" and not os.path.isdir(self._folderPath(parent)):
                self._makeFolder(parent, None)
        for source, target in moves:
            os.rename(self._folderPath(source), self._folderPath(target))
        fsyncDirectory(self.path)
        with self._index.transaction():
            for source, target in moves:
                self._index.renameFolderRow(source, target)
        for source, target in moves:
            index = self._indexes.pop(source, None)
            if index is not None:
                index.name, index.path = target, self._folderPath(target)
                self._indexes[target] = index
        subscribed = set(self._subscriptions())
        self._subscribe(add=[t for s, t in moves if s in subscribed], remove=[s for s, _ in moves if s in subscribed])
        return moves

    def _renameInbox(self, new: str) -> None:
        """RFC 9051 §6.3.6: the inbox's messages move to a new folder; the inbox stays, empty."""
        for parent in parents(new):
            if not os.path.isdir(self._folderPath(parent)):
                self._makeFolder(parent, None)
        self._makeFolder(new, None)
        target = self._folderPath(new)
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.path, sub)):
                if not name.startswith("."):
                    os.rename(os.path.join(self.path, sub, name), os.path.join(target, sub, name))
            fsyncDirectory(os.path.join(self.path, sub))
            fsyncDirectory(os.path.join(target, sub))
        self._folderIndex("INBOX").sync(force=True)
        self._folderIndex(new).sync(force=True)
        self._subscribe(add=[new])

    def _setSubscribed(self, name: str, subscribed: bool) -> None:
        self._prepare()
        name = normalizeName(name)
        if subscribed:
            if name not in self._subscriptions() and len(self._subscriptions()) >= MAX_FOLDERS:
                raise BadFolderName(name=name, reason="at most %d names can be subscribed" % (MAX_FOLDERS,))
            self._subscribe(add=[name])
        else:
            self._subscribe(remove=[name])

    def _status(self, name: str) -> FolderStatus:
        index = self._folderIndex(name)
        state = index.sync()
        unseen = deleted = size = recent = 0
        for record in state.messages:
            flags = record.flags
            if "\\Seen" not in flags:
                unseen += 1
            if "\\Deleted" in flags:
                deleted += 1
            if record.uid >= index.firstRecent:
                recent += 1
            size += record.size
        return FolderStatus(
            messages=len(state.messages),
            unseen=unseen,
            uidNext=state.uidNext,
            uidValidity=state.uidValidity,
            size=size,
            highestModSeq=state.highestModSeq,
            deleted=deleted,
            recent=recent,
        )

    def _openFolder(self, name: str) -> "FolderIndex":
        index = self._folderIndex(name)
        index.sync()
        return index


_STORED_SIZE = re.compile(r",S=(\d+)")


def _storedSize(folderPath: str, file: Optional[str]) -> int:
    """A message file's size as stored: its name's C{S=}, else a C{stat}."""
    if file is None:
        return 0
    match = _STORED_SIZE.search(file)
    if match:
        return int(match.group(1))
    try:
        return os.stat(os.path.join(folderPath, file)).st_size
    except OSError:
        return 0


@implementer(IFolder)
class MaildirFolder:
    """
    The L{IFolder} of a L{MaildirAccount}: one per folder and account,
    shared by the sessions that have it open.
    """

    def __init__(self, account: MaildirAccount, index: "FolderIndex") -> None:
        self._account = account
        self._index = index
        self.name = index.name
        self._refs = 0
        self._watchers: List[Callable[[], None]] = []
        self._stopDisk: Optional[Callable[[], None]] = None

    @property
    def uidValidity(self) -> int:
        return self._index.uidValidity

    def _notify(self) -> None:
        for callback in list(self._watchers):
            try:
                callback()
            except Exception:
                log.failure("A folder watcher failed")

    def sync(self) -> Deferred:
        return self._account._do(self._index.sync)

    def claimRecent(self) -> Deferred:
        return self._account._do(self._index.claimRecent)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(callback)
        self._startWatching()

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)
            if not self._watchers:
                self._stopWatching()

        return stop

    def _startWatching(self) -> None:
        watcher = self._account._watcher
        if self._stopDisk is None and watcher is not None and self._watchers:
            path = self._index.path
            self._stopDisk = watcher.watch([os.path.join(path, "new"), os.path.join(path, "cur")], self._notify)

    def _rewatch(self) -> None:
        """The folder moved (RENAME): watch its new directories."""
        if self._stopDisk is not None:
            self._stopWatching()
            self._startWatching()

    def _stopWatching(self) -> None:
        stop, self._stopDisk = self._stopDisk, None
        if stop is not None:
            stop()

    def setFlags(self, uids, flags, mode: str, unchangedSince: Optional[int] = None) -> Deferred:
        def done(result):
            if result[0]:
                self._notify()
            return result

        return self._account._do(self._index.setFlags, list(uids), frozenset(flags), mode, unchangedSince).addCallback(done)

    def expunge(self, uids=None) -> Deferred:
        def done(gone):
            if gone:
                from mailnet import quota

                quota.forget(self._account.path)  # the quota's usage is counted again
                self._notify()
            return gone

        return self._account._do(self._index.expunge, None if uids is None else list(uids)).addCallback(done)

    def copy(self, uids, target: str) -> Deferred:
        return self._copy(uids, target, False)

    def move(self, uids, target: str) -> Deferred:
        return self._copy(uids, target, True)

    def _copy(self, uids, target: str, move: bool) -> Deferred:
        def copy():
            into = self._account._folderIndex(target)
            answer = self._index.copy(list(uids), into, move)
            if not move and answer[1]:
                # The quota's usage grows at once (a MOVE leaves the
                # account's total as it was): the copies' stored sizes.
                from mailnet import quota

                octets = sum(_storedSize(into.path, into.files.get(new)) for _, new in answer[1])
                quota.delivered(self._account.path, octets, len(answer[1]))
            return into.name, answer

        def done(result):
            name, answer = result
            if move and answer[1]:
                self._notify()
            if answer[1]:
                self._account._notify(name)
            return answer

        return self._account._do(copy).addCallback(done)

    def parsed(self, uids) -> Deferred:
        from mailnet import mime

        parse = self._account._parse or mime.parseMessage
        load = self._account._load or mime.ParsedMessage.fromBytes
        return self._account._do(self._index.parsed, list(uids), parse, load)

    def openMessage(self, uid: int) -> Deferred:
        return self._account._run(self._index.openMessage, uid)

    def openMessageBlocking(self, uid: int) -> IO[bytes]:
        """
        L{openMessage} for code already running in the thread pool (SEARCH
        BODY reads each file there, in the same call that tests it, rather
        than paying a thread round trip per message).  Blocking.

        @raise MessageGone: the message is not there (any more).
        """
        return self._index.openMessage(uid)

    def close(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            if self._account._folders.get(self.name) is self:
                del self._account._folders[self.name]
            self._watchers = []
            self._stopWatching()


@implementer(IMessageReceiver)
class AppendReceiver:
    """
    APPEND into a L{MaildirAccount} folder: the message is normalised
    (L{LineEndings}), kept in memory while small and written to the
    folder's C{tmp/} otherwise; L{finish} syncs the file, gives it the
    internal date as mtime, and moves it into C{cur/} with its flags in the
    name and C{S=}/C{W=} sizes, then indexes it.
    """

    def __init__(self, account: MaildirAccount, name: str, flags: FrozenSet[str], internalDate: Optional[float]) -> None:
        self._account = account
        self._flags = normalizeFlags(flags)
        self._internalDate = internalDate
        self._lines = LineEndings()
        self._chunks: List[bytes] = []
        self._file: Optional[IO[bytes]] = None
        self._opening: Optional[Deferred] = None
        self._error: Optional[Exception] = None
        self._done = False
        self._aborted = False
        self._key = uniqueName(account._hostname)
        self._name = ""
        self._tmp = ""
        try:
            self._name = normalizeName(name)
        except BadFolderName:
            self._error = NoSuchFolder(name=name)
            return
        self._tmp = os.path.join(account._folderPath(self._name), "tmp", self._key)

    def write(self, data: bytes) -> None:
        assert not self._done, "write after finish or abort"
        self._store(self._lines.feed(data))

    def _store(self, data: bytes) -> None:
        if self._error is not None or not data:
            return
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._lines.stored > SPOOL_IN_MEMORY and self._opening is None:
            self._opening = self._account._ready_().addCallback(lambda _: self._account._run(self._openTmp))
            self._opening.addCallbacks(self._opened, self._failed)

    def _opened(self, f: IO[bytes]) -> None:
        if self._aborted:
            f.close()
            _unlinkQuietly(self._tmp)
            return
        f.writelines(self._chunks)
        self._file, self._chunks = f, []

    def _failed(self, failure) -> None:
        self._error = failure.value
        self._chunks = []

    def _openTmp(self) -> IO[bytes]:
        try:
            return open(self._tmp, "xb")
        except FileNotFoundError:
            if self._name == "INBOX":
                ensureMaildir(self._account.path)
                return open(self._tmp, "xb")
            raise NoSuchFolder(name=self._name)

    def finish(self) -> Deferred:
        assert not self._done, "finish twice"
        self._done = True
        self._store(self._lines.flush())
        if self._opening is not None:
            opening, self._opening = self._opening, None
            return opening.addCallback(lambda _: self._finish())
        return self._finish()

    def _finish(self) -> Deferred:
        if self._error is not None:
            self._discard()
            return fail(self._error)
        f, chunks, self._file, self._chunks = self._file, self._chunks, None, []
        date = time.time() if self._internalDate is None else float(self._internalDate)
        stored, wire = self._lines.stored, self._lines.wire

        def write() -> Optional[bytes]:
            target = f if f is not None else self._openTmp()
            try:
                if f is None:
                    target.writelines(chunks)
                target.flush()
                os.fsync(target.fileno())
            finally:
                target.close()
            os.utime(self._tmp, (date, date))
            return self._parse()

        def publish(parsed: Optional[bytes]) -> Tuple[int, int]:
            index = self._account._folderIndex(self._name)
            name = withFlags("%s,S=%d,W=%d" % (self._key, stored, wire), self._flags & SYSTEM_FLAGS)
            uid = index.add(self._tmp, self._key, name, self._flags, date, wire, parsed)
            from mailnet import quota

            quota.delivered(self._account.path, stored)  # the quota's usage
            return index.uidValidity, uid

        def failed(failure):
            _unlinkQuietly(self._tmp)
            return failure

        d = self._account._ready_().addCallback(lambda _: self._account._run(write))
        d.addCallback(lambda parsed: self._account._do(publish, parsed))
        d.addErrback(failed)
        return self._account._then(d, self._name)

    def _parse(self) -> Optional[bytes]:
        """
        The message's parsed form, made now while its file is in the page
        cache (a client's first FETCH ENVELOPE/BODYSTRUCTURE of what it
        APPENDed then reads the index only).  L{None} if it cannot be had:
        the message is parsed on first use instead.
        """
        from mailnet import mime

        parse = self._account._parse or mime.parseMessage
        try:
            with open(self._tmp, "rb") as stored:
                parsed = parse(stored)
        except NotImplementedError:
            return None
        except Exception:
            log.failure("Could not parse an APPENDed message")
            return None
        toBytes = getattr(parsed, "toBytes", None)
        try:
            return toBytes() if toBytes is not None else None
        except NotImplementedError:
            return None

    def _discard(self) -> None:
        f, self._file, self._chunks = self._file, None, []
        if f is not None:
            f.close()
            _unlinkQuietly(self._tmp)

    def abort(self) -> None:
        self._done = self._aborted = True
        if self._opening is not None:
            self._opening.addErrback(lambda failure: None)
        self._discard()


def _unlinkQuietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Seconds an account nobody uses stays open (see L{AccountRegistry.release}).
LINGER = 60.0
#: Accounts kept open that way at most.
MAX_LINGERING = 64


class AccountRegistry:
    """
    The process's L{MaildirAccount}s: sessions of one user (IMAP, and
    whatever else asks the realm) share one account object, and through it
    the folder objects and their change notifications.

    @param mailStore: the L{mailnet.store.maildir.MaildirStore} (for
        C{pathFor}).
    @param run: runs blocking work in the thread pool.
    @param watcher: watches directories for other processes' changes
        (L{mailnet.store.watch}); L{None}: only this process's changes are
        announced.
    @param parse: parses a stored message (L{mailnet.mime.parseMessage}
        by default); C{load} reads a cached parse back
        (L{mailnet.mime.ParsedMessage.fromBytes} by default).
    """

    def __init__(
        self, mailStore, run: Callable[..., Deferred], watcher=None, parse=None, load=None, hostname: str = "", clock=None
    ) -> None:
        self._mailStore = mailStore
        self._run = run
        self.watcher = watcher
        self._parse = parse
        self._load = load
        self._hostname = hostname or getattr(mailStore, "_hostname", "")
        self._accounts: Dict[str, MaildirAccount] = {}
        self._clock = clock
        self._lingering: Dict[str, Any] = {}

    def open(self, address: str) -> MaildirAccount:
        """
        The account of C{address}; the caller calls L{release} when done.

        @raise mailnet.errors.BadAddress: not a possible mailbox.
        """
        address = address.lower()
        account = self._accounts.get(address)
        call = self._lingering.pop(address, None)
        if call is not None and call.active():
            call.cancel()
        if account is None:
            path = self._mailStore.pathFor(address)
            account = MaildirAccount(address, path, self._run, self.watcher, self._parse, self._load, self._hostname)
            self._accounts[address] = account
        account._refs += 1
        return account

    def release(self, account: MaildirAccount) -> None:
        """
        A user of C{account} is done with it.  The last one's account stays
        open for L{LINGER} seconds (with a clock; at most L{MAX_LINGERING}
        accounts): a client that connects again soon (a poll, a new
        session) finds its folders' messages and parsed headers in memory.
        """
        account._refs -= 1
        if account._refs > 0 or self._accounts.get(account.address) is not account:
            return
        if self._clock is not None and LINGER > 0 and len(self._lingering) < MAX_LINGERING:
            self._lingering[account.address] = self._clock.callLater(LINGER, self._close, account)
            return
        self._close(account)

    def _close(self, account: MaildirAccount) -> None:
        self._lingering.pop(account.address, None)
        if account._refs > 0 or self._accounts.get(account.address) is not account:
            return
        del self._accounts[account.address]
        account.shutdown().addErrback(lambda f: log.failure("Closing the index of {address} failed", f, address=account.address))

    def closeIdle(self) -> None:
        """
        Close the accounts nobody uses now, at once, and from now on each
        account when its last user is done (the server is stopping).
        """
        self._clock = None
        for address, call in list(self._lingering.items()):
            if call.active():
                call.cancel()
            account = self._accounts.get(address)
            if account is not None:
                self._close(account)
        self._lingering.clear()

    def active(self) -> List[str]:
        """The addresses with an account in use."""
        return sorted(self._accounts)
