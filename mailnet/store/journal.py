# -*- test-case-name: tests.test_journal -*-
"""
The delivery journal: one cheap sync per batch of acknowledged messages.

Without it, every message costs an fsync of its file and one of the
C{new/} directory before the 250 (see L{mailnet.store.maildir}).  With it,
a small message is appended to a pre-written journal file and the 250 is
sent once an C{fdatasync} of that file covers it; all the messages that
arrive meanwhile share that sync (group commit).  Meanwhile the message is
published into the Maildir(s) without syncs (the 250 waits for that too, so
a client sees its message as soon as it is acknowledged), and at most about
a second later a I{checkpoint} makes every published file durable in one go
(C{syncfs(2)} of the mail file system on Linux, an fsync of each file and
directory elsewhere) and lets the journal space be reused.

The file, C{DATA_DIR/journal/INDEX.journal} (one per process, INDEX 0 for
the parent), is written with zeros once and reused: overwriting written
blocks and C{fdatasync} then commit no file-system metadata.  It has two
halves; each starts with a header block holding a magic, a version and a
I{generation} number, followed by records::

    magic "MNJR" | generation (8) | payload length (4) | CRC-32 of payload (4) | payload

The payload is a JSON description (the final Maildir name, the target
Maildirs relative to the mail root, the folder, the sizes) and the message
as it is stored (LF line endings, the Return-Path header included).
Records are appended to the I{active} half.  A checkpoint makes the other
half active, waits until every record of the old one is published, syncs,
and then writes a new generation into the old half's header: its records
no longer count.  Generations only grow, so replay takes the halves in
generation order.

Recovery (L{recoverJournal}, at start, before any listener serves) reads
the records of each half's generation in order, stopping at the first that
is invalid (a torn write was never acknowledged: each batch is synced
before the next is written), and delivers, with syncs, each message whose
unique name is in neither C{new/} nor C{cur/} of its mailbox.  So a crash
loses nothing acknowledged; a message that a client deleted or moved in the
second before the crash may come back once (at least once, never lost).
"""

import ctypes
import os
import struct
import sys
import threading
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import attr
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailnet import metrics, quota
from mailnet.interfaces import IDeliveryJournal
from mailnet.store.maildir import _uidOf, chooseBox, copyMessage, ensureMaildir, fsyncDirectory

log = Logger()

#: The default size of a journal file (two halves).
DEFAULT_SIZE = 32 * 1024 * 1024
#: Seconds between the first publish of a half and its checkpoint.
CHECKPOINT_DELAY = 1.0
#: Seconds before a failed publish or checkpoint is tried again.
RETRY_DELAY = 1.0
#: The longest pause between tries of a publish that keeps failing.
RETRY_MAX = 60.0

HEADER_SIZE = 4096
HEADER_MAGIC = b"MAILNETJ"
VERSION = 1
_HEADER = struct.Struct(">8sIQ")  # magic, version, generation (then CRC-32 of these)
RECORD_MAGIC = b"MNJR"
_RECORD = struct.Struct(">4sQII")  # magic, generation, payload length, CRC-32 of payload
_META = struct.Struct(">I")  # length of the JSON description
#: The most buffers one C{pwritev} takes (Linux's C{IOV_MAX}).
_IOV_MAX = 1024
#: A message for at most this many mailboxes is published on the reactor
#: thread (no syncs: a few small writes and links); more in the disk pool.
INLINE_PUBLISH_BOXES = 4
#: The smallest journal file: two halves, each a header and some records.
MIN_SIZE = 4 * HEADER_SIZE


