# -*- test-case-name: tests.test_maildir -*-
"""
Maildir storage (the format of qmail, Dovecot and mutt: C{tmp/ new/ cur/}).

Delivery is durable before it is acknowledged: the message is written into
C{tmp/}, flushed and fsync'd, linked into C{new/} of each mailbox, and the
directories are fsync'd.  All of that runs in a thread pool; only buffered
writes happen on the reactor thread.  With a delivery journal
(L{mailnet.store.journal}), a message held in memory is made durable by a
journal record instead, shared sync and all, and published without syncs.

Files use the local line ending (LF), as Postfix and Dovecot write them
and as mutt expects.  mailnet accepts no message with a bare CR or LF, so
turning each CRLF into LF loses nothing: POP3 turns them back and sends the
message exactly as it was received.  The file name carries both sizes, in
Dovecot's form: C{S=} the file's, C{W=} the message's on the wire (CRLF),
which is what POP3 LIST reports.
"""

import itertools
import functools
import os
import socket
import threading
import time
from typing import IO, Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import attr
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailnet import metrics, quota
from mailnet.address import isSafeMailboxName, splitAddress
from mailnet.errors import BadAddress, MessageGone
from mailnet.interfaces import IDeliveryJournal, IMaildir, IMailStore, IMessageReceiver

log = Logger()

_counter = itertools.count()
#: L{mailnet.store.journal.JournalRecord}, once a receiver has used it.
JournalRecord: Any = None
_SUBDIRS = ("tmp", "new", "cur")


@functools.lru_cache(maxsize=64)
def _safeHost(host: str) -> str:
    # Cached: the same host name for every delivery (issue 14).
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "/:," else "_" for c in host)[:30]


def uniqueName(hostname: Optional[str] = None) -> str:
    """
    A Maildir unique name (the modern form: C{secs.MusecPpidQn.host}).
    Characters outside 0x21-0x7E and C{/ :} are replaced in the host part,
    so the name is a valid POP3 UIDL.
    """
    now = time.time()
    host = hostname or socket.gethostname()
    host = _safeHost(host)
    return "%d.M%dP%dQ%d.%s" % (int(now), int((now % 1) * 1e6), os.getpid(), next(_counter), host)


def fsyncDirectory(path: str) -> None:
    """
    Make a directory's entries (a rename, a link, an unlink) durable.
    Windows cannot open directories; NTFS journals metadata, so skip there.
    """
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        metrics.timedFsync(os.fsync, fd)
    finally:
        os.close(fd)


class DirectorySyncer:
    """
    Group commit for directory syncs, called from many threads at once.

    A delivery must not be acknowledged before the directory entry that
    publishes it is on disk.  When several deliveries to one directory
    finish together, one fsync that starts after all of their links were
    made covers them all: a thread whose link is already covered by a sync
    in progress (or just finished) waits for it instead of issuing its own.
    """

    def __init__(self, sync: Callable[[str], None] = fsyncDirectory) -> None:
        self._sync = sync
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # path -> [tickets issued, highest ticket synced, sync running]
        self._state: Dict[str, List] = {}

    def sync(self, path: str) -> None:
        """
        Return once everything done to C{path} before this call is durable.

        @raise OSError: the sync that would have covered this call failed.
        """
        with self._lock:
            state = self._state.setdefault(path, [0, 0, False])
            state[0] += 1
            ticket = state[0]
            while True:
                if state[1] >= ticket:
                    return
                if not state[2]:
                    break
                self._changed.wait()
            state[2] = True
            covers = state[0]
        try:
            self._sync(path)
        except BaseException:
            with self._lock:
                state[2] = False
                self._changed.notify_all()
            raise
        with self._lock:
            state[1] = max(state[1], covers)
            state[2] = False
            if state[0] == state[1]:
                # Idle: forget it, so the table does not grow with every mailbox.
                del self._state[path]
            self._changed.notify_all()


def ensureMaildir(path: str) -> None:
    """
    Create a Maildir (and its parents) if needed; new directory entries are
    synced, so that mail delivered into them survives a crash.
    """
    if all(os.path.isdir(os.path.join(path, sub)) for sub in _SUBDIRS):
        return
    missing = []
    parent = path
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for sub in _SUBDIRS:
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    fsyncDirectory(path)
    for created in missing:
        fsyncDirectory(os.path.dirname(created) or ".")


@attr.s(frozen=True, auto_attribs=True)
class MessageInfo:
    """
    One message in a snapshot.

    @ivar uid: the Maildir unique name: stable, 1-70 chars in 0x21-0x7E.
    @ivar size: octets on the wire, with CRLF line endings (the C{W=} size
        in the file name; the file size for files written by others
        without one).
    @ivar path: where the file was at snapshot time.
    @ivar delivered: the delivery time (seconds since the epoch).
    """

    uid: str
    size: int
    path: str
    delivered: float = 0.0


