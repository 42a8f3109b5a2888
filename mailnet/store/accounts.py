# -*- test-case-name: tests.test_accounts -*-
"""
The account store on disk: domains, users and aliases in one SQLite file
(C{accounts.sqlite3} in the data dir).

The daemon and C{mailnet-admin} open the same file at the same time: the
database runs in WAL mode (readers never block the writer) with a busy
timeout (writers wait for each other instead of failing), and nothing is
cached between calls, so a user the administrator adds is seen by the
running daemon at its next look-up.

Every method is one short transaction and runs synchronously: look-ups are
index reads of a few rows (see L{mailnet.interfaces}).  Writes commit with
C{synchronous=FULL}.

The schema has a version table; L{_MIGRATIONS} lists the steps from one
version to the next, applied in order when the store is opened.
"""

import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from zope.interface import implementer

from mailnet.address import normalizeAddress, normalizeDomain, splitAddress
from mailnet.errors import (
    BadAddress,
    ConfigError,
    DomainExists,
    UnknownAlias,
    UnknownDomain,
    UnknownUser,
    UserExists,
)
from mailnet.interfaces import IAccountStore

#: How deep alias chains may go before an address counts as undeliverable.
MAX_ALIAS_DEPTH = 10

#: Milliseconds a connection waits for another one's write to finish.
BUSY_TIMEOUT_MS = 10000