@attr.s(frozen=True, auto_attribs=True)
class JournalRecord:
    """
    One message in the journal.

    @ivar name: the final Maildir file name (C{unique,S=size,W=size}).
    @ivar boxes: the target Maildirs, relative to the mail root.
    @ivar folder: the Maildir++ folder (C{.Junk}) chosen by
        L{MaildirReceiver.fileInto}, or L{None} for the inbox.
    @ivar size: octets stored (LF); C{len(data)}.
    @ivar wireSize: octets received (CRLF).
    @ivar data: the message as stored.
    """

    name: str
    boxes: Tuple[str, ...]
    folder: Optional[str]
    size: int
    wireSize: int
    data: bytes

    def encode(self, generation: int) -> bytes:
        """The record as written in a half of generation C{generation}."""
        # The description: NUL-separated fields (no path holds a NUL);
        # cheaper than JSON on the reactor thread.
        meta = "\0".join((self.name, self.folder or "", "%d" % self.size, "%d" % self.wireSize) + self.boxes).encode("utf-8")
        head = _META.pack(len(meta)) + meta
        crc = zlib.crc32(self.data, zlib.crc32(head))
        return b"".join((_RECORD.pack(RECORD_MAGIC, generation, len(head) + len(self.data), crc), head, self.data))

    @classmethod
    def decode(cls, payload: bytes) -> "JournalRecord":
        """
        @raise ValueError: not a record this version wrote.
        """
        (length,) = _META.unpack_from(payload)
        fields = payload[_META.size : _META.size + length].decode("utf-8").split("\0")
        if len(fields) < 5:
            raise ValueError("bad record description")
        name, folder, size, wire = fields[:4]
        boxes = tuple(fields[4:])
        data = payload[_META.size + length :]
        if "/" in name or os.sep in name:
            raise ValueError("unsafe name in a record")
        for part in (name, folder or "x") + boxes:
            if not part or os.path.isabs(part) or ".." in part.replace(os.sep, "/").split("/"):
                raise ValueError("unsafe path in a record")
        return cls(name, boxes, folder or None, int(size), int(wire), data)


def _header(generation: int) -> bytes:
    fields = _HEADER.pack(HEADER_MAGIC, VERSION, generation)
    return fields + struct.pack(">I", zlib.crc32(fields))


def _readHeader(block: bytes) -> Optional[int]:
    """The generation in a header block, or L{None} if it is not one."""
    size = _HEADER.size
    if len(block) < size + 4:
        return None
    magic, version, generation = _HEADER.unpack_from(block)
    (crc,) = struct.unpack_from(">I", block, size)
    if magic != HEADER_MAGIC or version != VERSION or crc != zlib.crc32(block[:size]):
        return None
    return generation