def _wireSize(filename: str) -> Optional[int]:
    """The C{W=} (CRLF) size in a Dovecot-style name, if there is one."""
    for field in filename.split(":", 1)[0].split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


def _uidOf(filename: str) -> str:
    """The unique name: what precedes the C{,S=size} and C{:2,flags} parts."""
    return filename.split(":", 1)[0].split(",", 1)[0]


#: Maildir info letters of the IMAP system flags (the C{:2,} suffix).
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}


def splitInfo(filename: str) -> Tuple[str, str, str]:
    """
    A file name's parts: C{"base:2,FS,x"} -> C{("base", "FS", ",x")} (the
    part after a comma in the flags is Dovecot's, kept as it is).  A name
    without C{:2,} has no flags.
    """
    base, sep, info = filename.partition(":2,")
    if not sep:
        return filename, "", ""
    letters, comma, extra = info.partition(",")
    return base, letters, comma + extra


def flagsOf(letters: str) -> FrozenSet[str]:
    """The IMAP system flags in a Maildir info part's letters (others ignored)."""
    return frozenset(_LETTER_FLAGS[c] for c in letters if c in _LETTER_FLAGS)


def withFlags(filename: str, flags: FrozenSet[str]) -> str:
    """
    The name of a message file once its system flags are C{flags}: letters
    this module does not know (Dovecot's keyword letters, other MUAs') are
    kept; the letters are in ASCII order, as the Maildir specification says.
    """
    base, letters, extra = splitInfo(filename)
    kept = {c for c in letters if c not in _LETTER_FLAGS}
    kept.update(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS)
    return "%s:2,%s%s" % (base, "".join(sorted(kept)), extra)


@implementer(IMaildir)
class Maildir:
    """
    A Maildir on disk.

    @param run: runs a blocking callable off the reactor thread and returns
        a L{Deferred} (see L{ThreadRunner}).
    """

    def __init__(self, path: str, run: Callable[..., Deferred]) -> None:
        self.path = path
        self._run = run

    def snapshot(self) -> Deferred:
        return self._run(self._snapshot)

    def _snapshot(self) -> List[MessageInfo]:
        found = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.path, sub)
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                size = _wireSize(entry.name)
                found.append(MessageInfo(_uidOf(entry.name), stat.st_size if size is None else size, entry.path, stat.st_mtime))
        found.sort(key=lambda m: (_sortKey(m.uid, m.delivered), m.uid))
        return found

    def _locate(self, info: MessageInfo) -> str:
        if os.path.exists(info.path):
            return info.path
        return self._moved(info)

    def _moved(self, info: MessageInfo) -> str:
        """Where a message went since the snapshot (another client's new/ to cur/)."""
        cur = os.path.join(self.path, "cur")
        try:
            for name in os.listdir(cur):
                if _uidOf(name) == info.uid:
                    return os.path.join(cur, name)
        except FileNotFoundError:
            pass
        raise MessageGone(uid=info.uid)

    def open(self, info: MessageInfo) -> IO[bytes]:
        # Try the snapshot's path first: one system call in the common case.
        try:
            return open(info.path, "rb")
        except FileNotFoundError:
            pass
        try:
            return open(self._moved(info), "rb")
        except FileNotFoundError:
            raise MessageGone(uid=info.uid)

    def readWhole(self, info: MessageInfo, limit: int) -> Optional[bytes]:
        # Bare descriptors: an open file object costs five more system calls
        # (fstat twice, ioctl, lseek, a second read) per POP3 RETR.
        try:
            fd = os.open(info.path, os.O_RDONLY)
        except FileNotFoundError:
            try:
                fd = os.open(self._moved(info), os.O_RDONLY)
            except FileNotFoundError:
                raise MessageGone(uid=info.uid)
        try:
            # The listed size fits the file (files hold LF, the size counts
            # CRLF): usually one read for the data, one that finds the end,
            # done here before the general loop.
            want = min(info.size, limit) + 1
            first = os.read(fd, want)
            total = len(first)
            if not total or total > limit:
                return None if total else first
            piece = os.read(fd, limit + 1 - total)
            if not piece:
                return first
            pieces: List[bytes] = [first, piece]
            total += len(piece)
            want = limit + 1 - total
            while total <= limit:
                piece = os.read(fd, want)
                if not piece:
                    return b"".join(pieces)
                pieces.append(piece)
                total += len(piece)
                want = limit + 1 - total
            return None
        finally:
            os.close(fd)

    def markSeen(self, infos: Sequence[MessageInfo]) -> Deferred:
        return self._run(self._markSeen, list(infos))

    def _markSeen(self, infos: List[MessageInfo]) -> None:
        moved = False
        for info in infos:
            directory, name = os.path.split(info.path)
            if os.path.basename(directory) != "new":
                continue
            target = os.path.join(self.path, "cur", name + ":2,S")
            try:
                os.rename(info.path, target)
                moved = True
            except FileNotFoundError:
                pass
        if moved:
            fsyncDirectory(os.path.join(self.path, "new"))
            fsyncDirectory(os.path.join(self.path, "cur"))

    def remove(self, infos: Sequence[MessageInfo]) -> Deferred:
        return self._run(self._remove, list(infos))

    def _remove(self, infos: List[MessageInfo]) -> None:
        touched = set()
        for info in infos:
            try:
                path = self._locate(info)
                os.unlink(path)
                touched.add(os.path.dirname(path))
            except (MessageGone, FileNotFoundError):
                pass
        quota.forget(self.path)  # counted again when next asked
        for directory in touched:
            fsyncDirectory(directory)


