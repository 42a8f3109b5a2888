# -*- test-case-name: tests.test_accounts -*-
"""
Tests for L{mailnet.store.accounts}, and for L{mailnet.testing.MemoryAccountStore}
through the same mixin.
"""

import os
import sqlite3
import stat

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

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
from mailnet.store.accounts import MAX_ALIAS_EXPANSION, SCHEMA_VERSION, SQLiteAccountStore, openAccountStore
from mailnet.testing import MemoryAccountStore


class AccountStoreTestsMixin:
    """
    The behaviour every L{IAccountStore} shares.  Subclasses define
    C{makeStore()}.
    """

    def setUp(self) -> None:
        self.store = self.makeStore()
        self.store.addDomain("example.test")

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAccountStore, self.store))

    # domains

    def test_domains(self) -> None:
        """
        Domains are stored lower-cased and listed sorted.
        """
        self.store.addDomain("B.Example.TEST")
        self.store.addDomain("a.test")
        self.assertEqual(self.store.domains(), ["a.test", "b.example.test", "example.test"])

    def test_isLocalDomain(self) -> None:
        self.assertTrue(self.store.isLocalDomain("example.test"))
        self.assertTrue(self.store.isLocalDomain("EXAMPLE.Test"))
        self.assertFalse(self.store.isLocalDomain("other.test"))

    def test_addDomainTwice(self) -> None:
        exc = self.assertRaises(DomainExists, self.store.addDomain, "Example.Test")
        self.assertEqual(str(exc), "Domain example.test already exists.")

    def test_addBadDomain(self) -> None:
        for bad in ["", "-x.test", "a..test", "a b.test", "x.test.", "a/b"]:
            self.assertRaises(BadAddress, self.store.addDomain, bad)

    def test_removeDomain(self) -> None:
        """
        Removing a domain removes its users and aliases, and only those.
        """
        self.store.addDomain("other.test")
        self.store.addUser("alice@example.test", "h1")
        self.store.addUser("bob@other.test", "h2")
        self.store.addAlias("postmaster@example.test", ["alice@example.test"])
        self.store.addAlias("@example.test", ["alice@example.test"])
        self.store.addAlias("info@other.test", ["bob@other.test"])
        self.store.removeDomain("EXAMPLE.test")
        self.assertEqual(self.store.domains(), ["other.test"])
        self.assertEqual(self.store.users(), ["bob@other.test"])
        self.assertEqual(self.store.aliases(), {"info@other.test": ("bob@other.test",)})
        self.assertIsNone(self.store.passwordHash("alice@example.test"))
        # Adding it again starts empty.
        self.store.addDomain("example.test")
        self.assertEqual(self.store.users("example.test"), [])

    def test_removeUnknownDomain(self) -> None:
        exc = self.assertRaises(UnknownDomain, self.store.removeDomain, "nope.test")
        self.assertIn("nope.test", str(exc))

    # users

    def test_addUser(self) -> None:
        """
        Users are stored lower-cased with their hash.
        """
        self.store.addUser("Alice@Example.Test", "hash-a")
        self.assertEqual(self.store.users(), ["alice@example.test"])
        self.assertEqual(self.store.passwordHash("alice@example.test"), "hash-a")
        self.assertEqual(self.store.passwordHash("ALICE@EXAMPLE.TEST"), "hash-a")

    def test_usersByDomain(self) -> None:
        self.store.addDomain("other.test")
        self.store.addUser("zed@example.test", "h")
        self.store.addUser("amy@example.test", "h")
        self.store.addUser("bob@other.test", "h")
        self.assertEqual(self.store.users(), ["amy@example.test", "bob@other.test", "zed@example.test"])
        self.assertEqual(self.store.users("Example.Test"), ["amy@example.test", "zed@example.test"])
        self.assertEqual(self.store.users("none.test"), [])

    def test_addUserUnknownDomain(self) -> None:
        self.assertRaises(UnknownDomain, self.store.addUser, "alice@other.test", "h")
        self.assertEqual(self.store.users(), [])

    def test_addUserTwice(self) -> None:
        self.store.addUser("alice@example.test", "h")
        exc = self.assertRaises(UserExists, self.store.addUser, "ALICE@example.test", "h2")
        self.assertIn("alice@example.test", str(exc))
        self.assertEqual(self.store.passwordHash("alice@example.test"), "h")

    def test_addUserOverAlias(self) -> None:
        self.store.addAlias("info@example.test", ["x@remote.test"])
        self.assertRaises(UserExists, self.store.addUser, "info@example.test", "h")

    def test_addUserMalformed(self) -> None:
        for bad in ["alice", "@example.test", "a b@example.test", "a..b@example.test", "alice@", "a\x00@example.test"]:
            self.assertRaises(BadAddress, self.store.addUser, bad, "h")
        self.assertEqual(self.store.users(), [])

    def test_setPasswordHash(self) -> None:
        self.store.addUser("alice@example.test", "old")
        self.store.setPasswordHash("Alice@example.test", "new")
        self.assertEqual(self.store.passwordHash("alice@example.test"), "new")

    def test_setPasswordHashUnknown(self) -> None:
        exc = self.assertRaises(UnknownUser, self.store.setPasswordHash, "nobody@example.test", "h")
        self.assertEqual(str(exc), "There is no user nobody@example.test.")

    def test_removeUser(self) -> None:
        self.store.addUser("alice@example.test", "h")
        self.store.addUser("bob@example.test", "h")
        self.store.removeUser("ALICE@example.test")
        self.assertEqual(self.store.users(), ["bob@example.test"])
        self.assertIsNone(self.store.passwordHash("alice@example.test"))
        self.assertRaises(UnknownUser, self.store.removeUser, "alice@example.test")

    def test_passwordHashUnknownOrAlias(self) -> None:
        """
        Unknown users and aliases have no password hash.
        """
        self.store.addAlias("info@example.test", ["x@remote.test"])
        self.assertIsNone(self.store.passwordHash("nobody@example.test"))
        self.assertIsNone(self.store.passwordHash("info@example.test"))
        self.assertIsNone(self.store.passwordHash("nobody@elsewhere.test"))

    # aliases

    def test_addAlias(self) -> None:
        self.store.addUser("alice@example.test", "h")
        self.store.addAlias("Info@Example.test", ["Alice@example.test", "Bob@Remote.test"])
        self.store.addAlias("abuse@example.test", ["info@example.test"])
        self.assertEqual(
            self.store.aliases(),
            {"abuse@example.test": ("info@example.test",), "info@example.test": ("alice@example.test", "bob@remote.test")},
        )
        self.assertEqual(list(self.store.aliases()), ["abuse@example.test", "info@example.test"])

    def test_addAliasReplaces(self) -> None:
        """
        Adding an existing alias replaces its targets.
        """
        self.store.addAlias("info@example.test", ["a@remote.test"])
        self.store.addAlias("info@example.test", ["b@remote.test"])
        self.assertEqual(self.store.aliases(), {"info@example.test": ("b@remote.test",)})

    def test_addAliasUnknownDomain(self) -> None:
        self.assertRaises(UnknownDomain, self.store.addAlias, "info@other.test", ["a@example.test"])
        self.assertRaises(UnknownDomain, self.store.addAlias, "@other.test", ["a@example.test"])
        self.assertEqual(self.store.aliases(), {})

    def test_addAliasOverUser(self) -> None:
        self.store.addUser("alice@example.test", "h")
        self.assertRaises(UserExists, self.store.addAlias, "ALICE@example.test", ["x@remote.test"])

    def test_addAliasMalformed(self) -> None:
        self.assertRaises(BadAddress, self.store.addAlias, "info", ["a@example.test"])
        self.assertRaises(BadAddress, self.store.addAlias, "@bad..test", ["a@example.test"])
        self.assertRaises(BadAddress, self.store.addAlias, "info@example.test", ["not an address"])
        self.assertRaises(BadAddress, self.store.addAlias, "info@example.test", [])
        self.assertEqual(self.store.aliases(), {})

    def test_removeAlias(self) -> None:
        self.store.addAlias("info@example.test", ["a@remote.test"])
        self.store.addAlias("@example.test", ["a@remote.test"])
        self.store.removeAlias("INFO@example.test")
        self.assertEqual(self.store.aliases(), {"@example.test": ("a@remote.test",)})
        self.store.removeAlias("@EXAMPLE.test")
        self.assertEqual(self.store.aliases(), {})
        exc = self.assertRaises(UnknownAlias, self.store.removeAlias, "info@example.test")
        self.assertEqual(str(exc), "There is no alias info@example.test.")

    # resolve

    def test_resolveUser(self) -> None:
        self.store.addUser("alice@example.test", "h")
        self.assertEqual(self.store.resolve("Alice@EXAMPLE.test"), ["alice@example.test"])

    def test_resolveUnknown(self) -> None:
        self.assertIsNone(self.store.resolve("nobody@example.test"))

    def test_resolveRemoteDomain(self) -> None:
        """
        Addresses outside the local domains are not deliverable here.
        """
        self.assertIsNone(self.store.resolve("alice@remote.test"))

    def test_resolveAlias(self) -> None:
        """
        Aliases expand recursively to users and remote addresses, without
        duplicates, in order.
        """
        self.store.addUser("alice@example.test", "h")
        self.store.addUser("bob@example.test", "h")
        self.store.addAlias("team@example.test", ["bob@example.test", "alice@example.test"])
        self.store.addAlias("all@example.test", ["team@example.test", "carol@remote.test", "alice@example.test"])
        self.assertEqual(
            self.store.resolve("all@example.test"), ["bob@example.test", "alice@example.test", "carol@remote.test"]
        )

    def test_resolveAliasToMissingUser(self) -> None:
        """
        An alias whose targets all lead nowhere is not deliverable; one good
        target is enough.
        """
        self.store.addAlias("dead@example.test", ["gone@example.test"])
        self.assertIsNone(self.store.resolve("dead@example.test"))
        self.store.addUser("alice@example.test", "h")
        self.store.addAlias("half@example.test", ["gone@example.test", "alice@example.test"])
        self.assertEqual(self.store.resolve("half@example.test"), ["alice@example.test"])

    def test_resolveCatchAll(self) -> None:
        """
        A catch-all takes addresses that are neither users nor aliases.
        """
        self.store.addUser("alice@example.test", "h")
        self.store.addUser("bob@example.test", "h")
        self.store.addAlias("info@example.test", ["bob@example.test"])
        self.store.addAlias("@example.test", ["alice@example.test"])
        self.assertEqual(self.store.resolve("anything@example.test"), ["alice@example.test"])
        self.assertEqual(self.store.resolve("info@example.test"), ["bob@example.test"])
        self.assertEqual(self.store.resolve("bob@example.test"), ["bob@example.test"])

    def test_resolveLoop(self) -> None:
        """
        Alias loops end; an alias loop with no way out is undeliverable.
        """
        self.store.addUser("alice@example.test", "h")
        self.store.addAlias("a@example.test", ["b@example.test"])
        self.store.addAlias("b@example.test", ["a@example.test"])
        self.assertIsNone(self.store.resolve("a@example.test"))
        self.store.addAlias("b@example.test", ["a@example.test", "alice@example.test"])
        self.assertEqual(self.store.resolve("a@example.test"), ["alice@example.test"])

    def test_resolveCatchAllLoop(self) -> None:
        """
        A catch-all that points back into its own domain does not recurse
        for ever.
        """
        self.store.addAlias("@example.test", ["nobody@example.test"])
        self.assertIsNone(self.store.resolve("x@example.test"))

    def test_resolveDepth(self) -> None:
        """
        Chains deeper than the limit are undeliverable.
        """
        self.store.addUser("alice@example.test", "h")
        self.store.addAlias("a0@example.test", ["alice@example.test"])
        for i in range(1, 10):
            self.store.addAlias("a%d@example.test" % i, ["a%d@example.test" % (i - 1)])
        self.assertEqual(self.store.resolve("a9@example.test"), ["alice@example.test"])
        for i in range(10, 12):
            self.store.addAlias("a%d@example.test" % i, ["a%d@example.test" % (i - 1)])
        self.assertIsNone(self.store.resolve("a11@example.test"))


    def test_resolveDiamond(self) -> None:
        """
        Issue 11 item 6: a "diamond" of aliases, each pointing to every
        alias of the next level, has width^levels paths (54 such aliases
        blocked the reactor for 15 s on one unauthenticated RCPT).  Each
        alias is expanded once: here 28 look-ups, not 3^9.
        """
        self.store.addUser("alice@example.test", "h")
        width, levels = 3, 9
        for level in range(levels):
            if level == levels - 1:
                targets = ["alice@example.test", "far@remote.test"]
            else:
                targets = ["d%d-%d@example.test" % (level + 1, j) for j in range(width)]
            for i in range(width):
                self.store.addAlias("d%d-%d@example.test" % (level, i), targets)
        self.store.addAlias("top@example.test", ["d0-%d@example.test" % (i,) for i in range(width)])
        lookups = countLookups(self, self.store)
        self.assertEqual(self.store.resolve("top@example.test"), ["alice@example.test", "far@remote.test"])
        self.assertLessEqual(lookups["aliasTargets"], width * levels + 1)
        self.assertLessEqual(lookups["isUser"], width * levels + 3)

    def test_resolveFanOutBounded(self) -> None:
        """
        An alias may expand to MAX_ALIAS_EXPANSION recipients, not more:
        the work of one RCPT is bounded whatever the table holds.
        """
        members = ["m%d@remote.test" % (i,) for i in range(MAX_ALIAS_EXPANSION)]
        self.store.addAlias("list@example.test", members)
        self.assertEqual(self.store.resolve("list@example.test"), members)
        self.store.addUser("alice@example.test", "h")
        self.store.addUser("bob@example.test", "h")
        local = ["alice@example.test", "bob@example.test"] + ["x%d@example.test" % (i,) for i in range(500)]
        self.store.addAlias("x0@example.test", ["alice@example.test"])
        self.store.addAlias("locals@example.test", local)
        lookups = countLookups(self, self.store)
        self.assertEqual(self.store.resolve("locals@example.test"), ["alice@example.test", "bob@example.test"])
        self.assertLessEqual(lookups["isUser"], 3, "the members are looked up together")
        self.store.addAlias("big@example.test", ["list@example.test", "one-more@remote.test"])
        error = self.assertRaises(AliasExpansionTooLarge, self.store.resolve, "big@example.test")
        self.assertIn("more than %d addresses" % (MAX_ALIAS_EXPANSION,), str(error))

    def test_resolveDuplicatesOnce(self) -> None:
        """Recipients reached along several paths are listed once, in order."""
        self.store.addUser("alice@example.test", "h")
        self.store.addUser("bob@example.test", "h")
        self.store.addAlias("a@example.test", ["bob@example.test", "alice@example.test"])
        self.store.addAlias("b@example.test", ["alice@example.test", "a@example.test"])
        self.store.addAlias("c@example.test", ["a@example.test", "b@example.test", "bob@example.test"])
        self.assertEqual(self.store.resolve("c@example.test"), ["bob@example.test", "alice@example.test"])

    def test_resolveDepthByShortestPath(self) -> None:
        """
        An alias met first along a long path and then along a short one is
        expanded again from the short one: the depth limit does not depend
        on the order of targets.
        """
        self.store.addUser("alice@example.test", "h")
        self.store.addAlias("a0@example.test", ["x@example.test"])
        for i in range(1, 10):
            self.store.addAlias("a%d@example.test" % i, ["a%d@example.test" % (i - 1)])
        # x is at depth 10 through the chain (cut there), at depth 1 directly.
        self.store.addAlias("x@example.test", ["alice@example.test"])
        self.store.addAlias("top@example.test", ["a9@example.test", "x@example.test"])
        self.assertEqual(self.store.resolve("top@example.test"), ["alice@example.test"])

    def test_addUserUnstorableName(self) -> None:
        """
        Issue 11 item 9: the store refuses a user whose Maildir it could not
        create, with the same test it applies at delivery.
        """
        for name in ("/tmp/x@example.test", "a/b@example.test"):
            error = self.assertRaises(BadAddress, self.store.addUser, name, "h")
            self.assertIn("it cannot name a mailbox", str(error))
        self.assertEqual(self.store.users(), [])

    def test_addLookAlikeRefused(self) -> None:
        """
        Issue 11 item 9: a user or alias whose NFKC case fold collides with
        an existing user or alias of the domain is refused.
        """
        fullWidthAlice = "\uff41\uff4c\uff49\uff43\uff45@example.test"
        self.store.addUser(fullWidthAlice, "h")
        error = self.assertRaises(LookAlikeAddress, self.store.addUser, "alice@example.test", "h")
        self.assertEqual(
            str(error),
            "alice@example.test looks like the existing %s (they differ only in case, width or a similar form); "
            "choose another name." % (fullWidthAlice,),
        )
        self.assertRaises(LookAlikeAddress, self.store.addAlias, "ALICE@example.test", ["x@remote.test"])
        self.store.addAlias("info@example.test", ["x@remote.test"])
        self.assertRaises(LookAlikeAddress, self.store.addUser, "\uff49nfo@example.test", "h")
        # Replacing an alias's targets is no collision with itself; other
        # domains are other names.
        self.store.addAlias("info@example.test", ["y@remote.test"])
        self.store.addDomain("other.test")
        self.store.addUser("alice@other.test", "h")
        self.assertEqual(self.store.users(), ["alice@other.test", fullWidthAlice])

    def test_nfcOnAddAndLookUp(self) -> None:
        """Composed and decomposed spellings are one address (RFC 6532 §3.1)."""
        self.store.addUser("jose\u0301@example.test", "h")
        self.assertEqual(self.store.users(), ["jos\u00e9@example.test"])
        self.assertEqual(self.store.passwordHash("JOSE\u0301@example.test"), "h")
        self.assertEqual(self.store.resolve("jose\u0301@example.test"), ["jos\u00e9@example.test"])
        self.store.addAlias("cafe\u0301@example.test", ["jose\u0301@example.test"])
        self.assertEqual(self.store.resolve("caf\u00e9@example.test"), ["jos\u00e9@example.test"])
        self.store.setPasswordHash("jose\u0301@example.test", "h2")
        self.store.removeAlias("cafe\u0301@example.test")
        self.store.removeUser("jose\u0301@example.test")
        self.assertEqual(self.store.users(), [])

    def test_aliasTargets(self) -> None:
        self.store.addAlias("info@example.test", ["a@remote.test", "b@remote.test"])
        self.store.addAlias("@example.test", ["a@remote.test"])
        self.assertEqual(self.store.aliasTargets("Info@Example.test"), ("a@remote.test", "b@remote.test"))
        self.assertEqual(self.store.aliasTargets("@example.test"), ("a@remote.test",))
        self.assertIsNone(self.store.aliasTargets("nobody@example.test"))