def _halves(size: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """The C{(start, end)} offsets of the two halves of a file of C{size} octets."""
    half = (size // 2) // HEADER_SIZE * HEADER_SIZE
    return (0, half), (half, 2 * half)


def readRecords(fd: int, size: int) -> Tuple[List[JournalRecord], int]:
    """
    The valid records of a journal file, oldest first (blocking).

    @return: the records and the highest generation seen (0 if none).
    """
    found = []
    highest = 0
    for start, end in _halves(size):
        generation = _readHeader(os.pread(fd, HEADER_SIZE, start))
        if generation is None:
            continue
        highest = max(highest, generation)
        records = []
        offset = start + HEADER_SIZE
        while offset + _RECORD.size <= end:
            magic, gen, length, crc = _RECORD.unpack(os.pread(fd, _RECORD.size, offset))
            if magic != RECORD_MAGIC or gen != generation or offset + _RECORD.size + length > end:
                break
            payload = os.pread(fd, length, offset + _RECORD.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                records.append(JournalRecord.decode(payload))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error):
                break
            offset += _RECORD.size + length
        found.append((generation, records))
    found.sort(key=lambda pair: pair[0])
    return [r for _, records in found for r in records], highest


def _holds(box: str, uid: str, seen: Dict[str, Set[str]]) -> bool:
    """Whether C{new/} or C{cur/} of C{box} has a file of unique name C{uid}."""
    uids = seen.get(box)
    if uids is None:
        uids = seen[box] = set()
        for sub in ("new", "cur"):
            try:
                uids.update(_uidOf(name) for name in os.listdir(os.path.join(box, sub)))
            except FileNotFoundError:
                pass
    return uid in uids


class NeedsThread(Exception):
    """
    A publish on the reactor thread stopped before it had to sync: the
    mailbox must be created (its directories are synced) or the message
    copied where it cannot be linked.  Nothing is left published.
    """


def publishRecord(
    root: str, record: JournalRecord, durable: bool, seen: Optional[Dict[str, Set[str]]] = None, quick: bool = False
) -> List[str]:
    """
    Publish a journaled message into its Maildirs (blocking): write it
    into C{tmp/}, link it into C{new/} of each mailbox (of the folder, if
    the mailbox has it), remove the C{tmp/} file.

    @param durable: fsync the file before linking and the C{new/}
        directories after (recovery); without, a checkpoint syncs later.
    @param seen: skip mailboxes that already hold the message (recovery,
        retries): a cache of the unique names found in each mailbox.
    @param quick: on the reactor thread: never sync (see L{NeedsThread}).
    @return: the published paths.
    @raise OSError: nothing is published (what was linked is removed).
    @raise NeedsThread: C{quick}, and the publish would have to sync.
    """
    uid = _uidOf(record.name)
    targets = []
    for relative in record.boxes:
        maildir = os.path.join(root, relative)
        box = chooseBox(maildir, record.folder)
        if seen is not None and _holds(box, uid, seen):
            continue
        targets.append((maildir, box))
    if not targets:
        return []
    tmp = os.path.join(targets[0][0], "tmp", uid)
    published: List[str] = []
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            if quick:
                raise NeedsThread()
            ensureMaildir(targets[0][0])
            f = open(tmp, "wb")
        try:
            f.write(record.data)
            if durable:
                f.flush()
                metrics.timedFsync(os.fsync, f.fileno())
        finally:
            f.close()
        for _, box in targets:
            target = os.path.join(box, "new", record.name)
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass  # a retry after a partial publish
            except OSError as e:
                if quick:
                    raise NeedsThread()
                if isinstance(e, FileNotFoundError):
                    ensureMaildir(box)
                    os.link(tmp, target)
                else:
                    copyMessage(tmp, os.path.join(box, "tmp", record.name), target)
            published.append(target)
        if durable:
            for directory in {os.path.join(box, "new") for _, box in targets}:
                fsyncDirectory(directory)
    except BaseException:
        for target in published:
            try:
                os.unlink(target)
            except FileNotFoundError:
                pass
        raise
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if seen is not None:
        for _, box in targets:
            seen.setdefault(box, set()).add(uid)
    metrics.recipients("delivered", len(targets))
    for maildir, _ in targets:
        quota.delivered(maildir, record.size)
    return published


def _unlinkAll(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _findSyncfs() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _findSyncfs()


def syncPublished(root: str, paths: Sequence[str]) -> None:
    """
    Make published messages durable (blocking): C{syncfs(2)} of the file
    system holding C{root} on Linux; elsewhere an fsync of each file and
    of each directory holding one.

    @raise OSError: the sync failed (C{EIO}, C{ENOSPC}: data may be lost).
    """
    if _syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), root)
        finally:
            os.close(fd)
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # taken by a client meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in {os.path.dirname(path) for path in paths}:
        fsyncDirectory(directory)


def dataSync(fd: int) -> None:
    """C{fdatasync}, or C{fsync} where there is none (Windows, macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _writeNewFile(path: str, size: int) -> None:
    """Create a journal file of C{size} octets of zeros, durably (blocking)."""
    directory = os.path.dirname(path)
    tmp = path + ".new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Really written (not fallocate): overwriting written blocks later
        # commits no file-system metadata.
        zeros = bytes(min(size, 1 << 20))
        written = 0
        while written < size:
            written += os.write(fd, zeros[: size - written])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsyncDirectory(directory)


def _resetHeaders(fd: int, size: int, generation: int) -> Tuple[int, int]:
    """
    Start both halves afresh (blocking): generations C{generation + 1} and
    C{+ 2}, synced.

    @return: the two generations.
    """
    first, second = _halves(size)
    os.pwrite(fd, _header(generation + 1).ljust(HEADER_SIZE, b"\0"), first[0])
    os.pwrite(fd, _header(generation + 2).ljust(HEADER_SIZE, b"\0"), second[0])
    dataSync(fd)
    return generation + 1, generation + 2


def recoverJournal(path: str, root: str) -> Tuple[int, int]:
    """
    Deliver what a journal file holds (blocking; at start, before serving):
    each message whose unique name is not yet in its mailbox is delivered
    with syncs.  Then the file's records are retired (new generations).

    @return: how many messages were delivered, and how many were there already.
    @raise OSError: the file cannot be read, or a message not delivered;
        the records are then kept for the next start.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0, 0
    try:
        size = os.fstat(fd).st_size
        if size < MIN_SIZE:
            return 0, 0
        records, generation = readRecords(fd, size)
        seen: Dict[str, Set[str]] = {}
        replayed = already = 0
        for record in records:
            if publishRecord(root, record, durable=True, seen=seen):
                replayed += 1
            else:
                already += 1
        if records or generation == 0:
            _resetHeaders(fd, size, generation)
        return replayed, already
    finally:
        os.close(fd)


def journalPath(dataDir: str, index: int) -> str:
    """The journal file of process C{index} (0: the parent)."""
    return os.path.join(dataDir, "journal", "%d.journal" % (index,))


def journalFiles(dataDir: str) -> List[str]:
    """Every journal file in a data dir (whatever the number of workers was)."""
    directory = os.path.join(dataDir, "journal")
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith(".journal") and n[: -len(".journal")].isdigit()]


