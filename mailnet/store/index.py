# -*- test-case-name: tests.test_index -*-
"""
The folder index: per-user SQLite database of IMAP state over a Maildir++
tree.

The Maildir is the truth: messages are files, system flags are letters in
their names.  The index adds what Maildir cannot hold -- UIDs, UIDVALIDITY,
mod-sequences, keywords, cached wire sizes and parsed structures -- and is a
cache in every other respect: delete it and the next sync rebuilds it from
the files (with a new UIDVALIDITY per folder, so clients re-download, but no
mail is lost).

One database per user, C{mailnet-index.sqlite} in the Maildir root (WAL
mode, C{synchronous=FULL}: a UID handed out survives a crash).  Tables:

  - C{folders}: name, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the first UID
    not yet claimed as C{\\Recent}, special use, and the C{new/} and
    C{cur/} directory mtimes of the last listing (when they are unchanged,
    and were not too recent to trust, a sync does not list the directories).
  - C{messages}: folder, UID, key (the Maildir unique name, which is also
    POP3's UIDL), where the file is (C{new/...} or C{cur/...}), system flag
    letters, keywords, modseq, internal date (the file's mtime, as
    Dovecot), wire size.
  - C{parsed}: the cached L{mailnet.mime.ParsedMessage} blobs.
  - C{expunged}: folder, UID, modseq (what QRESYNC and other processes'
    catch-up need).

Every change to a folder's rows bumps its HIGHESTMODSEQ, so a process
catches up with changes made by others (another process, or a COPY into
a folder from another folder object) by reading the rows with a higher
modseq and the expunged UIDs above it.

Everything here blocks: it runs in the thread pool, one operation per
account at a time (L{mailnet.store.folders} serialises them), with SQLite
transactions (C{BEGIN IMMEDIATE}) against other processes.
"""

import gc
import itertools
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

from mailnet.errors import MessageGone, NoSuchFolder
from mailnet.store.folders import applyFlags, normalizeFlags
from mailnet.store.maildir import (
    FLAG_LETTERS,
    _sortKey,
    _uidOf,
    _wireSize,
    copyMessage,
    flagsOf,
    fsyncDirectory,
    splitInfo,
    uniqueName,
    withFlags,
)
from mailnet.store.records import SYSTEM_FLAGS, FolderState, MessageRecord

#: The index's file name in the Maildir root.
INDEX_NAME = "mailnet-index.sqlite"
#: Left in a folder once its C{dovecot-uidlist} was imported: after that a
#: lost index must not import the (stale) list again.
UIDLIST_IMPORTED = "mailnet-uidlist-imported"
#: A directory mtime this recent (nanoseconds) may hide a change made in
#: the same clock tick as the listing: list again next time.  File systems
#: with whole-second mtimes need two seconds; with finer ones (ext4, XFS,
#: btrfs: the kernel's coarse clock, a few milliseconds) 100 ms is plenty.
#: Parsed messages (L{FolderIndex.parsed}) kept in memory per folder, about
#: 1.2 KB each: a folder's FETCH ENVELOPE, header FETCHes and header SEARCHes
#: then read no database rows and decode nothing.  The oldest go first.
PARSED_CACHE = 20000

_TRUST_AFTER = 2 * 10**9
_TRUST_AFTER_FINE = 10**8


def _trusted(mtime: int, now: int) -> bool:
    """Whether a listing made at C{now} saw every change that set C{mtime}."""
    window = _TRUST_AFTER if mtime % 10**9 == 0 else _TRUST_AFTER_FINE
    return now - mtime > window

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    firstrecent INTEGER NOT NULL,
    specialuse TEXT,
    newmtime INTEGER NOT NULL DEFAULT 0,
    curmtime INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    file TEXT NOT NULL,
    flags TEXT NOT NULL,
    keywords TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (folder, modseq);
