# -*- test-case-name: tests.test_queue -*-
"""
The durable outbound (relay) queue.

Layout of the queue directory::

    tmp/          messages and envelopes being written
    msg/ID        the message, exactly as received (CRLF line endings)
    env/ID.json   its envelope: sender, per-recipient state, schedule
    flush         present when C{mailnet-admin queue flush} asked for a retry

Durability follows the Maildir delivery in L{mailnet.store.maildir}: write
into C{tmp/}, fsync the file, rename it into place, fsync the directory.
The message is published before its envelope, so a crash can leave a message
without an envelope (collected at start) but never an envelope without its
message.  Every envelope update is a whole new file renamed over the old
one, so a reader (or a restart after C{kill -9}) sees either the old or the
new state, never half of each.

The envelope is JSON::

    {"id": "...", "sender": "a@b.test" or "",
     "created": 1700000000.0, "next_try": 1700000060.0, "attempts": 1,
     "warned": false, "last_error": "451 4.3.0 try later" or null,
     "eightbit": false,
     "recipients": [{"address": "x@y.test", "status": "pending",
                     "attempts": 1, "last_error": "...", "notified": false,
                     "dsn_status": "5.1.1" or null,
                     "remote_mta": "mx.y.test" or null},
                    ...]}

with C{status} one of C{pending}, C{delivered}, C{failed}.  C{notified}
records that the sender was told of a failure, so a restart does not
bounce twice; C{dsn_status} is the RFC 3463 status of a failure and
C{remote_mta} the host whose reply was last recorded.
"""

import json
import os
import re
import secrets
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mailnet.errors import UnknownQueueEntry
from mailnet.interfaces import IMessageReceiver, IRelayQueue
from mailnet.store.maildir import fsyncDirectory

log = Logger()

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

FLUSH_FILE = "flush"
_SUBDIRS = ("tmp", "msg", "env")
_ID = re.compile(r"[0-9A-Za-z]{1,40}\Z")
# The most of a message's header read for a bounce (RFC 3462 only needs the header).
MAX_HEADER_BYTES = 64 * 1024


class EntryGone(Exception):
    """
    The entry was deleted (by C{mailnet-admin queue delete}) while the
    daemon held it.
    """


@attr.s(auto_attribs=True)
class RecipientState:
    """
    Where delivery to one recipient stands.
    """

    address: str
    status: str = PENDING
    attempts: int = 0
    last_error: Optional[str] = None
    notified: bool = False
    dsn_status: Optional[str] = None
    remote_mta: Optional[str] = None

    def asJSON(self) -> Dict[str, Any]:
        return attr.asdict(self)

    @classmethod
    def fromJSON(cls, data: Dict[str, Any]) -> "RecipientState":
        return cls(
            address=str(data["address"]),
            status=str(data.get("status", PENDING)),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            notified=bool(data.get("notified", False)),
            dsn_status=data.get("dsn_status"),
            remote_mta=data.get("remote_mta"),
        )


@attr.s(auto_attribs=True)
class QueueEntry:
    """
    One queued message: the envelope in memory.

    @ivar created: when it was queued (seconds since the epoch, on the
        queue's clock).
    @ivar next_try: when the next delivery attempt is due.
    @ivar attempts: delivery rounds made so far.
    @ivar warned: whether the sender got the delay warning.
    """

    id: str
    sender: str
    recipients: List[RecipientState]
    created: float
    next_try: Optional[float]
    attempts: int = 0
    warned: bool = False
    last_error: Optional[str] = None
    eightbit: bool = False

    def pending(self) -> List[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    def asJSON(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "sender": self.sender,
            "created": self.created,
            "next_try": self.next_try,
            "attempts": self.attempts,
            "warned": self.warned,
            "last_error": self.last_error,
            "eightbit": self.eightbit,
            "recipients": [r.asJSON() for r in self.recipients],
        }

    @classmethod
    def fromJSON(cls, data: Dict[str, Any]) -> "QueueEntry":
        nextTry = data.get("next_try")
        return cls(
            id=str(data["id"]),
            sender=str(data["sender"]),
            recipients=[RecipientState.fromJSON(r) for r in data["recipients"]],
            created=float(data["created"]),
            next_try=None if nextTry is None else float(nextTry),
            attempts=int(data.get("attempts", 0)),
            warned=bool(data.get("warned", False)),
            last_error=data.get("last_error"),
            eightbit=bool(data.get("eightbit", False)),
        )


def _writeDurably(tmpPath: str, finalPath: str, data: bytes) -> None:
    """Write, fsync, rename into place, fsync the directory."""
    with open(tmpPath, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmpPath, finalPath)
    fsyncDirectory(os.path.dirname(finalPath))


def _unlinkQuietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _newId(now: float) -> str:
    # Arrival second first (sorts in queue order), then randomness: unique
    # across processes without a counter file.
    return "%08X%s" % (int(now) & 0xFFFFFFFF, secrets.token_hex(5).upper())


class _Paths:
    def __init__(self, queueDir: str) -> None:
        self.root = queueDir
        self.tmp = os.path.join(queueDir, "tmp")
        self.msg = os.path.join(queueDir, "msg")
        self.env = os.path.join(queueDir, "env")
        self.flush = os.path.join(queueDir, FLUSH_FILE)

    def message(self, entryId: str) -> str:
        return os.path.join(self.msg, entryId)

    def envelope(self, entryId: str) -> str:
        return os.path.join(self.env, entryId + ".json")

    def ensure(self) -> None:
        for sub in _SUBDIRS:
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)