def journalState(dataDir: str) -> List[Tuple[str, int]]:
    """
    For C{mailnet-admin check}: each journal file and how many records it
    holds that no checkpoint has retired yet (read only; blocking).
    """
    found = []
    for path in journalFiles(dataDir):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            found.append((path, len(readRecords(fd, size)[0]) if size >= MIN_SIZE else 0))
        except OSError:
            continue
        finally:
            os.close(fd)
    return found


# Half states.
FREE, ACTIVE, CLOSING = "free", "active", "closing"


class _Half:
    """The reactor's view of one half of the journal file."""

    def __init__(self, start: int, end: int, generation: int) -> None:
        self.start = start
        self.end = end
        self.generation = generation
        self.used = start + HEADER_SIZE
        self.state = FREE
        self.inFlight = 0  # records written or being published
        self.failed: List[JournalRecord] = []  # publish failed at stop: kept for the next start
        self.retries: Dict[JournalRecord, Any] = {}  # publish failed: tried again later
        self.tries: Dict[JournalRecord, int] = {}  # failed publishes of each record
        self.paths: List[str] = []  # published (fsync'd at checkpoint without syncfs)
        self.timer: Any = None
        self.syncing = False  # its checkpoint runs
        self.due = False  # its checkpoint waits for the other half
        self.idle: List[Deferred] = []  # stopping: fired once nothing is in flight

    def empty(self) -> bool:
        return self.used == self.start + HEADER_SIZE