# Each entry takes the schema from version N to N + 1 (index N).
_MIGRATIONS: Tuple[str, ...] = (
    """
    CREATE TABLE domains (
        name TEXT PRIMARY KEY
    );
    CREATE TABLE users (
        address TEXT PRIMARY KEY,
        domain TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
        password_hash TEXT NOT NULL
    );
    CREATE INDEX users_domain ON users (domain);
    CREATE TABLE aliases (
        alias TEXT PRIMARY KEY,   -- 'local@domain', or '@domain' for a catch-all
        domain TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE
    );
    CREATE INDEX aliases_domain ON aliases (domain);
    CREATE TABLE alias_targets (
        alias TEXT NOT NULL REFERENCES aliases (alias) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (alias, position)
    );
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


def _aliasKey(alias: str) -> Tuple[str, str]:
    """
    Validate an alias (an address or C{@domain}).

    @return: C{(alias, domain)}, normalised.
    @raise BadAddress: it is neither.
    """
    if alias.startswith("@"):
        domain = normalizeDomain(alias[1:])
        return "@" + domain, domain
    alias = normalizeAddress(alias, allowUTF8=True)
    return alias, splitAddress(alias)[1]


def _targets(alias: str, targets: Sequence[str]) -> Tuple[str, ...]:
    """Validate and normalise alias targets, dropping duplicates."""
    if isinstance(targets, str):
        targets = [targets]
    result = tuple(dict.fromkeys(normalizeAddress(t, allowUTF8=True) for t in targets))
    if not result:
        raise BadAddress(address=alias, reason="an alias needs at least one target")
    return result


def expandAliases(
    address: str,
    isUser,
    isLocalDomain,
    aliasTargets,
) -> Optional[List[str]]:
    """
    The resolution rules of L{IAccountStore.resolve}, shared by the stores.

    @param isUser: C{address -> bool}.
    @param isLocalDomain: C{domain -> bool}.
    @param aliasTargets: C{alias -> tuple of targets or None}.
    """
    address = address.lower()
    if not isLocalDomain(splitAddress(address)[1]):
        return None
    result: Dict[str, None] = {}

    def expand(addr: str, depth: int, seen: frozenset) -> bool:
        if isUser(addr):
            result[addr] = None
            return True
        domain = splitAddress(addr)[1]
        if not isLocalDomain(domain):
            result[addr] = None  # remote: the relay queue takes it
            return True
        if depth >= MAX_ALIAS_DEPTH or addr in seen:
            return False
        targets = aliasTargets(addr)
        if targets is None:
            # A catch-all only for addresses that are neither users nor aliases.
            targets = aliasTargets("@" + domain)
        if targets is None:
            return False
        found = False
        for target in targets:
            found = expand(target, depth + 1, seen | {addr}) or found
        return found

    return list(result) if expand(address, 0, frozenset()) else None


@implementer(IAccountStore)
class SQLiteAccountStore:
    """
    An L{IAccountStore} in an SQLite file.

    @param path: the database file; created (mode 0600: it holds password
        hashes) with the current schema if missing.  Its directory must
        exist.
    @raise ConfigError: the file cannot be opened, or was written by a newer
        mailnet.
    """

    DEFAULT_NAME = "accounts.sqlite3"

    def __init__(self, path: str, openNow: bool = True) -> None:
        """
        @param openNow: open (and create or migrate) the file now; if
            C{False}, on first use -- so that a daemon started as root can
            bind its ports and drop privileges before it creates files.
        @raise ConfigError: (when opening) the file cannot be opened or used.
        """
        self.path = path
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        if openNow:
            self.open()

    def open(self) -> None:
        """
        Open the file if it is not open yet.

        @raise ConfigError: it cannot be opened or used.
        """
        if self._db is None:
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        path = self.path
        try:
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, and a
            # plain SELECT never holds a transaction open between calls.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(where=path, problem="cannot open the account store: %s" % (e,)) from e
        try:
            db.execute("PRAGMA busy_timeout = %d" % (BUSY_TIMEOUT_MS,))
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            self._migrate(db)
        except sqlite3.Error as e:
            db.close()
            raise ConfigError(where=path, problem="cannot use the account store: %s" % (e,)) from e
        return db

    def close(self) -> None:
        connection, self._db = self._db, None
        if connection is not None:
            connection.close()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """
        One transaction: IMMEDIATE for writes, so that two writers queue on
        the busy timeout instead of one failing on a lock upgrade.
        """
        with self._lock:
            self.open()
            assert self._db is not None
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    where=self.path,
                    problem="the account store has schema version %d; this mailnet knows up to %d: upgrade mailnet"
                    % (version, SCHEMA_VERSION),
                )
            for step in _MIGRATIONS[version:]:
                # executescript() would COMMIT our transaction; run statements one by one.
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def schemaVersion(self) -> int:
        with self._transaction() as db:
            return db.execute("SELECT version FROM schema_version").fetchone()[0]

    # --- domains ----------------------------------------------------------

    def domains(self) -> List[str]:
        with self._transaction() as db:
            return [r[0] for r in db.execute("SELECT name FROM domains ORDER BY name")]

    def isLocalDomain(self, domain: str) -> bool:
        with self._transaction() as db:
            return self._isLocalDomain(db, domain)

    @staticmethod
    def _isLocalDomain(db: sqlite3.Connection, domain: str) -> bool:
        return db.execute("SELECT 1 FROM domains WHERE name = ?", (domain.lower(),)).fetchone() is not None

    def addDomain(self, domain: str) -> None:
        domain = normalizeDomain(domain)
        with self._transaction(write=True) as db:
            if self._isLocalDomain(db, domain):
                raise DomainExists(domain=domain)
            db.execute("INSERT INTO domains (name) VALUES (?)", (domain,))

    def removeDomain(self, domain: str) -> None:
        domain = domain.lower()
        with self._transaction(write=True) as db:
            if not self._isLocalDomain(db, domain):
                raise UnknownDomain(domain=domain)
            # ON DELETE CASCADE removes the users, aliases and their targets.
            db.execute("DELETE FROM domains WHERE name = ?", (domain,))

    # --- users ------------------------------------------------------------

    def users(self, domain: Optional[str] = None) -> List[str]:
        with self._transaction() as db:
            if domain is None:
                rows = db.execute("SELECT address FROM users ORDER BY address")
            else:
                rows = db.execute("SELECT address FROM users WHERE domain = ? ORDER BY address", (domain.lower(),))
            return [r[0] for r in rows]

    def _localAddress(self, db: sqlite3.Connection, address: str) -> Tuple[str, str]:
        address = normalizeAddress(address, allowUTF8=True)
        domain = splitAddress(address)[1]
        if not self._isLocalDomain(db, domain):
            raise UnknownDomain(domain=domain)
        return address, domain

    def addUser(self, address: str, passwordHash: str) -> None:
        with self._transaction(write=True) as db:
            address, domain = self._localAddress(db, address)
            if self._isUser(db, address) or self._aliasTargets(db, address) is not None:
                raise UserExists(address=address)
            db.execute(
                "INSERT INTO users (address, domain, password_hash) VALUES (?, ?, ?)",
                (address, domain, passwordHash),
            )

    @staticmethod
    def _isUser(db: sqlite3.Connection, address: str) -> bool:
        return db.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone() is not None

    def setPasswordHash(self, address: str, passwordHash: str) -> None:
        address = address.lower()
        with self._transaction(write=True) as db:
            cursor = db.execute("UPDATE users SET password_hash = ? WHERE address = ?", (passwordHash, address))
            if cursor.rowcount == 0:
                raise UnknownUser(address=address)

    def removeUser(self, address: str) -> None:
        address = address.lower()
        with self._transaction(write=True) as db:
            if db.execute("DELETE FROM users WHERE address = ?", (address,)).rowcount == 0:
                raise UnknownUser(address=address)

    def passwordHash(self, address: str) -> Optional[str]:
        with self._transaction() as db:
            row = db.execute("SELECT password_hash FROM users WHERE address = ?", (address.lower(),)).fetchone()
        return row[0] if row else None

    # --- aliases ----------------------------------------------------------

    def addAlias(self, alias: str, targets: Sequence[str]) -> None:
        """
        Add an alias, or replace the targets of an existing one.
        """
        alias, domain = _aliasKey(alias.lower())
        normalised = _targets(alias, targets)
        with self._transaction(write=True) as db:
            if not self._isLocalDomain(db, domain):
                raise UnknownDomain(domain=domain)
            if self._isUser(db, alias):
                raise UserExists(address=alias)
            db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            db.execute("INSERT INTO aliases (alias, domain) VALUES (?, ?)", (alias, domain))
            db.executemany(
                "INSERT INTO alias_targets (alias, position, target) VALUES (?, ?, ?)",
                [(alias, i, t) for i, t in enumerate(normalised)],
            )

    def removeAlias(self, alias: str) -> None:
        alias = alias.lower()
        with self._transaction(write=True) as db:
            if db.execute("DELETE FROM aliases WHERE alias = ?", (alias,)).rowcount == 0:
                raise UnknownAlias(alias=alias)

    @staticmethod
    def _aliasTargets(db: sqlite3.Connection, alias: str) -> Optional[Tuple[str, ...]]:
        if db.execute("SELECT 1 FROM aliases WHERE alias = ?", (alias,)).fetchone() is None:
            return None
        rows = db.execute("SELECT target FROM alias_targets WHERE alias = ? ORDER BY position", (alias,))
        return tuple(r[0] for r in rows)

    def aliases(self) -> Dict[str, Tuple[str, ...]]:
        with self._transaction() as db:
            result: Dict[str, List[str]] = {}
            for alias in db.execute("SELECT alias FROM aliases ORDER BY alias").fetchall():
                result[alias[0]] = []
            for alias, target in db.execute("SELECT alias, target FROM alias_targets ORDER BY alias, position"):
                result[alias].append(target)
        return {alias: tuple(targets) for alias, targets in result.items()}

    def resolve(self, address: str) -> Optional[List[str]]:
        # One read transaction: a consistent snapshot for the whole expansion.
        with self._transaction() as db:
            return expandAliases(
                address,
                isUser=lambda a: self._isUser(db, a),
                isLocalDomain=lambda d: self._isLocalDomain(db, d),
                aliasTargets=lambda a: self._aliasTargets(db, a),
            )


def openAccountStore(dataDir: str, openNow: bool = True) -> SQLiteAccountStore:
    """
    Open (creating if needed) the account store of a data dir, which must
    exist.  See L{SQLiteAccountStore} for C{openNow}.
    """
    return SQLiteAccountStore(os.path.join(dataDir, SQLiteAccountStore.DEFAULT_NAME), openNow)