def _sortKey(uid: str, delivered: float) -> float:
    """Arrival order: the delivery second and microsecond in the unique name."""
    try:
        secs, rest = uid.split(".", 2)[:2]
        usec = rest.split("P", 1)[0].lstrip("M") if rest.startswith("M") else "0"
        return int(secs) + int(usec) / 1e6
    except ValueError:
        return delivered


class ThreadRunner:
    """
    Runs blocking disk work on a thread pool and returns Deferreds.
    """

    def __init__(self, reactor, pool: Optional[ThreadPool] = None) -> None:
        self._reactor = reactor
        self._pool = pool if pool is not None else reactor.getThreadPool()

    def __call__(self, f: Callable, *args, **kwargs) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)


def runSynchronously(f: Callable, *args, **kwargs) -> Deferred:
    """A runner for tests and tools: do the work now, return a fired Deferred."""
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args, **kwargs)


#: Messages up to this size stay in memory until L{MaildirReceiver.finish},
#: which creates, writes and syncs the file in one go off the reactor
#: thread (creating a file costs as much as writing kilobytes).  Larger
#: messages spill to C{tmp/} as they arrive, so memory stays bounded.
SPOOL_IN_MEMORY = 64 * 1024


@implementer(IMessageReceiver)
class MaildirReceiver:
    """
    Receives one message and delivers it to one or more Maildirs.

    The bytes are kept in memory (small messages) or written to a file in
    the first mailbox's C{tmp/} (large ones; the file is created in the
    thread pool, and what arrives meanwhile waits in memory); L{finish}
    writes and fsyncs the file, hard-links it into every mailbox's C{new/}
    (a copy where links are impossible) and fsyncs those directories.
    Maildirs are created on first delivery.

    With a C{journal}, a message still in memory at L{finish} is handed to
    it instead: L{finish} fires once its record is synced, and the journal
    publishes it (L{mailnet.store.journal.DeliveryJournal.deliver}).
    """

    def __init__(
        self,
        maildirs: Sequence[str],
        header: bytes,
        run: Callable[..., Deferred],
        hostname: str,
        syncer: Optional[DirectorySyncer] = None,
        journal: Optional[IDeliveryJournal] = None,
    ) -> None:
        self._maildirs = list(maildirs)
        self._journal = journal
        self._run = run
        self._syncDirectory = (syncer or DirectorySyncer()).sync
        self._name = uniqueName(hostname)
        self._tmp = os.path.join(self._maildirs[0], "tmp", self._name)
        self._file: Optional[IO[bytes]] = None
        self._chunks: List[bytes] = []
        self._wireSize = 0  # octets received (CRLF)
        self._size = 0  # octets stored (LF)
        self._opening: Optional[Deferred] = None  # creating the tmp/ file
        self._done = False
        self._aborted = False
        self._folder: Optional[str] = None  # a Maildir++ folder instead of the inbox
        self.write(header)

    def fileInto(self, folder: str) -> None:
        """
        Publish into a folder of each mailbox instead of its inbox: the
        Maildir++ folder C{.NAME} that IMAP shows as C{folder} (a message
        that DMARC asks to quarantine goes to C{Junk}).  A mailbox without
        that folder (a POP3-only user, who would never see it) gets the
        message in its inbox.  Call it before L{finish}.
        """
        # Imported here: the folder store builds on this module.
        from mailnet.store.folders import encodeName

        self._folder = "." + encodeName(folder)

    def write(self, data: bytes) -> None:
        assert not self._done, "write after finish or abort"
        self._wireSize += len(data)
        # Every CR ends a CRLF (the SMTP server refuses bare CRs), so
        # dropping them all is CRLF -> LF, and eight times faster than
        # replacing the pairs (a single-octet search), whatever the chunking.
        self._store(data.replace(b"\r", b""))

    def _store(self, data: bytes) -> None:
        self._size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._size > SPOOL_IN_MEMORY and self._opening is None:
            # A large message: to the file from here on (creating a file
            # can take a millisecond, so not on the reactor thread).
            self._opening = self._run(self._openTmp)
            self._opening.addCallback(self._opened)

    def _opened(self, f: IO[bytes]) -> None:
        if self._aborted:
            f.close()
            _unlinkQuietly(self._tmp)
            return
        # Buffered writes, no sync yet; finish() syncs.
        f.writelines(self._chunks)
        self._file, self._chunks = f, []

    def _openTmp(self) -> IO[bytes]:
        try:
            return open(self._tmp, "xb")
        except FileNotFoundError:
            ensureMaildir(self._maildirs[0])
            return open(self._tmp, "xb")

    def finish(self) -> Deferred:
        assert not self._done, "finish twice"
        self._done = True
        if self._opening is not None:
            # Publish once the file exists (or fail as its creation did).
            opening, self._opening = self._opening, None
            return opening.addCallback(lambda _: self._finish())
        return self._finish()

    def _finish(self) -> Deferred:
        f, chunks, self._file, self._chunks = self._file, self._chunks, None, []
        if f is None and self._journal is not None:
            journaled = self._journalize(chunks)
            if journaled is not None:
                return journaled

        def publish() -> str:
            try:
                target = f
                if target is None:
                    target = self._openTmp()
                    target.writelines(chunks)
                try:
                    target.flush()
                    metrics.timedFsync(os.fsync, target.fileno())
                finally:
                    target.close()
                self._publish("%s,S=%d,W=%d" % (self._name, self._size, self._wireSize))
                metrics.recipients("delivered", len(self._maildirs))
                for maildir in self._maildirs:
                    quota.delivered(maildir, self._size)
            finally:
                _unlinkQuietly(self._tmp)
            return self._name

        return self._run(publish)

    def _journalize(self, chunks: List[bytes]) -> Optional[Deferred]:
        """
        Hand a message held in memory to the journal: acknowledged once its
        record is synced, published right after.  L{None} if the journal
        does not take it (then the message is synced here, as without one).
        """
        global JournalRecord
        if JournalRecord is None:
            # Imported on first use (the journal builds on this module);
            # then kept, not imported again for every message.
            from mailnet.store.journal import JournalRecord
        journal = self._journal
        root = journal.root  # type: ignore[union-attr]
        prefix = len(root) + 1
        record = JournalRecord(
            name="%s,S=%d,W=%d" % (self._name, self._size, self._wireSize),
            # The mailboxes are under the root (MaildirStore.pathFor); cheaper than relpath.
            boxes=tuple(m[prefix:] if m.startswith(root + os.sep) else os.path.relpath(m, root) for m in self._maildirs),
            folder=self._folder,
            size=self._size,
            wireSize=self._wireSize,
            data=b"".join(chunks),
        )
        d = journal.deliver(record)  # type: ignore[union-attr]
        if d is None:
            return None
        name = self._name
        return d.addCallback(lambda _: name)

    def _publish(self, final: str) -> None:
        published = []
        boxes = [self._box(maildir) for maildir in self._maildirs]
        try:
            for box in boxes:
                target = os.path.join(box, "new", final)
                try:
                    os.link(self._tmp, target)
                except FileNotFoundError:
                    ensureMaildir(box)
                    os.link(self._tmp, target)
                except OSError:
                    copyMessage(self._tmp, os.path.join(box, "tmp", final), target)
                published.append(target)
            for box in boxes:
                self._syncDirectory(os.path.join(box, "new"))
        except BaseException:
            for target in published:
                _unlinkQuietly(target)
            raise

    def _box(self, maildir: str) -> str:
        """Where the message goes in one mailbox: the chosen folder if it exists, else the inbox."""
        return chooseBox(maildir, self._folder)

    def abort(self) -> None:
        self._done = self._aborted = True
        if self._opening is not None:
            # _opened() closes and removes the file; a failure to create it
            # no longer matters.
            self._opening.addErrback(lambda failure: None)
        f, self._file, self._chunks = self._file, None, []
        if f is not None:
            # close() flushes the buffer and may fail (ENOSPC, EIO): the
            # partial file goes all the same.
            try:
                f.close()
            except OSError as e:
                log.warn("closing an aborted message in tmp/ failed: {error}", error=e.strerror)
            finally:
                _unlinkQuietly(self._tmp)