class _Writer:
    """
    The journal's writer: one thread taking every pending write, writing
    them with one C{pwritev} per contiguous run, then one C{fdatasync}.
    """

    def __init__(self, journal: "DeliveryJournal") -> None:
        self._journal = journal
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: List[Tuple[int, bytes, Deferred]] = []
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mailnet-journal", daemon=True)
        self._thread.start()

    def add(self, offset: int, data: bytes, d: Deferred) -> None:
        with self._lock:
            self._pending.append((offset, data, d))
            self._wake.notify()

    def take(self) -> List[Tuple[int, bytes, Deferred]]:
        with self._lock:
            batch, self._pending = self._pending, []
        return batch

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            self._journal._callFromThread(self._journal._fire, *self._journal._write(batch))

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@implementer(IDeliveryJournal)
class DeliveryJournal:
    """
    The delivery journal of one process (see the module docstring).

    @param path: the journal file.
    @param root: the mail root; record boxes are relative to it.
    @param clock: the reactor (C{callLater}; C{callFromThread} unless
        given).
    @param run: runs blocking work in the Maildir thread pool (publishing).
    @param size: the file's size if it is created.
    @param sync: C{fdatasync} (tests count calls).
    @param syncAll: makes published files durable (L{syncPublished}).
    @param checkpointRun: runs a checkpoint's sync; by default a thread of
        the journal's own (never behind deliveries in the pool).
    @param threaded: write in a thread of its own; L{False} (tests): the
        writes wait until L{flush}.
    @param inlineBoxes: a message for at most this many mailboxes is
        published on the calling (reactor) thread, more through C{run}.
    """

    def __init__(
        self,
        path: str,
        root: str,
        clock: Any,
        run: Callable[..., Deferred],
        size: int = DEFAULT_SIZE,
        sync: Callable[[int], None] = dataSync,
        syncAll: Callable[[str, Sequence[str]], None] = syncPublished,
        checkpointRun: Optional[Callable[..., Deferred]] = None,
        threaded: bool = True,
        delay: float = CHECKPOINT_DELAY,
        callFromThread: Optional[Callable[..., None]] = None,
        inlineBoxes: int = INLINE_PUBLISH_BOXES,
    ) -> None:
        self.path = path
        self._inlineBoxes = inlineBoxes
        self.root = root
        self._clock = clock
        self._run = run
        self._size = max(MIN_SIZE, size)
        self._sync = sync
        self._syncAll = syncAll
        self._checkpointRun = checkpointRun
        self._checkpointPool: Optional[ThreadPool] = None
        self._threaded = threaded
        self._delay = delay
        self._callFromThread: Callable[..., Any] = callFromThread if callFromThread is not None else clock.callFromThread
        self._fd = -1  # the open journal file
        self._writer = _Writer(self)
        self._halves: List[_Half] = []
        self._active = 0
        self._nextGeneration = 0
        self._stopping = False
        self._broken = False
        self.available = False

    # --- start and stop ---------------------------------------------------

    def start(self) -> Tuple[int, int]:
        """
        Recover this process's journal file, then open it for appending
        (blocking; at start, before serving).  A journal that cannot be
        used is logged once; deliveries then sync each message as without.

        @return: messages replayed, and found already delivered.
        """
        try:
            if not hasattr(os, "pwrite"):
                raise OSError(0, "positioned writes (pwrite) are missing on this system")
            counts = recoverJournal(self.path, self.root)
            self._open()
        except OSError as e:
            log.error(
                "the delivery journal {path} cannot be used ({error}): each message is synced before its 250 instead",
                path=self.path,
                error=e.strerror or str(e),
            )
            return 0, 0
        self.available = True
        if self._threaded:
            self._writer.start()
            if self._checkpointRun is None:
                pool = self._checkpointPool = ThreadPool(minthreads=0, maxthreads=1, name="mailnet-journal-checkpoint")
                pool.start()
                from twisted.internet.threads import deferToThreadPool

                self._checkpointRun = lambda f, *a: deferToThreadPool(self._clock, pool, f, *a)
        if self._checkpointRun is None:
            self._checkpointRun = self._run
        return counts

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            size = 0
        if size < MIN_SIZE:
            _writeNewFile(self.path, self._size)
            fsyncDirectory(os.path.dirname(os.path.dirname(self.path)) or ".")
            size = self._size
        fd = os.open(self.path, os.O_RDWR)
        try:
            _, generation = readRecords(fd, size)
            first, second = _resetHeaders(fd, size, generation)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        (a, b), (c, d) = _halves(size)
        self._halves = [_Half(a, b, first), _Half(c, d, second)]
        self._halves[0].state = ACTIVE
        self._active = 0
        self._nextGeneration = second + 1

    def stop(self) -> Deferred:
        """
        Stop taking messages; once those written are published, make them
        durable and retire them.  A record whose publish failed stays for
        the next start to deliver.
        """
        self._stopping = True
        self.available = False
        for half in self._halves:
            if half.timer is not None and half.timer.active():
                half.timer.cancel()
            half.timer = None
            # Failed publishes are not tried again: the next start delivers them.
            for record, call in half.retries.items():
                call.cancel()
                half.failed.append(record)
                half.inFlight -= 1
            half.retries.clear()
        if not self._halves:
            return succeed(None)
        if not self._threaded:
            self.flush()
        waiting = [self._whenIdle(half) for half in self._halves]
        d: Deferred = Deferred()
        count = [len(waiting)]

        def one(_: Any) -> None:
            count[0] -= 1
            if count[0] == 0:
                d.callback(None)

        for w in waiting:
            w.addBoth(one)
        return d.addCallback(lambda _: self._close())

    def _whenIdle(self, half: _Half) -> Deferred:
        """Fires once C{half} has nothing in flight; then checkpoints it."""
        d: Deferred = Deferred()
        half.idle.append(d)
        self._settle(half)
        return d

    def _close(self) -> Deferred:
        # The last checkpoint, in the journal's own threads: the Maildir
        # pool stops at the same time as this.
        done: Deferred = Deferred()
        halves = [h for h in self._halves if not h.empty() and not h.failed]
        paths = [p for h in halves for p in h.paths]

        def finalSync() -> None:
            if halves:
                self._syncAll(self.root, paths)
                for half in halves:
                    self._writeHeader(half, self._nextGeneration)
                    self._nextGeneration += 1
                self._sync(self._fd)

        def closed(result: Any) -> None:
            if isinstance(result, Failure):
                log.error("the last journal checkpoint failed ({error}): the next start delivers what is left", error=result.getErrorMessage())
            if self._threaded:
                self._writer.stop()
            if self._checkpointPool is not None:
                self._checkpointPool.stop()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            done.callback(None)

        if not halves:
            closed(None)
            return done
        run = self._checkpointRun or self._run
        run(finalSync).addBoth(closed)
        return done

    # --- appending ----------------------------------------------------------

    def deliver(self, record: JournalRecord) -> Optional[Deferred]:
        if not self.available or self._stopping or self._broken:
            return None
        half = self._halves[self._active]
        data = record.encode(half.generation)
        if half.used + len(data) > half.end:
            if half.empty() or not self._switch():
                return None  # too big, or both halves busy: the direct path
            half = self._halves[self._active]
            data = record.encode(half.generation)
            if half.used + len(data) > half.end:
                return None
        offset = half.used
        half.used += len(data)
        half.inFlight += 1
        if half.timer is None:
            half.timer = self._clock.callLater(self._delay, self._due, half)
        elif half.used - half.start > (half.end - half.start) // 2:
            self._due(half)
        written: Deferred = Deferred()
        acknowledged: Deferred = Deferred()
        # The message is published while its record is written (no syncs):
        # by the 250, it is in the Maildir as well, so a client that reads
        # its mail right after sending sees it.  The 250 waits for both.
        outcome: Dict[str, Any] = {}

        def settled(result: Any, step: str) -> None:
            outcome[step] = result
            if len(outcome) == 2:
                self._acknowledge(half, record, outcome["written"], outcome["published"], acknowledged)

        written.addBoth(settled, "written")
        if self._threaded:
            self._writer.add(offset, data, written)
        else:
            self._writer._pending.append((offset, data, written))
        if len(record.boxes) <= self._inlineBoxes:
            # Buffered writes and links, no syncs, here on the reactor
            # thread (as spool writes are): a hand-off to the disk pool and
            # back cost more CPU than the publish itself and lengthened each
            # 250 (measured: 1-connection rate 830 -> 1,300 msg/s).  What
            # would sync (a new mailbox, a copy) goes to the pool.
            published = maybeDeferred(publishRecord, self.root, record, False, None, True)

            def inThread(failure: Failure) -> Deferred:
                failure.trap(NeedsThread)
                return self._run(publishRecord, self.root, record, False)

            published.addErrback(inThread)
        else:
            published = self._run(publishRecord, self.root, record, False)
        published.addBoth(settled, "published")
        return acknowledged

    def _acknowledge(self, half: _Half, record: JournalRecord, written: Any, published: Any, acknowledged: Deferred) -> None:
        """Both the journal write and the publish of a message are done."""
        if isinstance(written, Failure):
            # No 250: the client sends it again, so it must not stay.
            if not isinstance(published, Failure):
                self._run(_unlinkAll, published).addErrback(lambda f: None)
            half.inFlight -= 1
            self._settle(half)
            acknowledged.errback(written)
            return
        if isinstance(published, Failure):
            self._publishFailed(half, record, published)
        else:
            half.paths.extend(published)
            half.inFlight -= 1
            self._settle(half)
        acknowledged.callback(None)

    def flush(self) -> None:
        """Write and sync what is pending now, in this thread (tests)."""
        batch = self._writer.take()
        if batch:
            self._fire(*self._write(batch))

    def _write(self, batch: List[Tuple[int, bytes, Deferred]]) -> Tuple[List[Deferred], Optional[Failure]]:
        """In the writer thread: write a batch, one sync."""
        batch.sort(key=lambda item: item[0])
        try:
            run: List[bytes] = []
            start = end = -1
            for offset, data, _ in batch:
                if offset != end and run:
                    self._pwritev(run, start)
                    run = []
                if not run:
                    start = offset
                run.append(data)
                end = offset + len(data)
            if run:
                self._pwritev(run, start)
            metrics.timedFsync(self._sync, self._fd)
        except Exception:
            return [d for _, _, d in batch], Failure()
        return [d for _, _, d in batch], None

    def _pwritev(self, buffers: List[bytes], offset: int) -> None:
        """Write C{buffers} at C{offset}, whole (short writes continued)."""
        pwritev = getattr(os, "pwritev", None)
        while buffers:
            if pwritev is not None:
                written = pwritev(self._fd, buffers[:_IOV_MAX], offset)
            else:
                written = os.pwrite(self._fd, buffers[0], offset)
            offset += written
            while buffers and written >= len(buffers[0]):
                written -= len(buffers[0])
                buffers = buffers[1:]
            if written:
                buffers = [buffers[0][written:]] + buffers[1:]

    def _fire(self, deferreds: List[Deferred], failure: Optional[Failure]) -> None:
        """On the reactor: tell the waiting deliveries."""
        if failure is not None and not self._broken:
            self._broken = True
            log.error(
                "writing the delivery journal {path} failed ({error}): each message is synced before its 250 from now on",
                path=self.path,
                error=failure.getErrorMessage(),
            )
        for d in deferreds:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    # --- publishing and checkpoints --------------------------------------

    def _publish(self, half: _Half, record: JournalRecord) -> None:
        """Try again to publish a journaled message."""
        d = self._run(publishRecord, self.root, record, False, {})

        def published(paths: List[str]) -> None:
            half.tries.pop(record, None)
            half.paths.extend(paths)
            half.inFlight -= 1
            self._settle(half)

        d.addCallbacks(published, lambda failure: self._publishFailed(half, record, failure))

    def _publishFailed(self, half: _Half, record: JournalRecord, failure: Failure) -> None:
        """
        Keep the record; try again after a pause that doubles up to
        L{RETRY_MAX} (at the next start, if stopping).
        """
        tries = half.tries[record] = half.tries.get(record, 0) + 1
        delay = min(RETRY_MAX, RETRY_DELAY * 2 ** (tries - 1))
        log.error(
            "publishing journaled message {name} failed ({error}); it stays in the journal, trying again in {delay:.0f} s",
            name=record.name,
            error=failure.getErrorMessage(),
            delay=delay,
        )
        if self._stopping:
            half.failed.append(record)
            half.inFlight -= 1
            self._settle(half)
            return
        half.retries[record] = self._clock.callLater(delay, self._retry, half, record)

    def _retry(self, half: _Half, record: JournalRecord) -> None:
        del half.retries[record]
        self._publish(half, record)

    def _due(self, half: _Half) -> None:
        """A half's checkpoint is due (its timer, or it is half full)."""
        if half.timer is not None and half.timer.active():
            half.timer.cancel()
        half.timer = None
        half.due = half.state == ACTIVE and not self._switch()

    def _switch(self) -> bool:
        """Make the other half active and close this one, if that one is free."""
        current = self._halves[self._active]
        other = self._halves[1 - self._active]
        if other.state != FREE or current.empty():
            return False
        current.state = CLOSING
        other.state = ACTIVE
        self._active = 1 - self._active
        self._settle(current)
        return True

    def _settle(self, half: _Half) -> None:
        """Checkpoint a closing half once all its records are published."""
        if half.inFlight:
            return
        if self._stopping:
            idle, half.idle = half.idle, []
            for d in idle:
                d.callback(None)
            return
        if half.state != CLOSING or half.syncing:
            return
        half.syncing = True
        paths, half.paths = half.paths, []

        def checkpoint() -> None:
            self._syncAll(self.root, paths)
            self._writeHeader(half, generation)
            self._sync(self._fd)

        generation = self._nextGeneration
        self._nextGeneration += 1
        assert self._checkpointRun is not None
        d = self._checkpointRun(checkpoint)

        def done(_: Any) -> None:
            half.syncing = False
            half.generation = generation
            half.used = half.start + HEADER_SIZE
            half.state = FREE
            if self._stopping:
                self._settle(half)
                return
            active = self._halves[self._active]
            if active.due:
                self._due(active)

        def failed(failure: Failure) -> None:
            half.syncing = False
            half.paths = paths + half.paths
            log.error(
                "journal checkpoint failed ({error}): its messages stay in the journal; trying again in {delay:.0f} s",
                error=failure.getErrorMessage(),
                delay=RETRY_DELAY,
            )
            if not self._stopping:
                self._clock.callLater(RETRY_DELAY, self._settle, half)
            else:
                self._settle(half)

        d.addCallbacks(done, failed)

    def _writeHeader(self, half: _Half, generation: int) -> None:
        os.pwrite(self._fd, _header(generation).ljust(HEADER_SIZE, b"\0"), half.start)

    def state(self) -> Dict[str, Any]:
        """For tools and tests: the halves' states and fill."""
        return {
            "path": self.path,
            "available": self.available and not self._broken,
            "halves": [
                {"state": h.state, "generation": h.generation, "used": h.used - h.start - HEADER_SIZE, "inFlight": h.inFlight}
                for h in self._halves
            ],
        }