def _readEnvelopes(paths: _Paths) -> List[QueueEntry]:
    entries = []
    try:
        names = sorted(os.listdir(paths.env))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json") or not _ID.match(name[:-5]):
            continue
        try:
            with open(os.path.join(paths.env, name), "rb") as f:
                entries.append(QueueEntry.fromJSON(json.loads(f.read())))
        except FileNotFoundError:
            continue  # delivered or deleted meanwhile
        except (ValueError, KeyError, TypeError) as e:
            log.error("Unreadable queue envelope {name}: {error}", name=name, error=e)
    entries.sort(key=lambda e: (e.created, e.id))
    return entries


# --- functions for mailnet-admin ------------------------------------------


def listEntries(queueDir: str) -> List[Dict[str, Any]]:
    """
    Describe the queued messages, oldest first.

    @return: one L{dict} per message with the keys C{id}, C{sender} (C{""}
        for the null sender), C{recipients} (the addresses still pending, a
        L{list} of L{str}), C{attempts}, C{next_try} (seconds since the
        epoch, or L{None}) and C{last_error} (the last temporary error, or
        L{None}).
    """
    result = []
    for entry in _readEnvelopes(_Paths(queueDir)):
        result.append(
            {
                "id": entry.id,
                "sender": entry.sender,
                "recipients": [r.address for r in entry.pending()],
                "attempts": entry.attempts,
                "next_try": entry.next_try,
                "last_error": entry.last_error,
            }
        )
    return result


def requestFlush(queueDir: str) -> None:
    """
    Ask the daemon to retry every queued message now.  A running daemon
    notices within a few seconds (see L{mailnet.smtp.relay.FLUSH_POLL}); a
    stopped one on its next start.
    """
    paths = _Paths(queueDir)
    paths.ensure()
    with open(paths.flush, "ab"):
        pass


def deleteEntry(queueDir: str, entryId: str) -> None:
    """
    Remove a queued message without delivering it further; nobody is
    notified.

    @raise UnknownQueueEntry: there is no message C{entryId}.
    """
    paths = _Paths(queueDir)
    if not _ID.match(entryId) or not os.path.exists(paths.envelope(entryId)):
        raise UnknownQueueEntry(id=entryId)
    _removeFiles(paths, entryId)


def _removeFiles(paths: _Paths, entryId: str) -> None:
    # The envelope goes first: a crash in between leaves an orphan message,
    # which the next start collects, never an envelope without a message.
    if _unlinkQuietly(paths.envelope(entryId)):
        fsyncDirectory(paths.env)
    if _unlinkQuietly(paths.message(entryId)):
        fsyncDirectory(paths.msg)


# --- the queue ------------------------------------------------------------