def chooseBox(maildir: str, folder: Optional[str]) -> str:
    """
    Where a message goes in one mailbox: the Maildir++ C{folder} (C{.Junk})
    if the mailbox has it, else the inbox.
    """
    if folder is not None:
        path = os.path.join(maildir, folder)
        if os.path.isdir(os.path.join(path, "new")):
            return path
    return maildir


def copyMessage(source: str, tmp: str, target: str) -> None:
    """
    Copy a message file where a hard link is impossible (another file
    system, no permission): through C{tmp}, synced, then renamed to
    C{target}.  The mtime is kept: IMAP's internal date.
    """
    with open(source, "rb") as src, open(tmp, "xb") as dst:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
        stat = os.fstat(src.fileno())
    os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.rename(tmp, target)


def _unlinkQuietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: Files in C{tmp/} older than this are leftovers of a crash or of a full
#: disk: the Maildir convention (qmail, Dovecot) is 36 hours.
TMP_MAX_AGE = 36 * 3600


def sweepTmp(root: str, maxAge: float = TMP_MAX_AGE, now: Optional[float] = None) -> int:
    """
    Remove files older than C{maxAge} seconds from the C{tmp/} directory of
    every Maildir under C{root} (C{root/domain/local/tmp/}).  Blocking: run
    it in the thread pool.  A file that vanishes meanwhile, or cannot be
    removed, is skipped.

    @return: how many files were removed.
    """
    if now is None:
        now = time.time()
    removed = 0
    try:
        domains = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for domain in domains:
        if not domain.is_dir(follow_symlinks=False):
            continue
        try:
            mailboxes = list(os.scandir(domain.path))
        except OSError:
            continue
        for mailbox in mailboxes:
            tmp = os.path.join(mailbox.path, "tmp")
            try:
                entries = list(os.scandir(tmp))
            except OSError:  # not a Maildir, gone, or unreadable
                continue
            for entry in entries:
                try:
                    stat = entry.stat(follow_symlinks=False)
                    if not entry.is_file(follow_symlinks=False) or now - stat.st_mtime < maxAge:
                        continue
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed += 1
    return removed