class JournalService(service.Service):
    """
    Recovers journals at start, before any listener serves, and stops the
    journal cleanly.

    @param recoverAll: the data dir's lock holder (the parent process):
        recover every journal file in C{dataDir}, whatever the number of
        workers was, before its own (and before the workers start).
    """

    def __init__(self, journal: DeliveryJournal, dataDir: str, recoverAll: bool) -> None:
        self.journal = journal
        self.dataDir = dataDir
        self.recoverAll = recoverAll

    def startService(self) -> None:
        service.Service.startService(self)
        if self.recoverAll:
            for path in journalFiles(self.dataDir):
                if os.path.abspath(path) == os.path.abspath(self.journal.path):
                    continue
                try:
                    counts = recoverJournal(path, self.journal.root)
                except OSError as e:
                    log.error("journal {name}: recovery failed ({error}); kept for the next start", name=_journalName(path), error=e.strerror or str(e))
                else:
                    _logRecovery(path, counts)
        counts = self.journal.start()
        if self.journal.available:
            _logRecovery(self.journal.path, counts)

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        return self.journal.stop()


def _journalName(path: str) -> str:
    return os.path.basename(path)[: -len(".journal")]


def _logRecovery(path: str, counts: Tuple[int, int]) -> None:
    replayed, already = counts
    log.info(
        "journal {name}: {replayed} messages replayed, {already} already delivered",
        name=_journalName(path),
        replayed=replayed,
        already=already,
    )