@implementer(IMessageReceiver)
class QueueReceiver:
    """
    Receives one message for the queue.  Bytes go to C{tmp/ID} as they
    arrive; L{finish} publishes the message, then the envelope.
    """

    def __init__(self, queue: "DiskQueue", entry: QueueEntry) -> None:
        self._queue = queue
        self._entry = entry
        self._tmp = os.path.join(queue._paths.tmp, entry.id)
        self._file: Optional[IO[bytes]] = open(self._tmp, "xb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after finish or abort"
        self._file.write(data)
        if not self._entry.eightbit and not data.isascii():
            self._entry.eightbit = True  # so the relay can say BODY=8BITMIME

    def finish(self) -> Deferred:
        f, self._file = self._file, None
        assert f is not None, "finish twice"
        paths = self._queue._paths
        entry = self._entry

        def publish() -> str:
            try:
                try:
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    f.close()
                os.rename(self._tmp, paths.message(entry.id))
                fsyncDirectory(paths.msg)
            except BaseException:
                _unlinkQuietly(self._tmp)
                raise
            try:
                self._queue._writeEnvelope(entry, mustExist=False)
            except BaseException:
                if _unlinkQuietly(paths.message(entry.id)):
                    fsyncDirectory(paths.msg)
                raise
            return entry.id

        d = self._queue._run(publish)
        d.addCallback(self._published)
        return d

    def _published(self, entryId: str) -> str:
        log.info(
            "Queued {id} from <{sender}> for {recipients}",
            id=entryId,
            sender=self._entry.sender,
            recipients=", ".join(r.address for r in self._entry.recipients),
        )
        listener = self._queue.listener
        if listener is not None:
            listener(self._entry)
        return entryId

    def abort(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
            _unlinkQuietly(self._tmp)


@implementer(IRelayQueue)
class DiskQueue:
    """
    The relay queue in a directory (see the module docstring for the
    layout).  The relay service (L{mailnet.smtp.relay.RelayService}) reads
    it with L{load}, sets L{listener} to hear of new messages, and records
    each attempt with L{update}.

    @param queueDir: the queue directory, created if needed.
    @param run: runs blocking file work off the reactor thread and returns
        a L{Deferred} (see L{mailnet.store.maildir.ThreadRunner}).
    @param clock: an L{IReactorTime}; C{created} and C{next_try} use it.
    @param hostname: this host's name, for logs.
    @ivar listener: called with each new L{QueueEntry} once it is durable,
        or L{None}.
    """

    def __init__(self, queueDir: str, run: Callable[..., Deferred], clock: Any, hostname: str) -> None:
        self.queueDir = queueDir
        self.hostname = hostname
        self._paths = _Paths(queueDir)
        self._run = run
        #: the runner for blocking file work, shared with the relay client.
        self.run = run
        self._clock = clock
        self._ready = False  # are the directories there?
        self.listener: Optional[Callable[[QueueEntry], None]] = None

    # IRelayQueue

    def receive(self, returnPath: str, recipients: Sequence[str]) -> QueueReceiver:
        if not self._ready:
            self._paths.ensure()
            self._ready = True
        now = self._clock.seconds()
        unique = list(dict.fromkeys(recipients))
        entry = QueueEntry(
            id=_newId(now),
            sender=returnPath,
            recipients=[RecipientState(address) for address in unique],
            created=now,
            next_try=now,
        )
        return QueueReceiver(self, entry)

    # For the relay service

    def load(self) -> Deferred:
        """
        Collect what a crash left behind (files in C{tmp/}, messages
        without envelopes, envelopes without messages) and read the queue.

        @return: L{Deferred} firing with the L{QueueEntry}s, oldest first.
        """
        return self._run(self._load)

    def _load(self) -> List[QueueEntry]:
        paths = self._paths
        # Here, not in the constructor: a daemon started as root creates its
        # files only once it has dropped privileges.
        paths.ensure()
        self._ready = True
        for name in os.listdir(paths.tmp):
            _unlinkQuietly(os.path.join(paths.tmp, name))
        entries = []
        for entry in _readEnvelopes(paths):
            if os.path.exists(paths.message(entry.id)):
                entries.append(entry)
            else:
                log.error("Queue envelope {id} has no message; dropping it", id=entry.id)
                _unlinkQuietly(paths.envelope(entry.id))
        known = {entry.id for entry in entries}
        for name in os.listdir(paths.msg):
            if name not in known:
                log.warn("Removing orphaned queued message {id}", id=name)
                _unlinkQuietly(paths.message(name))
        fsyncDirectory(paths.msg)
        fsyncDirectory(paths.env)
        return entries

    def update(self, entry: QueueEntry) -> Deferred:
        """
        Record C{entry}'s state durably.

        @return: L{Deferred} firing with L{None}, or failing with
            L{EntryGone} if the entry was deleted meanwhile.
        """
        data = entry.asJSON()
        return self._run(self._writeEnvelopeData, entry.id, data, True)

    def _writeEnvelope(self, entry: QueueEntry, mustExist: bool) -> None:
        self._writeEnvelopeData(entry.id, entry.asJSON(), mustExist)

    def _writeEnvelopeData(self, entryId: str, data: Dict[str, Any], mustExist: bool) -> None:
        final = self._paths.envelope(entryId)
        if mustExist and not os.path.exists(final):
            raise EntryGone(entryId)
        tmp = os.path.join(self._paths.tmp, "%s.%s.json" % (entryId, secrets.token_hex(4)))
        _writeDurably(tmp, final, json.dumps(data, sort_keys=True).encode("utf-8"))
        if mustExist and not os.path.exists(self._paths.message(entryId)):
            # 'queue delete' ran between the check above and the rename (it
            # removes the envelope, then the message): do not bring the
            # envelope back.
            if _unlinkQuietly(final):
                fsyncDirectory(self._paths.env)
            raise EntryGone(entryId)

    def remove(self, entryId: str) -> Deferred:
        """
        Forget a message that needs no more delivery.

        @return: L{Deferred} firing with L{None}.
        """
        return self._run(_removeFiles, self._paths, entryId)

    def exists(self, entryId: str) -> Deferred:
        """
        @return: L{Deferred} firing with whether the entry is still queued:
            its envelope and its message are both there.  (An update racing
            with L{deleteEntry} can bring back an envelope alone.)
        """
        paths = self._paths
        return self._run(lambda: os.path.exists(paths.envelope(entryId)) and os.path.exists(paths.message(entryId)))

    def messagePath(self, entryId: str) -> str:
        return self._paths.message(entryId)

    def openMessage(self, entryId: str) -> Deferred:
        """
        @return: L{Deferred} firing with the message opened for binary
            reading (the caller closes it), or failing with L{EntryGone}.
        """

        def opener() -> IO[bytes]:
            try:
                return open(self._paths.message(entryId), "rb")
            except FileNotFoundError:
                raise EntryGone(entryId) from None

        return self._run(opener)

    def readHeaders(self, entryId: str) -> Deferred:
        """
        @return: L{Deferred} firing with the message's header section
            (L{bytes}, up to the blank line, at most L{MAX_HEADER_BYTES}),
            or C{b""} if the message is gone.
        """
        return self._run(self._readHeaders, entryId)

    def _readHeaders(self, entryId: str) -> bytes:
        try:
            with open(self._paths.message(entryId), "rb") as f:
                head = f.read(MAX_HEADER_BYTES)
        except FileNotFoundError:
            return b""
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            return head[: end + 2]
        if head.startswith(b"\r\n"):
            return b""
        return head

    def readEntry(self, entryId: str) -> Deferred:
        """
        Read one entry, queued by this or another process.

        @return: L{Deferred} firing with the L{QueueEntry}, or L{None} if it
            is gone (or C{entryId} is no queue id).
        """
        return self._run(self._readEntry, entryId)

    def _readEntry(self, entryId: str) -> Optional[QueueEntry]:
        if not _ID.match(entryId) or not os.path.exists(self._paths.message(entryId)):
            return None
        try:
            with open(self._paths.envelope(entryId), "rb") as f:
                return QueueEntry.fromJSON(json.loads(f.read()))
        except FileNotFoundError:
            return None

    def readEntries(self) -> Deferred:
        """
        Read every entry with its message, like L{load} but leaving
        C{tmp/} alone (other processes may be writing there).

        @return: L{Deferred} firing with the L{QueueEntry}s, oldest first.
        """

        def read() -> List[QueueEntry]:
            return [e for e in _readEnvelopes(self._paths) if os.path.exists(self._paths.message(e.id))]

        return self._run(read)

    def takeFlushRequest(self) -> Deferred:
        """
        @return: L{Deferred} firing with whether a flush was requested
            (L{requestFlush}) since the last call; the request is consumed.
        """
        return self._run(_unlinkQuietly, self._paths.flush)