def returnPathHeader(returnPath: str) -> bytes:
    """RFC 5321 §4.4: the final delivery MTA adds C{Return-Path: <sender>}."""
    return b"Return-Path: <" + returnPath.encode("utf-8") + b">\r\n"


#: How many addresses L{MaildirStore.pathFor} remembers (then it starts again).
PATH_CACHE_SIZE = 4096


@implementer(IMailStore)
class MaildirStore:
    """
    Maildirs under C{root}, one per user: C{root/domain/localpart/}.
    """

    def __init__(self, root: str, run: Callable[..., Deferred], hostname: str = "", journal: Optional[IDeliveryJournal] = None) -> None:
        self._syncer = DirectorySyncer()
        # pathFor's answers (one per recipient of every message; issue 14).
        self._paths: Dict[str, str] = {}
        #: Where small messages are made durable first (L{mailnet.store.journal}), or L{None}.
        self.journal = journal
        self.root = root
        self._run = run
        self._hostname = hostname or socket.gethostname()

    def pathFor(self, address: str) -> str:
        path = self._paths.get(address)
        if path is not None:
            return path
        lowered = address.lower()
        if not isSafeMailboxName(lowered):
            raise BadAddress(address=lowered, reason="it cannot name a mailbox")
        local, domain = splitAddress(lowered)
        path = os.path.join(self.root, domain, local)
        if len(self._paths) >= PATH_CACHE_SIZE:
            self._paths.clear()
        self._paths[address] = path
        return path

    def maildir(self, address: str) -> Maildir:
        path = self.pathFor(address)
        ensureMaildir(path)
        return Maildir(path, self._run)

    def sweepTmp(self, maxAge: float = TMP_MAX_AGE) -> Deferred:
        """
        Remove the leftovers of crashed or failed deliveries (L{sweepTmp})
        in the thread pool.

        @return: a L{Deferred} firing with the number of files removed.
        """
        return self._run(sweepTmp, self.root, maxAge)

    def receive(self, returnPath: str, mailboxes: Sequence[str]) -> MaildirReceiver:
        # Missing Maildirs are created off the reactor thread, on delivery.
        paths = [self.pathFor(a) for a in mailboxes]
        return MaildirReceiver(paths, returnPathHeader(returnPath), self._run, self._hostname, self._syncer, self.journal)