CREATE TABLE IF NOT EXISTS parsed (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (folder, uid)
);
CREATE TABLE IF NOT EXISTS expunged (
    folder INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (folder, uid)
) WITHOUT ROWID;
"""

_lettersCache: Dict[FrozenSet[str], str] = {}


def _letters(flags: FrozenSet[str]) -> str:
    """The system flags' Maildir letters, in order."""
    letters = _lettersCache.get(flags)
    if letters is None:
        letters = "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))
        if len(_lettersCache) < 10000:
            _lettersCache[flags] = letters
    return letters


def wireSizeOfFile(path: str) -> int:
    """The size of a stored message sent with CRLF line endings."""
    size = 0
    pendingCR = False
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            lfs = chunk.count(b"\n")
            crlfs = chunk.count(b"\r\n") + (1 if pendingCR and chunk[:1] == b"\n" else 0)
            size += len(chunk) + lfs - crlfs
            pendingCR = chunk.endswith(b"\r")
    return size


def readUidList(path: str) -> Optional[Tuple[int, int, Dict[str, Tuple[int, Optional[int]]]]]:
    """
    Read a Dovecot (version 3) or Courier (version 1) C{dovecot-uidlist}.

    @return: C{(uidValidity, nextUid, {key: (uid, wireSize or None)})}, or
        L{None} if there is none or it is not one we can read.
    """
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    if not lines:
        return None
    header = lines[0].split()
    entries: Dict[str, Tuple[int, Optional[int]]] = {}
    try:
        if header[0] == "1":
            uidValidity, nextUid = int(header[1]), int(header[2])
            for line in lines[1:]:
                fields = line.split(None, 1)
                if len(fields) == 2 and fields[0].isdigit():
                    entries[_uidOf(fields[1].strip())] = (int(fields[0]), None)
        elif header[0] in ("2", "3"):
            values = {field[:1]: field[1:] for field in header[1:] if field}
            uidValidity, nextUid = int(values["V"]), int(values.get("N", "1"))
            for line in lines[1:]:
                before, sep, filename = line.partition(":")
                fields = before.split()
                if not sep or not fields or not fields[0].isdigit():
                    continue
                size = None
                for field in fields[1:]:
                    if field.startswith("W") and field[1:].isdigit():
                        size = int(field[1:])
                entries[_uidOf(filename)] = (int(fields[0]), size)
        else:
            return None
    except (IndexError, KeyError, ValueError):
        return None
    if not 0 < uidValidity < 2**32:
        return None
    return uidValidity, nextUid, entries


def readKeywordList(path: str) -> Dict[str, str]:
    """Dovecot's C{dovecot-keywords}: filename letter (C{a}-C{z}) -> keyword."""
    result = {}
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                index, _, keyword = line.strip().partition(" ")
                if index.isdigit() and int(index) < 26 and keyword:
                    result[chr(ord("a") + int(index))] = keyword
    except OSError:
        pass
    return result


