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
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from zope.interface import implementer

from mailnet.address import canonicalAddress, lookAlike, mailboxAddress, normalizeAddress, normalizeDomain, splitAddress
from mailnet.errors import (
    AliasExpansionTooLarge,
    BadAddress,
    ConfigError,
    DomainExists,
    LookAlikeAddress,
    UnknownAlias,
    UnknownDomain,
    UnknownUser,
    UserExists,
)
from mailnet.interfaces import IAccountStore

#: How deep alias chains may go before an address counts as undeliverable.
MAX_ALIAS_DEPTH = 10

#: Recipients one address may expand to, and aliases expanded on the way
#: (as Postfix's virtual_alias_expansion_limit): resolving runs on the
#: reactor thread, so its cost must be bounded whatever the table holds.
MAX_ALIAS_EXPANSION = 1000

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
    isUser: Callable[[str], bool],
    isLocalDomain: Callable[[str], bool],
    aliasTargets: Callable[[str], Optional[Tuple[str, ...]]],
    usersAmong: Optional[Callable[[Sequence[str]], Iterable[str]]] = None,
) -> Optional[List[str]]:
    """
    The resolution rules of L{IAccountStore.resolve}, shared by the stores.

    Each address is expanded once (again only if it is reached by a
    shorter path, so that the depth limit means the same in any order):
    a "diamond" of aliases that all point to each other costs a look-up
    per alias, not one per path.  At most L{MAX_ALIAS_DEPTH} levels deep,
    with at most L{MAX_ALIAS_EXPANSION} recipients and as many alias
    look-ups.

    @param isUser: C{address -> bool}.
    @param isLocalDomain: C{domain -> bool}.
    @param aliasTargets: C{alias -> tuple of targets or None}.
    @param usersAmong: C{addresses -> those that are users}: one look-up
        for all the targets of an alias (a list of a thousand members is
        then a few queries, not a thousand).
    @raise AliasExpansionTooLarge: the expansion needs more recipients or
        look-ups than L{MAX_ALIAS_EXPANSION}.
    """
    address = canonicalAddress(address)
    domains: Dict[str, bool] = {}

    def local(domain: str) -> bool:
        known = domains.get(domain)
        if known is None:
            known = domains[domain] = isLocalDomain(domain)
        return known

    if not local(splitAddress(address)[1]):
        return None
    result: Dict[str, None] = {}
    catchAlls: Dict[str, Optional[Tuple[str, ...]]] = {}
    # alias -> the smallest depth it was expanded at.  A loop comes back to
    # an alias deeper than before, so it ends here too.
    expanded: Dict[str, int] = {}
    expansions = [0]
    users: Dict[str, bool] = {}

    def user(addr: str) -> bool:
        known = users.get(addr)
        if known is None:
            known = users[addr] = isUser(addr)
        return known

    def expand(addr: str, depth: int) -> None:
        if addr in result or expanded.get(addr, MAX_ALIAS_DEPTH + 1) <= depth:
            return
        domain = splitAddress(addr)[1]
        if not local(domain) or user(addr):
            if len(result) >= MAX_ALIAS_EXPANSION:
                raise AliasExpansionTooLarge(address=address, limit=MAX_ALIAS_EXPANSION)
            result[addr] = None  # a user, or remote: the relay queue takes it
            return
        expansions[0] += 1
        if expansions[0] > MAX_ALIAS_EXPANSION:
            raise AliasExpansionTooLarge(address=address, limit=MAX_ALIAS_EXPANSION)
        expanded[addr] = depth
        if depth >= MAX_ALIAS_DEPTH:
            return
        targets = aliasTargets(addr)
        if targets is None:
            # A catch-all only for addresses that are neither users nor aliases.
            if domain not in catchAlls:
                catchAlls[domain] = aliasTargets("@" + domain)
            targets = catchAlls[domain]
        if targets is None:
            return
        if usersAmong is not None and len(targets) > 1:
            unknown = [t for t in targets if t not in users and t not in result and t not in expanded]
            if len(unknown) > 1:
                found = set(usersAmong(unknown))
                users.update((t, t in found) for t in unknown)
        for target in targets:
            expand(target, depth + 1)

    expand(address, 0)
    return list(result) or None


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
        address = mailboxAddress(address)
        with self._transaction(write=True) as db:
            address, domain = self._localAddress(db, address)
            if self._isUser(db, address) or self._aliasTargets(db, address) is not None:
                raise UserExists(address=address)
            self._refuseLookAlike(db, address, domain)
            db.execute(
                "INSERT INTO users (address, domain, password_hash) VALUES (?, ?, ?)",
                (address, domain, passwordHash),
            )

    @staticmethod
    def _refuseLookAlike(db: sqlite3.Connection, address: str, domain: str) -> None:
        """
        @raise LookAlikeAddress: another user or alias of C{domain} differs
            from C{address} only in case, width or a similar form.
        """
        rows = db.execute(
            "SELECT address FROM users WHERE domain = ? UNION ALL SELECT alias FROM aliases WHERE domain = ?", (domain, domain)
        )
        existing = lookAlike(address, (r[0] for r in rows))
        if existing is not None:
            raise LookAlikeAddress(address=address, existing=existing)

    @staticmethod
    def _isUser(db: sqlite3.Connection, address: str) -> bool:
        return db.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone() is not None

    @staticmethod
    def _usersAmong(db: sqlite3.Connection, addresses: Sequence[str]) -> List[str]:
        found: List[str] = []
        for start in range(0, len(addresses), 500):  # under SQLite's variable limit
            chunk = addresses[start : start + 500]
            query = "SELECT address FROM users WHERE address IN (%s)" % (", ".join("?" * len(chunk)),)
            found.extend(r[0] for r in db.execute(query, chunk))
        return found

    def setPasswordHash(self, address: str, passwordHash: str) -> None:
        address = canonicalAddress(address)
        with self._transaction(write=True) as db:
            cursor = db.execute("UPDATE users SET password_hash = ? WHERE address = ?", (passwordHash, address))
            if cursor.rowcount == 0:
                raise UnknownUser(address=address)

    def removeUser(self, address: str) -> None:
        address = canonicalAddress(address)
        with self._transaction(write=True) as db:
            if db.execute("DELETE FROM users WHERE address = ?", (address,)).rowcount == 0:
                raise UnknownUser(address=address)

    def passwordHash(self, address: str) -> Optional[str]:
        with self._transaction() as db:
            row = db.execute("SELECT password_hash FROM users WHERE address = ?", (canonicalAddress(address),)).fetchone()
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
            if not alias.startswith("@"):
                self._refuseLookAlike(db, alias, domain)
            db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            db.execute("INSERT INTO aliases (alias, domain) VALUES (?, ?)", (alias, domain))
            db.executemany(
                "INSERT INTO alias_targets (alias, position, target) VALUES (?, ?, ?)",
                [(alias, i, t) for i, t in enumerate(normalised)],
            )

    def removeAlias(self, alias: str) -> None:
        alias = canonicalAddress(alias)
        with self._transaction(write=True) as db:
            if db.execute("DELETE FROM aliases WHERE alias = ?", (alias,)).rowcount == 0:
                raise UnknownAlias(alias=alias)

    @staticmethod
    def _aliasTargets(db: sqlite3.Connection, alias: str) -> Optional[Tuple[str, ...]]:
        # Every alias has at least one target (addAlias insists): no rows,
        # no alias.  One index read instead of two.
        rows = db.execute("SELECT target FROM alias_targets WHERE alias = ? ORDER BY position", (alias,)).fetchall()
        return tuple(r[0] for r in rows) or None

    def aliasTargets(self, alias: str) -> Optional[Tuple[str, ...]]:
        with self._transaction() as db:
            return self._aliasTargets(db, canonicalAddress(alias))

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
                usersAmong=lambda addresses: self._usersAmong(db, addresses),
            )


def openAccountStore(dataDir: str, openNow: bool = True) -> SQLiteAccountStore:
    """
    Open (creating if needed) the account store of a data dir, which must
    exist.  See L{SQLiteAccountStore} for C{openNow}.
    """
    return SQLiteAccountStore(os.path.join(dataDir, SQLiteAccountStore.DEFAULT_NAME), openNow)