def countLookups(testCase, store) -> dict:
    """
    Count the look-ups that L{expandAliases} makes, for C{store}'s
    resolve (both stores run it).
    """
    import mailnet.store.accounts as accounts
    import mailnet.testing as testing

    counts = {"isUser": 0, "aliasTargets": 0}
    real = accounts.expandAliases

    def counting(address, isUser, isLocalDomain, aliasTargets, usersAmong=None):
        def user(a):
            counts["isUser"] += 1
            return isUser(a)

        def targets(a):
            counts["aliasTargets"] += 1
            return aliasTargets(a)

        def among(addresses):
            counts["isUser"] += 1
            return usersAmong(addresses)

        return real(address, user, isLocalDomain, targets, among if usersAmong else None)

    testCase.patch(accounts, "expandAliases", counting)
    testCase.patch(testing, "expandAliases", counting)
    return counts


class MemoryAccountStoreTests(AccountStoreTestsMixin, SynchronousTestCase):
    def makeStore(self) -> MemoryAccountStore:
        return MemoryAccountStore()


class SQLiteAccountStoreTests(AccountStoreTestsMixin, SynchronousTestCase):
    def makeStore(self) -> SQLiteAccountStore:
        self.dataDir = self.mktemp()
        os.mkdir(self.dataDir)
        store = openAccountStore(self.dataDir)
        self.addCleanup(store.close)
        return store


class SQLiteSpecificTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dataDir = self.mktemp()
        os.mkdir(self.dataDir)
        self.path = os.path.join(self.dataDir, "accounts.sqlite3")

    def open(self) -> SQLiteAccountStore:
        store = SQLiteAccountStore(self.path)
        self.addCleanup(store.close)
        return store

    def test_defaultName(self) -> None:
        store = openAccountStore(self.dataDir)
        self.addCleanup(store.close)
        self.assertEqual(SQLiteAccountStore.DEFAULT_NAME, "accounts.sqlite3")
        self.assertEqual(store.path, self.path)
        self.assertTrue(os.path.isfile(self.path))

    def test_openOnFirstUse(self) -> None:
        """
        With C{openNow=False} nothing touches the disk until the store is
        used: a daemon started as root creates its files only after it has
        dropped privileges.
        """
        store = openAccountStore(self.dataDir, openNow=False)
        self.addCleanup(store.close)
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(store.domains(), [])
        self.assertTrue(os.path.isfile(self.path))

    def test_private(self) -> None:
        """
        The file holds password hashes: only its owner may read it.
        """
        self.open()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_wal(self) -> None:
        self.open()
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_persistent(self) -> None:
        store = self.open()
        store.addDomain("example.test")
        store.addUser("alice@example.test", "h")
        store.addAlias("info@example.test", ["alice@example.test", "x@remote.test"])
        store.close()
        again = self.open()
        self.assertEqual(again.users(), ["alice@example.test"])
        self.assertEqual(again.aliases(), {"info@example.test": ("alice@example.test", "x@remote.test")})
        self.assertEqual(again.schemaVersion(), SCHEMA_VERSION)

    def test_concurrentStores(self) -> None:
        """
        Two stores on one file (the daemon and mailnet-admin): what one
        writes the other reads at once, with no caching in between.
        """
        daemon, admin = self.open(), self.open()
        self.assertEqual(daemon.domains(), [])
        admin.addDomain("example.test")
        self.assertTrue(daemon.isLocalDomain("example.test"))
        admin.addUser("alice@example.test", "h1")
        self.assertEqual(daemon.passwordHash("alice@example.test"), "h1")
        admin.setPasswordHash("alice@example.test", "h2")
        self.assertEqual(daemon.passwordHash("alice@example.test"), "h2")
        daemon.addAlias("info@example.test", ["alice@example.test"])
        self.assertEqual(admin.resolve("info@example.test"), ["alice@example.test"])
        admin.removeUser("alice@example.test")
        self.assertIsNone(daemon.passwordHash("alice@example.test"))
        self.assertIsNone(daemon.resolve("info@example.test"))

    def test_writerWaits(self) -> None:
        """
        While another connection holds the write lock, a write fails only
        after the busy timeout, with the transaction rolled back.
        """
        store = self.open()
        store.addDomain("example.test")
        self.patch(store, "_db", store._db)  # keep a reference for clarity
        store._db.execute("PRAGMA busy_timeout = 50")
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        self.assertRaises(sqlite3.OperationalError, store.addUser, "alice@example.test", "h")
        other.execute("ROLLBACK")
        store.addUser("alice@example.test", "h")
        self.assertEqual(store.users(), ["alice@example.test"])
        # Reads go on while a writer holds its lock (WAL).
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM users")
        self.assertEqual(store.users(), ["alice@example.test"])
        other.execute("COMMIT")
        self.assertEqual(store.users(), [])

    def test_failedWriteRollsBack(self) -> None:
        """
        An error half-way through a write leaves nothing behind.
        """
        store = self.open()
        store.addDomain("example.test")
        store.addAlias("info@example.test", ["a@remote.test"])
        self.assertRaises(UnknownDomain, store.addAlias, "info@other.test", ["b@remote.test"])
        self.assertEqual(store.aliases(), {"info@example.test": ("a@remote.test",)})

    def test_newerSchema(self) -> None:
        """
        A store written by a newer mailnet is refused with a clear message.
        """
        self.open().close()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE schema_version SET version = 99")
        db.commit()
        db.close()
        exc = self.assertRaises(ConfigError, SQLiteAccountStore, self.path)
        self.assertIn("schema version 99", str(exc))
        self.assertIn(self.path, str(exc))

    def test_missingDirectory(self) -> None:
        exc = self.assertRaises(ConfigError, SQLiteAccountStore, os.path.join(self.dataDir, "no", "x.sqlite3"))
        self.assertIn("cannot open the account store", str(exc))

    def test_notADatabase(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"this is not sqlite" * 100)
        exc = self.assertRaises(ConfigError, SQLiteAccountStore, self.path)
        self.assertIn(self.path, str(exc))