class AccountIndex:
    """
    One user's index database (opened on first use, in a thread).

    @param root: the user's Maildir.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, INDEX_NAME)
        self._db: Optional[sqlite3.Connection] = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def transaction(self) -> "_Transaction":
        return _Transaction(self.db)

    def newUidValidity(self) -> int:
        """A UIDVALIDITY no folder of this index had: the time, or one more than the last."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        value = max(int(time.time()), (row[0] if row else 0) + 1) % (2**32 - 1) or 1
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('uidvalidity', ?)", (value,))
        return value

    def folderRow(self, name: str):
        return self.db.execute(
            "SELECT id, uidvalidity, uidnext, highestmodseq, firstrecent, specialuse, newmtime, curmtime FROM folders WHERE name = ?",
            (name,),
        ).fetchone()

    def createFolderRow(self, name: str, uidValidity: int, uidNext: int = 1, specialUse: Optional[str] = None) -> int:
        self.db.execute("DELETE FROM folders WHERE name = ?", (name,))
        cursor = self.db.execute(
            "INSERT INTO folders (name, uidvalidity, uidnext, highestmodseq, firstrecent, specialuse) VALUES (?, ?, ?, 1, 1, ?)",
            (name, uidValidity, uidNext, specialUse),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def specialUses(self) -> Dict[str, str]:
        return dict(self.db.execute("SELECT name, specialuse FROM folders WHERE specialuse IS NOT NULL"))

    def dropFolder(self, name: str) -> None:
        row = self.db.execute("SELECT id FROM folders WHERE name = ?", (name,)).fetchone()
        if row is None:
            return
        for table in ("messages", "parsed", "expunged"):
            self.db.execute("DELETE FROM %s WHERE folder = ?" % (table,), (row[0],))
        self.db.execute("DELETE FROM folders WHERE id = ?", (row[0],))

    def renameFolderRow(self, old: str, new: str) -> None:
        self.db.execute("DELETE FROM folders WHERE name = ?", (new,))
        self.db.execute("UPDATE folders SET name = ? WHERE name = ?", (new, old))


class _Transaction:
    """C{BEGIN IMMEDIATE} ... C{COMMIT}, or C{ROLLBACK} on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


_flagCache: Dict[Tuple[str, str], FrozenSet[str]] = {}


def _flags(letters: str, keywords: str) -> FrozenSet[str]:
    key = (letters, keywords)
    flags = _flagCache.get(key)
    if flags is None:
        flags = flagsOf(letters) | frozenset(keywords.split())
        if len(_flagCache) < 10000:
            _flagCache[key] = flags
    return flags


_keywordsCache: Dict[FrozenSet[str], str] = {}


def _keywords(flags: FrozenSet[str]) -> str:
    """The keywords among C{flags}, as the index stores them."""
    keywords = _keywordsCache.get(flags)
    if keywords is None:
        keywords = " ".join(sorted(f for f in flags if f not in SYSTEM_FLAGS))
        if len(_keywordsCache) < 10000:
            _keywordsCache[flags] = keywords
    return keywords


class FolderIndex:
    """
    One folder's index: its rows in the account's database and, once
    loaded, its messages in memory (with the L{FolderState} cached until
    something changes).

    Only called in the thread pool, one call per account at a time.

    @param path: the folder's Maildir (with C{cur/ new/ tmp/}).
    @param hostname: for the unique names of copies.
    """

    def __init__(self, account: AccountIndex, name: str, path: str, hostname: str = "") -> None:
        self.account = account
        self.name = name
        self.path = path
        self.hostname = hostname
        self._reset()

    def _reset(self) -> None:
        self.folderId: Optional[int] = None
        self.uidValidity = 0
        self.uidNext = 1
        self.highestModSeq = 0
        self.firstRecent = 1
        self.specialUse: Optional[str] = None
        self.records: Dict[int, MessageRecord] = {}
        self.files: Dict[int, str] = {}
        self.byKey: Dict[str, int] = {}
        self.loaded = False
        self._mtimes = (0, 0)
        self._state: Optional[FolderState] = None
        self._parsed: Dict[int, object] = {}

    # -- catching up with the database ------------------------------------

    def catchUp(self) -> bool:
        """
        Bring memory up to date with the database.

        @return: whether the folder has a row.
        """
        row = self.account.folderRow(self.name)
        if row is None:
            if self.loaded:
                self._reset()
            return False
        folderId, uidValidity, uidNext, highest, firstRecent, specialUse, newMtime, curMtime = row
        if not self.loaded or folderId != self.folderId or uidValidity != self.uidValidity:
            self._reset()
            self.folderId, self.uidValidity = folderId, uidValidity
            self._load("SELECT uid, key, file, flags, keywords, modseq, internaldate, size FROM messages WHERE folder = ? ORDER BY uid", (folderId,))
            self.loaded = True
        elif highest != self.highestModSeq:
            self._load(
                "SELECT uid, key, file, flags, keywords, modseq, internaldate, size FROM messages WHERE folder = ? AND modseq > ? ORDER BY uid",
                (folderId, self.highestModSeq),
            )
            gone = self.account.db.execute("SELECT uid FROM expunged WHERE folder = ? AND modseq > ?", (folderId, self.highestModSeq))
            for (uid,) in gone:
                self._forget(uid)
            self._state = None
        self.uidNext, self.highestModSeq, self.firstRecent = uidNext, highest, firstRecent
        self.specialUse = specialUse
        self._mtimes = (newMtime, curMtime)
        return True

    def _load(self, query: str, args: tuple) -> None:
        with _withoutGC():
            rows = self.account.db.execute(query, args).fetchall()
            if not rows:
                return
            record, flagsOf = MessageRecord, _flags
            self.records.update([(r[0], record(r[0], flagsOf(r[3], r[4]), r[5], r[6], r[7], r[1])) for r in rows])
            self.files.update([(r[0], r[2]) for r in rows])
            self.byKey.update([(r[1], r[0]) for r in rows])
            self._state = None

    def _forget(self, uid: int) -> None:
        record = self.records.pop(uid, None)
        self._parsed.pop(uid, None)
        if record is not None:
            self.files.pop(uid, None)
            if self.byKey.get(record.key) == uid:
                del self.byKey[record.key]

    def ensure(self) -> None:
        """
        Catch up, or index the folder for the first time (importing its
        C{dovecot-uidlist} if there is one).

        @raise NoSuchFolder: its directory is gone.
        """
        if self.catchUp():
            if not os.path.isdir(self.path):
                raise NoSuchFolder(name=self.name)
            return
        if not os.path.isdir(self.path):
            raise NoSuchFolder(name=self.name)
        imported = None
        marker = os.path.join(self.path, UIDLIST_IMPORTED)
        if not os.path.exists(marker):
            imported = readUidList(os.path.join(self.path, "dovecot-uidlist"))
        if imported is not None:
            uidValidity, nextUid, entries = imported
            nextUid = max([nextUid] + [uid + 1 for uid, _ in entries.values()])
            self.account.createFolderRow(self.name, uidValidity, nextUid, self._defaultUse())
        else:
            self.account.createFolderRow(self.name, self.account.newUidValidity(), 1, self._defaultUse())
        self.catchUp()
        if imported is not None:
            keywords = readKeywordList(os.path.join(self.path, "dovecot-keywords"))
            self._scan(force=True, imported=imported[2], keywordLetters=keywords)
            with open(marker, "wb"):
                pass
        else:
            self._scan(force=True)

    def _defaultUse(self) -> Optional[str]:
        from mailnet.store.records import DEFAULT_FOLDERS

        return dict(DEFAULT_FOLDERS).get(self.name)

    # -- the disk ------------------------------------------------------------

    def _dirMtimes(self) -> Tuple[int, int]:
        try:
            return (os.stat(os.path.join(self.path, "new")).st_mtime_ns, os.stat(os.path.join(self.path, "cur")).st_mtime_ns)
        except FileNotFoundError:
            if not os.path.isdir(self.path):
                raise NoSuchFolder(name=self.name)
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.path, sub), exist_ok=True)
            return (0, 0)

    def _list(self) -> set:
        """Every message file, as C{new/name} and C{cur/name}."""
        found = set()
        for sub in ("new", "cur"):
            prefix = sub + "/"
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            found.update([prefix + name for name in names if name[:1] != "."])
        return found

    def _scan(self, force: bool = False, imported: Optional[Dict] = None, keywordLetters: Optional[Dict[str, str]] = None) -> bool:
        """
        Diff the directories with memory and the database: set operations on
        the file names (at C speed), then work only on the differences.

        @return: whether anything changed.
        """
        mtimes = self._dirMtimes()
        if not force and mtimes == self._mtimes and 0 not in mtimes:
            return False
        now = time.time_ns()
        listing = self._list()
        known = set(self.files.values())
        added = listing - known
        removed = known - listing
        if removed:
            # readdir() may skip a file renamed meanwhile: look again before
            # calling anything expunged.
            again = self._list()
            added |= again - known
            removed -= again
            listing |= again
        # Key -> its file among the new names (cur/ preferred: files move there).
        addedByKey: Dict[str, str] = {}
        for file in sorted(added, reverse=True):
            addedByKey.setdefault(_uidOf(file[4:]), file)
        modseq = self.highestModSeq + 1
        changed = False
        db = self.account.db
        # Moved or renamed files (flags changed by another Maildir reader).
        for key, file in addedByKey.items():
            uid = self.byKey.get(key)
            if uid is None or self.files[uid] in listing:
                # A new message, or a second file of one we have: leave it.
                continue
            record = self.records[uid]
            letters = splitInfo(file)[1] if file.startswith("cur/") else ""
            flags = flagsOf(letters) | frozenset(f for f in record.flags if f not in SYSTEM_FLAGS)
            record = MessageRecord(uid, flags, modseq, record.internalDate, record.size, key)
            self.records[uid] = record
            self.files[uid] = file
            db.execute(
                "UPDATE messages SET file = ?, flags = ?, modseq = ? WHERE folder = ? AND uid = ?",
                (file, _letters(flags), modseq, self.folderId, uid),
            )
            changed = True
        # Expunged by someone else: the file is gone and no other has its key.
        gone = []
        for file in removed:
            uid = self.byKey.get(_uidOf(file[4:]))
            if uid is not None and self.files.get(uid) == file:
                gone.append(uid)
        for uid in gone:
            self._forget(uid)
        if gone:
            self._expungeRows(gone, modseq)
            changed = True
        # New mail, in delivery order.
        fresh = []
        for key, file in addedByKey.items():
            if key in self.byKey:
                continue
            try:
                stat = os.stat(os.path.join(self.path, file))
            except FileNotFoundError:
                continue
            fresh.append((_sortKey(key, stat.st_mtime), key, file, stat))
        if fresh:
            fresh.sort()
            rows = []
            fromList = imported or {}
            assigned = sorted((fromList[key][0], key) for _, key, _, _ in fresh if key in fromList)
            uids = {key: uid for uid, key in assigned}
            uidNext = max([self.uidNext] + [uid + 1 for uid in uids.values()])
            for _, key, _, _ in fresh:
                if key not in uids:
                    uids[key] = uidNext
                    uidNext += 1
            for _, key, file, stat in fresh:
                name = file[4:]
                letters = splitInfo(name)[1] if file.startswith("cur/") else ""
                flags = flagsOf(letters)
                if keywordLetters:
                    flags = normalizeFlags(list(flags) + [keywordLetters[c] for c in letters if c in keywordLetters])
                size = _wireSize(name)
                if size is None and key in fromList:
                    size = fromList[key][1]
                if size is None:
                    try:
                        size = wireSizeOfFile(os.path.join(self.path, file))
                    except FileNotFoundError:
                        continue
                rows.append((uids[key], key, file, flags, stat.st_mtime, size))
            rows.sort()
            self._insert(rows, modseq)
            self.uidNext = max(self.uidNext, uidNext)
            changed = True
        if changed:
            self.highestModSeq = modseq
            self._state = None
        trusted = mtimes if all(_trusted(m, now) for m in mtimes) else (0, 0)
        if changed or trusted != self._mtimes:
            self._mtimes = trusted
            db.execute(
                "UPDATE folders SET uidnext = ?, highestmodseq = ?, newmtime = ?, curmtime = ? WHERE id = ?",
                (self.uidNext, self.highestModSeq, trusted[0], trusted[1], self.folderId),
            )
        return changed

    def _insert(self, rows: Sequence[Tuple[int, str, str, FrozenSet[str], float, int]], modseq: int) -> None:
        """Add messages (UID order) to memory and the database."""
        self.account.db.executemany(
            "INSERT OR REPLACE INTO messages (folder, uid, key, file, flags, keywords, modseq, internaldate, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(self.folderId, uid, key, file, _letters(flags), _keywords(flags), modseq, date, size) for uid, key, file, flags, date, size in rows],
        )
        with _withoutGC():
            for uid, key, file, flags, date, size in rows:
                self.records[uid] = MessageRecord(uid, frozenset(flags), modseq, date, size, key)
                self.files[uid] = file
                self.byKey[key] = uid

    def _expungeRows(self, uids: Sequence[int], modseq: int) -> None:
        db = self.account.db
        args = [(self.folderId, uid) for uid in uids]
        db.executemany("DELETE FROM messages WHERE folder = ? AND uid = ?", args)
        db.executemany("DELETE FROM parsed WHERE folder = ? AND uid = ?", args)
        db.executemany("INSERT OR REPLACE INTO expunged (folder, uid, modseq) VALUES (?, ?, ?)", [(self.folderId, uid, modseq) for uid in uids])

    def _bump(self, modseq: int) -> None:
        self.highestModSeq = modseq
        self._state = None
        self.account.db.execute(
            "UPDATE folders SET uidnext = ?, highestmodseq = ? WHERE id = ?", (self.uidNext, modseq, self.folderId)
        )

    # -- operations (each inside one transaction) ---------------------------

    @contextmanager
    def _changing(self, *others: "FolderIndex") -> Iterator[sqlite3.Connection]:
        """
        One transaction.  If it fails, it is rolled back, and memory (which
        may hold some of its changes) is dropped: the next operation
        reloads it from the index and the disk.
        """
        try:
            with self.account.transaction() as db:
                yield db
        except BaseException:
            for index in (self, *others):
                index._reset()
            raise

    def state(self) -> FolderState:
        if self._state is None:
            self._state = FolderState(self.uidValidity, self.uidNext, self.highestModSeq, tuple(self.records.values()))
        return self._state

    def sync(self, force: bool = False) -> FolderState:
        with self._changing():
            self.ensure()
            self._scan(force)
        return self.state()

    def claimRecent(self) -> FrozenSet[int]:
        with self._changing() as db:
            self.ensure()
            recent = frozenset(uid for uid in self.records if uid >= self.firstRecent)
            self.firstRecent = self.uidNext
            db.execute("UPDATE folders SET firstrecent = ? WHERE id = ?", (self.uidNext, self.folderId))
        return recent

    def setFlags(self, uids: Iterable[int], flags: FrozenSet[str], mode: str, unchangedSince: Optional[int]):
        changed: List[MessageRecord] = []
        refused: List[int] = []
        with self._changing() as db, _withoutGC():
            self.ensure()
            modseq = self.highestModSeq + 1
            touched = set()
            rows = []
            computed: Dict[FrozenSet[str], FrozenSet[str]] = {}
            for uid in sorted(set(uids)):
                for _attempt in range(2):
                    record = self.records.get(uid)
                    if record is None:
                        break
                    if unchangedSince is not None and record.modSeq > unchangedSince:
                        refused.append(uid)
                        break
                    new = computed.get(record.flags)
                    if new is None:
                        new = computed[record.flags] = applyFlags(record.flags, flags, mode)
                    if new == record.flags:
                        break
                    file = self.files[uid]
                    system = new & SYSTEM_FLAGS
                    if file.startswith("new/") or system != record.flags & SYSTEM_FLAGS:
                        target = "cur/" + withFlags(file[4:], system)
                        try:
                            os.rename(os.path.join(self.path, file), os.path.join(self.path, target))
                        except FileNotFoundError:
                            # Renamed (flags set) or removed by another Maildir
                            # reader since the last sync: look, then start again
                            # from what it did.
                            self._scan(force=True)
                            continue
                        touched.add(file[:3])
                        touched.add("cur")
                        self.files[uid] = file = target
                    record = MessageRecord(uid, new, modseq, record.internalDate, record.size, record.key)
                    self.records[uid] = record
                    rows.append((file, _letters(new), _keywords(new), modseq, self.folderId, uid))
                    changed.append(record)
                    break
            db.executemany("UPDATE messages SET file = ?, flags = ?, keywords = ?, modseq = ? WHERE folder = ? AND uid = ?", rows)
            if changed and not touched:
                # Keywords only: no file moved, so nothing would tell other
                # processes' watchers.  A new mtime on cur/ does (and makes
                # their next sync look, finding the change in the index).
                os.utime(os.path.join(self.path, "cur"))
            for sub in touched:
                fsyncDirectory(os.path.join(self.path, sub))
            if changed:
                self._bump(max(modseq, self.highestModSeq))
        return changed, refused

    def expunge(self, uids: Optional[Iterable[int]]) -> List[int]:
        with self._changing():
            self.ensure()
            self._scan()
            among = None if uids is None else set(uids)
            gone = [uid for uid, r in self.records.items() if "\\Deleted" in r.flags and (among is None or uid in among)]
            self._remove(gone)
        return gone

    def _remove(self, uids: List[int]) -> None:
        touched = set()
        for uid in uids:
            file = self.files.get(uid)
            for _ in range(2):
                if file is None:
                    break
                try:
                    os.unlink(os.path.join(self.path, file))
                    touched.add(file[:3])
                    break
                except FileNotFoundError:
                    self._scan(force=True)
                    file = self.files.get(uid)
        for sub in touched:
            fsyncDirectory(os.path.join(self.path, sub))
        present = [uid for uid in uids if uid in self.records]
        if present:
            modseq = self.highestModSeq + 1
            for uid in present:
                self._forget(uid)
            self._expungeRows(present, modseq)
            self._bump(modseq)

    def copy(self, uids: Iterable[int], target: "FolderIndex", move: bool = False) -> Tuple[int, List[Tuple[int, int]]]:
        """
        Copy (link) or move (rename) messages into C{target}, which shares
        this folder's database.
        """
        with self._changing(target) as db:
            self.ensure()
            if target is not self:
                target.ensure()
            added = []
            pairs = []
            sources = []
            for uid in sorted(set(uids)):
                record = self.records.get(uid)
                if record is None:
                    continue
                placed = self._place(uid, record, target, move)
                if placed is None:
                    continue
                key, file = placed
                added.append((record, key, file))
                sources.append(uid)
            if move and sources:
                fsyncDirectory(os.path.join(self.path, "cur"))
                fsyncDirectory(os.path.join(self.path, "new"))
            if added:
                fsyncDirectory(os.path.join(target.path, "cur"))
                # The target may have changed meanwhile (it is self).
                first = target.uidNext
                rows = []
                for i, (record, key, file) in enumerate(added):
                    rows.append((first + i, key, file, record.flags, record.internalDate, record.size))
                    pairs.append((record.uid, first + i))
                modseq = target.highestModSeq + 1
                target.uidNext = first + len(rows)
                target._insert(rows, modseq)
                db.executemany(
                    "INSERT OR REPLACE INTO parsed (folder, uid, data) SELECT ?, ?, data FROM parsed WHERE folder = ? AND uid = ?",
                    [(target.folderId, new, self.folderId, old) for old, new in pairs],
                )
                target._bump(modseq)
            if move and sources:
                modseq = self.highestModSeq + 1
                for uid in sources:
                    self._forget(uid)
                self._expungeRows(sources, modseq)
                self._bump(modseq)
        return target.uidValidity, pairs

    def _place(self, uid: int, record: MessageRecord, target: "FolderIndex", move: bool) -> Optional[Tuple[str, str]]:
        """
        Link (copy) or rename (move) a message's file into the target's
        C{cur/} under a new unique name, with its flags.

        @return: C{(key, file)} of the new file, or L{None} if the source is gone.
        """
        for attempt in range(2):
            if attempt:
                # Moved by someone else: look again.
                self._scan(force=True)
            file = self.files.get(uid)
            if file is None:
                return None
            source = os.path.join(self.path, file)
            key = uniqueName(self.hostname)
            try:
                stored = os.stat(source).st_size
                name = withFlags("%s,S=%d,W=%d" % (key, stored, record.size), record.flags & SYSTEM_FLAGS)
                destination = os.path.join(target.path, "cur", name)
                if move:
                    os.rename(source, destination)
                else:
                    _link(source, destination, os.path.join(target.path, "tmp", name))
            except FileNotFoundError:
                continue
            return key, "cur/" + name
        return None

    def add(self, tmp: str, key: str, name: str, flags: FrozenSet[str], internalDate: float, size: int, parsed: Optional[bytes] = None) -> int:
        """
        APPEND: move a written and synced file from C{tmp/} into C{cur/}
        as C{name} and index it.

        @param parsed: its parsed form (C{toBytes}), if known: cached now.
        @return: its UID.
        """
        with self._changing() as db:
            self.ensure()
            os.rename(tmp, os.path.join(self.path, "cur", name))
            fsyncDirectory(os.path.join(self.path, "cur"))
            uid = self.uidNext
            self.uidNext += 1
            modseq = self.highestModSeq + 1
            self._insert([(uid, key, "cur/" + name, normalizeFlags(flags), internalDate, size)], modseq)
            if parsed is not None:
                db.execute("INSERT OR REPLACE INTO parsed (folder, uid, data) VALUES (?, ?, ?)", (self.folderId, uid, parsed))
            self._bump(modseq)
        return uid

    def openMessage(self, uid: int):
        """Open a message's file (blocking); L{MessageGone} if it is not there."""
        file = self.files.get(uid)
        if file is not None:
            try:
                return open(os.path.join(self.path, file), "rb")
            except FileNotFoundError:
                pass
        record = self.records.get(uid)
        if record is not None:
            for sub in ("cur", "new"):
                try:
                    names = os.listdir(os.path.join(self.path, sub))
                except FileNotFoundError:
                    continue
                for name in names:
                    if _uidOf(name) == record.key:
                        try:
                            return open(os.path.join(self.path, sub, name), "rb")
                        except FileNotFoundError:
                            pass
        raise MessageGone(uid=str(uid))

    def parsed(self, uids: Iterable[int], parse: Callable, load: Callable) -> Dict[int, object]:
        """
        The parsed messages: from memory (the last L{PARSED_CACHE} read),
        from the database cache, or parsed now (and cached when the parse
        result has a C{toBytes}).
        """
        self.ensureLoaded()
        cache = self._parsed
        result: Dict[int, object] = {}
        missing = []
        wanted = dict.fromkeys(uids)
        for uid in wanted:
            hit = cache.get(uid)
            if hit is not None:
                result[uid] = hit
            elif uid in self.records:
                missing.append(uid)
        if not missing:
            return result
        found: Dict[int, object] = {}
        db = self.account.db
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            query = "SELECT uid, data FROM parsed WHERE folder = ? AND uid IN (%s)" % (",".join("?" * len(chunk)),)
            for uid, data in db.execute(query, [self.folderId, *chunk]):
                try:
                    found[uid] = load(data)
                except ValueError:
                    pass
        fresh = []
        for uid in missing:
            if uid in found:
                continue
            try:
                with self.openMessage(uid) as f:
                    parsed = parse(f)
            except MessageGone:
                continue
            found[uid] = parsed
            try:
                fresh.append((self.folderId, uid, parsed.toBytes()))
            except (AttributeError, NotImplementedError):
                pass
        if fresh:
            with self._changing() as db:
                present = [row for row in fresh if row[1] in self.records]
                db.executemany("INSERT OR REPLACE INTO parsed (folder, uid, data) VALUES (?, ?, ?)", present)
        for uid in missing:
            parsed = found.get(uid)
            if parsed is not None and uid in self.records:
                result[uid] = cache[uid] = parsed
        excess = len(cache) - PARSED_CACHE
        if excess > 0:
            for uid in list(itertools.islice(cache, excess)):
                del cache[uid]
        return {uid: result[uid] for uid in wanted if uid in result}

    def ensureLoaded(self) -> None:
        if not self.loaded:
            with self._changing():
                self.ensure()


@contextmanager
def _withoutGC() -> Iterator[None]:
    """
    Make many long-lived objects (a folder's records) without the cyclic
    garbage collector running over and over meanwhile: it finds nothing
    among them and, for 100,000 messages, more than doubles the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _link(source: str, target: str, tmp: str) -> None:
    """A hard link, or a copy where links are impossible (another file system, no permission)."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:
        copyMessage(source, tmp, target)
