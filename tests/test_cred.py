# -*- test-case-name: tests.test_cred -*-
"""
Tests for L{mailnet.cred}.
"""

import os
import threading
from typing import List

from argon2 import PasswordHasher
from twisted.cred.checkers import (
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mailnet import cred
from mailnet.cred import (
    FAILED,
    AccountChecker,
    Authenticator,
    FirstSuccessChecker,
    Mailbox,
    MailRealm,
    Sender,
    makePortal,
    peerKey,
)
from mailnet.errors import LoginBusy, MailboxInUse
from mailnet.interfaces import IAuthenticator, IMailbox, ISender
from mailnet.passwords import (
    LOGIN_CACHE_TTL,
    dummyHash,
    hashPassword,
    lowCostHasher,
    needsRehash,
    verifyPassword,
)
from mailnet.store.maildir import MaildirStore, ThreadRunner, runSynchronously
from mailnet.testing import MemoryAccountStore

CHEAP = lowCostHasher()


class RecordingRunner:
    """A runner that does the work at once and remembers what it ran."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def __call__(self, f, *args, **kwargs):
        self.calls.append((f, args))
        return runSynchronously(f, *args, **kwargs)


class ExplodingStore(MemoryAccountStore):
    """A store that must not be consulted."""

    def passwordHash(self, address):
        raise AssertionError("the store was consulted for %r" % (address,))


def makeStore() -> MemoryAccountStore:
    store = MemoryAccountStore()
    store.addDomain("example.test")
    store.addUser("alice@example.test", hashPassword("alice-pw", CHEAP))
    store.addUser("bob@example.test", hashPassword("bob-pw", CHEAP))
    store.addAlias("info@example.test", ["alice@example.test"])
    store.addAlias("team@example.test", ["info@example.test", "bob@example.test", "x@remote.test"])
    store.addAlias("@example.test", ["alice@example.test"])
    return store


def creds(username, password) -> UsernamePassword:
    if isinstance(username, str):
        username = username.encode("utf-8")
    if isinstance(password, str):
        password = password.encode("utf-8")
    return UsernamePassword(username, password)


class AccountCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore()
        self.run = RecordingRunner()
        self.checker = AccountChecker(self.store, self.run, CHEAP)

    def check(self, username, password):
        return self.checker.requestAvatarId(creds(username, password))

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))
        self.assertEqual(self.checker.credentialInterfaces, (IUsernamePassword,))

    def test_success(self) -> None:
        """
        The right password gives the normalised address as the avatar id;
        the verification ran through C{run} (a thread, in the daemon).
        """
        self.assertEqual(self.successResultOf(self.check("alice@example.test", "alice-pw")), "alice@example.test")
        self.assertEqual([f for f, _ in self.run.calls], [verifyPassword])

    def test_caseInsensitive(self) -> None:
        self.assertEqual(self.successResultOf(self.check("Alice@EXAMPLE.Test", "alice-pw")), "alice@example.test")

    def test_textCredentials(self) -> None:
        """
        Credentials given as text work as well as bytes.
        """
        d = self.checker.requestAvatarId(UsernamePassword("alice@example.test", "alice-pw"))
        self.assertEqual(self.successResultOf(d), "alice@example.test")

    def test_wrongPassword(self) -> None:
        f = self.failureResultOf(self.check("alice@example.test", "bob-pw"), UnauthorizedLogin)
        self.assertEqual(str(f.value), FAILED)
        self.failureResultOf(self.check("alice@example.test", ""), UnauthorizedLogin)

    def test_otherUsersPassword(self) -> None:
        self.failureResultOf(self.check("bob@example.test", "alice-pw"), UnauthorizedLogin)

    def test_unknownUser(self) -> None:
        """
        An unknown user fails like a wrong password, after a verification
        against the dummy hash (the same cost: no timing oracle).
        """
        f = self.failureResultOf(self.check("nobody@example.test", "alice-pw"), UnauthorizedLogin)
        self.assertEqual(str(f.value), FAILED)
        self.assertEqual(self.run.calls, [(verifyPassword, (dummyHash(CHEAP), b"alice-pw", CHEAP))])

    def test_unknownDomain(self) -> None:
        self.failureResultOf(self.check("alice@other.test", "alice-pw"), UnauthorizedLogin)
        self.assertEqual(len(self.run.calls), 1)

    def test_aliasIsNotALogin(self) -> None:
        """
        Aliases (and catch-all matches) have no password, whatever is tried.
        """
        for alias in ["info@example.test", "anything@example.test"]:
            for password in ["alice-pw", "", "x"]:
                self.failureResultOf(self.check(alias, password), UnauthorizedLogin)

    def test_malformedUsername(self) -> None:
        """
        Names that are not addresses, or could not be mailbox directories,
        are refused before the store is touched.
        """
        checker = AccountChecker(ExplodingStore(), self.run, CHEAP)
        for username in [b"alice", b"", b"alice@", b"@example.test", b"a b@example.test", b"\xff@example.test", b"a/b@example.test", b"../x@example.test", b"alice@example.test\x00"]:
            f = self.failureResultOf(checker.requestAvatarId(creds(username, "alice-pw")), UnauthorizedLogin)
            self.assertEqual(str(f.value), FAILED)
        self.assertEqual(self.run.calls, [])

    def test_rehash(self) -> None:
        """
        A hash made with outdated parameters is replaced at a successful
        login.
        """
        stronger = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
        checker = AccountChecker(self.store, self.run, stronger)
        old = self.store.passwordHash("alice@example.test")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds("alice@example.test", "alice-pw"))), "alice@example.test")
        new = self.store.passwordHash("alice@example.test")
        self.assertNotEqual(new, old)
        self.assertFalse(needsRehash(new, stronger))
        self.assertTrue(verifyPassword(new, "alice-pw"))

    def test_noRehashWhenCurrent(self) -> None:
        old = self.store.passwordHash("alice@example.test")
        self.successResultOf(self.check("alice@example.test", "alice-pw"))
        self.assertEqual(self.store.passwordHash("alice@example.test"), old)


class LoginCacheCheckerTests(SynchronousTestCase):
    """
    Issue 14, "Logins": with a clock, the account checker remembers
    successful verifications (L{mailnet.passwords.LoginCache}).
    """

    def setUp(self) -> None:
        self.store = makeStore()
        self.run = RecordingRunner()
        self.clock = Clock()
        self.checker = AccountChecker(self.store, self.run, CHEAP, self.clock)

    def check(self, username="alice@example.test", password="alice-pw"):
        return self.checker.requestAvatarId(creds(username, password))

    def verifications(self) -> int:
        return len(self.run.calls)

    def test_secondLoginHits(self) -> None:
        """
        The same password again succeeds without a verification; other
        spellings of the login hit as well.
        """
        self.assertEqual(self.successResultOf(self.check()), "alice@example.test")
        self.assertEqual(self.verifications(), 1)
        self.assertEqual(self.successResultOf(self.check()), "alice@example.test")
        self.assertEqual(self.successResultOf(self.check("Alice@EXAMPLE.test")), "alice@example.test")
        self.assertEqual(self.verifications(), 1)

    def test_hitNeedsNoThread(self) -> None:
        """
        A hit answers at once, without handing anything to the hashing
        pool.
        """
        runner = ManualRunner()
        checker = AccountChecker(self.store, runner, CHEAP, self.clock)
        first = checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        self.assertNoResult(first)
        runner.finish()
        self.assertEqual(self.successResultOf(first), "alice@example.test")
        second = checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        self.assertEqual(self.successResultOf(second), "alice@example.test")
        self.assertEqual(runner.started, 1)

    def test_failuresNotRemembered(self) -> None:
        """
        A wrong password is verified (and fails) every time, also after the
        right one was remembered; nothing is added for it.
        """
        for _ in range(3):
            self.failureResultOf(self.check(password="wrong"), UnauthorizedLogin)
        self.assertEqual(len(self.checker.cache), 0)
        self.successResultOf(self.check())
        for _ in range(3):
            f = self.failureResultOf(self.check(password="wrong"), UnauthorizedLogin)
            self.assertEqual(str(f.value), FAILED)
        self.assertEqual(self.verifications(), 7)
        self.assertEqual(len(self.checker.cache), 1)

    def test_otherUser(self) -> None:
        """Alice's remembered password is not Bob's."""
        self.successResultOf(self.check())
        self.failureResultOf(self.check("bob@example.test", "alice-pw"), UnauthorizedLogin)
        self.assertEqual(self.verifications(), 2)

    def test_passwordChange(self) -> None:
        """
        After a password change the old password fails at once, and the new
        one is verified.
        """
        self.successResultOf(self.check())
        self.store.setPasswordHash("alice@example.test", hashPassword("new-pw", CHEAP))
        self.failureResultOf(self.check(), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.check(password="new-pw")), "alice@example.test")
        self.assertEqual(self.verifications(), 3)

    def test_userRemoved(self) -> None:
        """
        A removed user fails at once (against the dummy hash, as an
        unknown user).
        """
        self.successResultOf(self.check())
        self.store.removeUser("alice@example.test")
        self.failureResultOf(self.check(), UnauthorizedLogin)
        self.assertEqual(self.run.calls[-1], (verifyPassword, (dummyHash(CHEAP), b"alice-pw", CHEAP)))

    def test_userLocked(self) -> None:
        """
        The account store has no "disabled" flag; an administrator locks an
        account by replacing its hash with one nothing verifies against
        (e.g. with a C{!} in front).  That fails at once too.
        """
        self.successResultOf(self.check())
        stored = self.store.passwordHash("alice@example.test")
        self.store.setPasswordHash("alice@example.test", "!" + stored)
        self.failureResultOf(self.check(), UnauthorizedLogin)
        self.assertEqual(len(self.checker.cache), 1)

    def test_expires(self) -> None:
        """
        After C{cacheTTL} seconds the password is verified again (and
        remembered again).
        """
        self.successResultOf(self.check())
        self.clock.advance(LOGIN_CACHE_TTL - 1)
        self.successResultOf(self.check())
        self.assertEqual(self.verifications(), 1)
        self.clock.advance(1)
        self.successResultOf(self.check())
        self.successResultOf(self.check())
        self.assertEqual(self.verifications(), 2)

    def test_ttl(self) -> None:
        checker = AccountChecker(self.store, self.run, CHEAP, self.clock, cacheTTL=5)
        checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        self.clock.advance(5)
        checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        self.assertEqual(self.verifications(), 2)

    def test_off(self) -> None:
        """
        Without a clock, or with a TTL of 0, every login is verified.
        """
        for checker in [AccountChecker(self.store, self.run, CHEAP), AccountChecker(self.store, self.run, CHEAP, self.clock, cacheTTL=0)]:
            self.assertIsNone(checker.cache)
            for _ in range(2):
                self.successResultOf(checker.requestAvatarId(creds("alice@example.test", "alice-pw")))
        self.assertEqual(self.verifications(), 4)

    def test_rehash(self) -> None:
        """
        A hash with outdated parameters is still replaced at the first
        successful login, and the next login hits with the new hash.
        """
        stronger = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
        checker = AccountChecker(self.store, self.run, stronger, self.clock)
        self.successResultOf(checker.requestAvatarId(creds("alice@example.test", "alice-pw")))
        new = self.store.passwordHash("alice@example.test")
        self.assertFalse(needsRehash(new, stronger))
        self.assertEqual([f for f, _ in self.run.calls], [verifyPassword, hashPassword])
        self.successResultOf(checker.requestAvatarId(creds("alice@example.test", "alice-pw")))
        self.assertEqual(len(self.run.calls), 2)
        self.assertEqual(self.store.passwordHash("alice@example.test"), new)

    def test_remembered(self) -> None:
        """
        L{AccountChecker.remembered} tells, without a verification, whether
        credentials would succeed from the cache.
        """
        self.assertFalse(self.checker.remembered(creds("alice@example.test", "alice-pw")))
        self.successResultOf(self.check())
        self.assertTrue(self.checker.remembered(creds("ALICE@example.test", "alice-pw")))
        self.assertTrue(self.checker.remembered(UsernamePassword("alice@example.test", "alice-pw")))
        for username, password in [("alice@example.test", "wrong"), ("bob@example.test", "alice-pw"), ("nobody@example.test", "alice-pw"), ("alice", "alice-pw")]:
            self.assertFalse(self.checker.remembered(creds(username, password)), username)
        self.store.setPasswordHash("alice@example.test", hashPassword("new-pw", CHEAP))
        self.assertFalse(self.checker.remembered(creds("alice@example.test", "alice-pw")))
        self.assertFalse(AccountChecker(self.store, self.run, CHEAP).remembered(creds("alice@example.test", "alice-pw")))
        self.assertEqual(self.verifications(), 1)

    def test_rehashRacesPasswordChange(self) -> None:
        """
        A rehash that finds the password changed meanwhile stores nothing
        and remembers nothing for the old password.
        """
        runner = ManualRunner()
        stronger = PasswordHasher(time_cost=2, memory_cost=8, parallelism=1)
        checker = AccountChecker(self.store, runner, stronger, self.clock)
        d = checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        runner.finish()  # the verification; the rehash is now pending
        self.successResultOf(d)
        changed = hashPassword("new-pw", stronger)
        self.store.setPasswordHash("alice@example.test", changed)
        runner.finish()  # the rehash
        self.assertEqual(self.store.passwordHash("alice@example.test"), changed)
        d = checker.requestAvatarId(creds("alice@example.test", "alice-pw"))
        self.assertEqual(runner.started, 3)
        runner.finish()
        self.failureResultOf(d, UnauthorizedLogin)


class ThreadedCheckerTests(TestCase):
    def test_verifiesInAThread(self) -> None:
        """
        With a L{ThreadRunner} the Argon2 verification runs off the reactor
        thread.
        """
        from twisted.internet import reactor

        threads = []

        def verify(*args):
            threads.append(threading.current_thread())
            return verifyPassword(*args)

        self.patch(cred, "verifyPassword", verify)
        checker = AccountChecker(makeStore(), ThreadRunner(reactor), CHEAP)
        d = checker.requestAvatarId(creds("alice@example.test", "alice-pw"))

        def check(avatarId):
            self.assertEqual(avatarId, "alice@example.test")
            self.assertIsNot(threads[0], threading.current_thread())

        return d.addCallback(check)


class RealmTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore()
        self.root = self.mktemp()
        self.mailStore = MaildirStore(self.root, runSynchronously, "test.host")
        self.realm = MailRealm(self.store, self.mailStore)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_mailbox(self) -> None:
        """
        An L{IMailbox} avatar has the address and the user's Maildir.
        """
        interface, avatar, logout = self.realm.requestAvatar("alice@example.test", None, IMailbox)
        self.assertIs(interface, IMailbox)
        self.assertTrue(verifyObject(IMailbox, avatar))
        self.assertEqual(avatar.address, "alice@example.test")
        self.assertEqual(avatar.maildir.path, os.path.join(self.root, "example.test", "alice"))
        self.assertTrue(os.path.isdir(os.path.join(avatar.maildir.path, "new")))

    def test_bytesAvatarId(self) -> None:
        _, avatar, _ = self.realm.requestAvatar(b"Alice@example.test", None, IMailbox)
        self.assertEqual(avatar.address, "alice@example.test")

    def test_mailboxHeld(self) -> None:
        """
        A second session for a held mailbox is refused until the first logs
        out; other mailboxes are not affected.
        """
        _, _, logout = self.realm.requestAvatar("alice@example.test", None, IMailbox)
        exc = self.assertRaises(MailboxInUse, self.realm.requestAvatar, "ALICE@example.test", None, IMailbox)
        self.assertIn("alice@example.test", str(exc))
        self.realm.requestAvatar("bob@example.test", None, IMailbox)
        self.assertTrue(self.realm.isHeld("alice@example.test"))
        logout()
        self.assertFalse(self.realm.isHeld("alice@example.test"))
        self.realm.requestAvatar("alice@example.test", None, IMailbox)

    def test_staleLogout(self) -> None:
        """
        Logging out twice does not free the mailbox of a later session.
        """
        _, _, first = self.realm.requestAvatar("alice@example.test", None, IMailbox)
        first()
        _, _, second = self.realm.requestAvatar("alice@example.test", None, IMailbox)
        first()
        self.assertRaises(MailboxInUse, self.realm.requestAvatar, "alice@example.test", None, IMailbox)
        second()
        self.assertFalse(self.realm.isHeld("alice@example.test"))

    def test_mailboxFailureReleases(self) -> None:
        """
        If the Maildir cannot be had, the mailbox is not left held.
        """

        class Broken:
            def maildir(self, address):
                raise OSError("disk on fire")

        realm = MailRealm(self.store, Broken())
        self.assertRaises(OSError, realm.requestAvatar, "alice@example.test", None, IMailbox)
        self.assertFalse(realm.isHeld("alice@example.test"))

    def test_sender(self) -> None:
        """
        An L{ISender} may send as itself and as aliases that deliver to it,
        directly or through other aliases; the sender is not exclusive.
        """
        interface, avatar, logout = self.realm.requestAvatar("alice@example.test", None, ISender)
        self.assertIs(interface, ISender)
        self.assertTrue(verifyObject(ISender, avatar))
        self.assertEqual(avatar.address, "alice@example.test")
        self.assertTrue(avatar.maySendAs("alice@example.test"))
        self.assertTrue(avatar.maySendAs("Alice@Example.TEST"))
        self.assertTrue(avatar.maySendAs("info@example.test"))
        self.assertTrue(avatar.maySendAs("team@example.test"))
        self.assertFalse(avatar.maySendAs("bob@example.test"))
        self.assertFalse(avatar.maySendAs("x@remote.test"))
        self.assertFalse(avatar.maySendAs("not an address"))
        logout()
        self.realm.requestAvatar("alice@example.test", None, ISender)

    def test_senderNotCatchAll(self) -> None:
        """
        Owning the catch-all does not make every address in the domain
        one's own.
        """
        avatar = Sender("alice@example.test", self.store)
        self.assertEqual(self.store.resolve("ceo@example.test"), ["alice@example.test"])
        self.assertFalse(avatar.maySendAs("ceo@example.test"))

    def test_senderSeesAliasChanges(self) -> None:
        avatar = Sender("bob@example.test", self.store)
        self.assertFalse(avatar.maySendAs("sales@example.test"))
        self.store.addAlias("sales@example.test", ["bob@example.test"])
        self.assertTrue(avatar.maySendAs("sales@example.test"))

    def test_senderDoesNotReadTheAliasTable(self) -> None:
        """
        Issue 11 item 6: a From: with 5,000 addresses must not read the
        whole alias table 5,000 times (6 s of blocked reactor): each check
        is one alias look-up, and a resolve only for aliases.
        """
        store = self.store
        calls = []

        class NoTableScans:
            def aliases(self):
                raise AssertionError("maySendAs read the whole alias table")

            def aliasTargets(self, alias):
                calls.append(alias)
                return store.aliasTargets(alias)

            def resolve(self, address):
                return store.resolve(address)

        avatar = Sender("alice@example.test", NoTableScans())
        self.assertTrue(avatar.maySendAs("info@example.test"))
        for i in range(5000):
            self.assertFalse(avatar.maySendAs("user%d@example.test" % (i,)))
        self.assertEqual(len(calls), 5001)

    def test_otherInterface(self) -> None:
        from zope.interface import Interface

        class IOther(Interface):
            pass

        self.assertRaises(NotImplementedError, self.realm.requestAvatar, "alice@example.test", None, IOther)


class PeerKeyTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(peerKey("192.0.2.1"), "192.0.2.1")

    def test_ipv6Prefix(self) -> None:
        """
        IPv6 clients are counted by /64.
        """
        self.assertEqual(peerKey("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(peerKey("2001:db8:1:2::ffff"), peerKey("2001:db8:1:2:3:4:5:6"))
        self.assertNotEqual(peerKey("2001:db8:1:3::1"), peerKey("2001:db8:1:2::1"))
        self.assertEqual(peerKey("fe80::1%eth0"), "fe80::/64")

    def test_mapped(self) -> None:
        self.assertEqual(peerKey("::ffff:192.0.2.1"), "192.0.2.1")

    def test_other(self) -> None:
        self.assertEqual(peerKey("unix-socket"), "unix-socket")


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore()
        self.clock = Clock()
        self.mailStore = MaildirStore(self.mktemp(), runSynchronously, "test.host")
        self.portal = makePortal(self.store, self.mailStore, runSynchronously, hasher=CHEAP)
        self.auth = Authenticator(self.portal, self.clock, baseDelay=2.0, maxDelay=30.0)

    def login(self, username, password, peer="192.0.2.1", interface=IMailbox):
        return self.auth.login(creds(username, password), peer, interface)

    def failAfter(self, d, delay):
        """
        Assert that C{d} fails with L{UnauthorizedLogin} exactly C{delay}
        seconds from now.
        """
        if delay > 0:
            self.assertNoResult(d)
            self.clock.advance(delay - 0.001)
            self.assertNoResult(d)
            self.clock.advance(0.001)
        else:
            self.clock.advance(0)
        f = self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(str(f.value), FAILED)
        return f

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthenticator, self.auth))

    def test_success(self) -> None:
        interface, avatar, logout = self.successResultOf(self.login("alice@example.test", "alice-pw"))
        self.assertIs(interface, IMailbox)
        self.assertEqual(avatar.address, "alice@example.test")
        interface, avatar, logout = self.successResultOf(
            self.login("bob@example.test", "bob-pw", interface=ISender)
        )
        self.assertIs(interface, ISender)
        self.assertTrue(avatar.maySendAs("bob@example.test"))

    def test_delayGrowsAndIsCapped(self) -> None:
        """
        Each failure from one address waits twice as long as the one
        before, up to the cap.
        """
        for expected in [2, 4, 8, 16, 30, 30]:
            self.failAfter(self.login("alice@example.test", "wrong"), expected)
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 6)

    def test_delayFor(self) -> None:
        self.assertEqual([self.auth.delayFor(n) for n in range(0, 7)], [0, 2, 4, 8, 16, 30, 30])
        self.assertEqual(self.auth.delayFor(10**6), 30)

    def test_sharedAcrossProtocols(self) -> None:
        """
        Failures count per address whatever the protocol (POP3 asks for
        L{IMailbox}, SMTP for L{ISender}).
        """
        self.failAfter(self.login("alice@example.test", "wrong", interface=IMailbox), 2)
        self.failAfter(self.login("alice@example.test", "wrong", interface=ISender), 4)
        self.failAfter(self.login("bob@example.test", "wrong", interface=IMailbox), 8)

    def test_perAddress(self) -> None:
        self.failAfter(self.login("alice@example.test", "wrong", peer="192.0.2.1"), 2)
        self.failAfter(self.login("alice@example.test", "wrong", peer="192.0.2.1"), 4)
        self.failAfter(self.login("alice@example.test", "wrong", peer="192.0.2.2"), 2)

    def test_ipv6SameSubnet(self) -> None:
        self.failAfter(self.login("alice@example.test", "wrong", peer="2001:db8::1"), 2)
        self.failAfter(self.login("alice@example.test", "wrong", peer="2001:db8::2"), 4)

    def test_successForgetsItsPair(self) -> None:
        """
        A success forgets the failures in a row at that account from that
        client: a user who mistyped and then got it right starts afresh
        there.
        """
        self.failAfter(self.login("alice@example.test", "wrong"), 2)
        self.successResultOf(self.login("alice@example.test", "alice-pw"))
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 0)
        self.clock.advance(self.auth.decay)
        self.failAfter(self.login("alice@example.test", "wrong"), 2)

    def test_ownAccountDoesNotReset(self) -> None:
        """
        Issue 11, item 3: logging in to one's own account from an address
        does not reset the delay for guesses at another account from it.
        """
        self.failAfter(self.login("alice@example.test", "wrong"), 2)
        self.failAfter(self.login("alice@example.test", "wrong"), 4)
        self.successResultOf(self.login("bob@example.test", "bob-pw", interface=ISender))
        self.failAfter(self.login("alice@example.test", "wrong"), 8)
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 3)
        # Nor does a success in between each guess.
        self.successResultOf(self.login("bob@example.test", "bob-pw", interface=ISender))
        self.failAfter(self.login("alice@example.test", "wrong"), 16)

    def test_sprayAcrossAccounts(self) -> None:
        """
        One guess at each of many accounts is throttled by the client's
        level: the delay grows although no account saw two failures.
        """
        for i, expected in enumerate([2, 4, 8, 16, 30]):
            self.failAfter(self.login("user%d@example.test" % (i,), "wrong"), expected)
        self.assertEqual(self.auth.failures("192.0.2.1", "user0@example.test"), 1)
        # A success does not lower the level: the next new account waits too.
        self.successResultOf(self.login("bob@example.test", "bob-pw"))
        self.failAfter(self.login("user9@example.test", "wrong"), 30)

    def test_levelDecays(self) -> None:
        """
        The client's level drops by one every C{decay} seconds: occasional
        typos over a day do not add up.
        """
        for i in range(3):
            self.failAfter(self.login("user%d@example.test" % (i,), "wrong"), 2 * 2 ** i)
        self.assertEqual(self.auth.failures("192.0.2.1"), 3)
        self.clock.advance(self.auth.decay)
        self.assertEqual(self.auth.failures("192.0.2.1"), 2)
        self.clock.advance(2 * self.auth.decay)
        self.assertEqual(self.auth.failures("192.0.2.1"), 0)
        self.failAfter(self.login("user9@example.test", "wrong"), 2)

    def test_levelCapped(self) -> None:
        """
        However long a flood went on, C{forgetAfter} quiet seconds forget
        the client.
        """
        auth = Authenticator(self.portal, self.clock, baseDelay=0, maxDelay=0)
        for i in range(100):
            self.failAfter(auth.login(creds("user%d@example.test" % (i,), "wrong"), "192.0.2.1", IMailbox), 0)
        self.assertEqual(auth.failures("192.0.2.1"), auth.forgetAfter / auth.decay)
        self.clock.advance(auth.forgetAfter)
        self.assertEqual(auth.failures("192.0.2.1"), 0)

    def test_quietPeriodForgets(self) -> None:
        self.failAfter(self.login("alice@example.test", "wrong"), 2)
        lastFailure = self.clock.seconds()
        self.failAfter(self.login("alice@example.test", "wrong"), 4)
        self.clock.advance(lastFailure + self.auth.forgetAfter - 1 - self.clock.seconds())
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 2)
        self.clock.advance(1)
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 0)
        self.assertEqual(self.auth.failures("192.0.2.1"), 0)
        self.failAfter(self.login("alice@example.test", "wrong"), 2)

    def test_boundedMemory(self) -> None:
        """
        At most C{maxPeers} addresses are remembered; the oldest go first.
        """
        auth = Authenticator(self.portal, self.clock, baseDelay=0, maxDelay=0, maxPeers=3)
        for i in range(5):
            self.clock.advance(1)
            d = auth.login(creds("alice@example.test", "wrong"), "192.0.2.%d" % i, IMailbox)
            self.failAfter(d, 0)
        self.assertEqual(len(auth._clients), 3)
        self.assertEqual(len(auth._pairs), 3)
        self.assertEqual([auth.failures("192.0.2.%d" % i) for i in range(5)], [0, 0, 1, 1, 1])
        self.assertEqual(
            [auth.failures("192.0.2.%d" % i, "alice@example.test") for i in range(5)], [0, 0, 1, 1, 1]
        )

    def test_boundedPairs(self) -> None:
        """
        Guesses at many accounts from one client keep at most C{maxPeers}
        pairs; junk user names are cut short in the key.
        """
        auth = Authenticator(self.portal, self.clock, baseDelay=0, maxDelay=0, maxPeers=3)
        for i in range(5):
            self.failAfter(auth.login(creds(str(i) + "x" * 5000, "wrong"), "192.0.2.1", IMailbox), 0)
        self.assertEqual(len(auth._pairs), 3)
        self.assertTrue(all(len(account) <= 320 for _, account in auth._pairs))

    def test_noUserExistenceLeak(self) -> None:
        """
        An unknown user, an alias and a wrong password fail identically:
        same exception type and message, same delay.
        """
        results = []
        for i, username in enumerate(["alice@example.test", "nobody@example.test", "info@example.test", "nobody@other.test", "junk"]):
            f = self.failAfter(self.login(username, "wrong", peer="198.51.100.%d" % i), 2)
            results.append((type(f.value), str(f.value), f.value.args))
        self.assertEqual(len(set(results)), 1, results)

    def test_mailboxInUse(self) -> None:
        """
        The right password for a held mailbox fails at once with
        L{MailboxInUse}, and counts as a success for throttling.
        """
        _, _, logout = self.successResultOf(self.login("alice@example.test", "alice-pw"))
        self.failAfter(self.login("alice@example.test", "wrong"), 2)
        self.failureResultOf(self.login("alice@example.test", "alice-pw"), MailboxInUse)
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 0)
        logout()
        self.successResultOf(self.login("alice@example.test", "alice-pw"))

    def test_cancel(self) -> None:
        """
        Cancelling a pending failure (the client hung up) cancels its timer.
        """
        d = self.login("alice@example.test", "wrong")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.auth.failures("192.0.2.1"), 1)

    def test_internalErrorNotDelayed(self) -> None:
        """
        An error that is not a login failure (a broken store) is passed on
        at once and not counted against the client.
        """

        class BrokenStore(MemoryAccountStore):
            def passwordHash(self, address):
                raise RuntimeError("store unreadable")

        portal = makePortal(BrokenStore(), self.mailStore, runSynchronously, hasher=CHEAP)
        auth = Authenticator(portal, self.clock)
        self.failureResultOf(auth.login(creds("alice@example.test", "x"), "192.0.2.1", IMailbox), RuntimeError)
        self.assertEqual(auth.failures("192.0.2.1"), 0)

    def test_unhandledCredentials(self) -> None:
        """
        Credentials no checker handles are a (delayed) failed login.
        """
        class Odd:
            username = b"alice@example.test"

        d = self.auth.login(Odd(), "192.0.2.1", IMailbox)
        self.failAfter(d, 2)


class ManualRunner:
    """
    A hashing pool that runs nothing until told: C{started} counts the
    calls handed to it, L{finish} runs the oldest.
    """

    def __init__(self) -> None:
        self.pending: List[tuple] = []
        self.started = 0

    def __call__(self, f, *args, **kwargs):
        d: Deferred = Deferred()
        self.started += 1
        self.pending.append((d, f, args, kwargs))
        return d

    def finish(self) -> None:
        d, f, args, kwargs = self.pending.pop(0)
        d.callback(f(*args, **kwargs))


class LoginLoadTests(SynchronousTestCase):
    """
    Issue 11, item 2: a flood of logins cannot take the hashing pool or
    out-guess the delay with parallel connections.
    """

    def setUp(self) -> None:
        self.store = makeStore()
        self.clock = Clock()
        self.runner = ManualRunner()
        self.mailStore = MaildirStore(self.mktemp(), runSynchronously, "test.host")
        self.portal = makePortal(self.store, self.mailStore, self.runner, hasher=CHEAP)
        self.auth = Authenticator(
            self.portal,
            self.clock,
            baseDelay=2.0,
            maxDelay=30.0,
            maxPerClient=3,
            maxChecking=4,
            maxSuspectChecking=2,
            busyDelay=0,
        )

    def login(self, username="alice@example.test", password="wrong", peer="192.0.2.1"):
        return self.auth.login(creds(username, password), peer, IMailbox)

    def test_delayBeforeNextCheck(self) -> None:
        """
        After a failure, an attempt from the same client on another
        connection waits for the delay owed before its password is
        checked, and is then checked once.
        """
        first = self.login()
        self.runner.finish()
        self.assertNoResult(first)  # answered in 2 s
        self.clock.advance(0.5)
        second = self.login()
        self.assertEqual(self.runner.started, 1)
        self.clock.advance(1.4)
        self.assertEqual(self.runner.started, 1)
        self.clock.advance(0.1)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.runner.started, 2)
        self.runner.finish()
        self.clock.advance(4)
        self.failureResultOf(second, UnauthorizedLogin)

    def test_oneCheckAtATimeAfterFailures(self) -> None:
        """
        An attempt from a client with recent failures waits for that
        client's check in progress, then for the delay it cost.
        """
        first = self.login()
        self.runner.finish()
        second = self.login()
        self.clock.advance(1)
        self.assertEqual(self.runner.started, 1)
        self.clock.advance(1)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.runner.started, 2)
        # A third arrives while the second is being checked; the second
        # fails, and the client owes 4 s from now.
        third = self.login()
        self.runner.finish()
        self.clock.advance(3.9)
        self.assertEqual(self.runner.started, 2)
        self.clock.advance(0.1)
        self.assertEqual(self.runner.started, 3)
        self.failureResultOf(second, UnauthorizedLogin)
        self.runner.finish()
        self.clock.advance(8)
        self.failureResultOf(third, UnauthorizedLogin)

    def test_cleanClientInParallel(self) -> None:
        """
        A client without recent failures (users behind one NAT) has its
        attempts at different accounts checked in parallel.
        """
        self.login("bob@example.test", "bob-pw")
        self.login("alice@example.test", "alice-pw")
        self.login("carol@example.test", "carol-pw")
        self.assertEqual(self.runner.started, 3)

    def test_oneCheckAtATimePerAccount(self) -> None:
        """
        Attempts from one client at one account are checked one after the
        other, even before any failure: a burst of parallel guesses from a
        new address gets one check, then the delay.
        """
        attempts = [self.login() for _ in range(3)]
        self.assertEqual(self.runner.started, 1)
        self.runner.finish()
        self.assertEqual(self.runner.started, 1)
        self.clock.advance(2)
        self.failureResultOf(attempts[0], UnauthorizedLogin)
        self.assertEqual(self.runner.started, 2)

    def test_otherClientNotDelayed(self) -> None:
        """The delay a client owes is its own."""
        self.login()
        self.runner.finish()
        self.login(peer="192.0.2.2")
        self.assertEqual(self.runner.started, 2)

    def failOnce(self, peer: str) -> None:
        """A failed login from C{peer}: it now owes 2 s."""
        d = self.login(peer=peer)
        self.runner.finish()
        self.clock.advance(2)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_perClientLimit(self) -> None:
        """
        A client with recent failures has at most C{maxPerClient} attempts
        in progress, waiting ones included; more fail at once with
        L{LoginBusy}, which is not a failed login.  Other clients are not
        affected, and the first answer frees a place.
        """
        first = self.login(peer="2001:db8::1")
        self.runner.finish()
        self.login(peer="2001:db8::2")
        self.login(peer="2001:db8::3")
        self.assertEqual(self.auth.inProgress("2001:db8::99"), 3)
        busy = self.failureResultOf(self.login(peer="2001:db8::4"), LoginBusy)
        self.assertEqual(str(busy.value), "Too many login attempts in progress, try again later")
        self.assertEqual(self.runner.started, 1)
        self.assertEqual(self.auth.failures("2001:db8::4", "alice@example.test"), 1)
        self.login(peer="192.0.2.2")
        self.assertEqual(self.runner.started, 2)
        self.clock.advance(2)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.auth.inProgress("2001:db8::4"), 2)
        self.login(peer="2001:db8::4")
        self.assertEqual(self.auth.inProgress("2001:db8::4"), 3)

    def test_cleanClientLimit(self) -> None:
        """
        A client without recent failures (users behind one NAT) may have
        as many attempts in progress as can be checked at once.
        """
        for _ in range(4):
            self.login("bob@example.test", "bob-pw")
        self.assertEqual(self.auth.inProgress("192.0.2.1"), 4)
        self.failureResultOf(self.login("bob@example.test", "bob-pw"), LoginBusy)

    def test_overallLimit(self) -> None:
        """
        At most C{maxChecking} attempts are being checked at once, whatever
        their clients; the next fails at once with L{LoginBusy}, and is
        accepted again when a check ends.
        """
        for i in range(4):
            self.login("user%d@example.test" % (i,), peer="192.0.2.%d" % (i,))
        self.failureResultOf(self.login("user9@example.test", peer="198.51.100.1"), LoginBusy)
        self.assertEqual(self.runner.started, 4)
        self.assertEqual(self.auth.inProgress(), 4)
        self.runner.finish()
        self.assertEqual(self.auth.inProgress(), 3)
        d = self.login("bob@example.test", "bob-pw", peer="198.51.100.1")
        self.assertEqual(self.runner.started, 5)
        for _ in range(4):
            self.runner.finish()
        self.assertEqual(self.successResultOf(d)[1].address, "bob@example.test")

    def test_suspectsShare(self) -> None:
        """
        Clients with recent failures get only C{maxSuspectChecking} checks
        at once: a flood from many addresses leaves room for the others.
        """
        for peer in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            self.failOnce(peer)
        self.login(peer="198.51.100.1")
        self.login(peer="198.51.100.2")
        self.assertEqual(self.auth.inProgress(), 2)
        self.failureResultOf(self.login(peer="198.51.100.3"), LoginBusy)
        self.login("bob@example.test", "bob-pw", peer="192.0.2.9")
        self.login("carol@example.test", "carol-pw", peer="192.0.2.10")
        self.assertEqual(self.auth.inProgress(), 4)

    def test_targetedAccount(self) -> None:
        """
        Attempts at an account that failed recently from anywhere share
        the suspects' checks, even from new addresses (a
        botnet guessing one password from many addresses); the other
        accounts keep the rest.
        """
        self.failOnce("198.51.100.1")
        self.login(peer="198.51.100.2")
        self.login(peer="198.51.100.3")
        self.failureResultOf(self.login(peer="198.51.100.4"), LoginBusy)
        self.login("bob@example.test", "bob-pw", peer="198.51.100.5")
        self.assertEqual(self.auth.inProgress(), 3)

    def test_accountBeingChecked(self) -> None:
        """
        An attempt at an account being checked for another client counts
        as suspect too: the first wave of a botnet, before any failure is
        known, cannot fill the queue either.
        """
        attempts = [self.login(peer="198.51.100.%d" % (i,)) for i in range(4)]
        self.assertEqual(self.auth.inProgress(), 3)
        self.failureResultOf(attempts[3], LoginBusy)
        self.login("bob@example.test", "bob-pw", peer="192.0.2.9")
        self.assertEqual(self.auth.inProgress(), 4)

    def test_busyAnsweredLate(self) -> None:
        """
        L{LoginBusy} comes after C{busyDelay} seconds, so that a refused
        client retrying at once cannot keep the server busy answering it;
        meanwhile the attempt holds no place.  It can be cancelled.
        """
        auth = Authenticator(self.portal, self.clock, maxChecking=1, busyDelay=1.0)
        auth.login(creds("bob@example.test", "bob-pw"), "192.0.2.1", IMailbox)
        busy = auth.login(creds("bob@example.test", "bob-pw"), "192.0.2.2", IMailbox)
        self.assertNoResult(busy)
        self.assertEqual(auth.inProgress("192.0.2.2"), 0)
        self.clock.advance(1)
        self.failureResultOf(busy, LoginBusy)
        cancelled = auth.login(creds("bob@example.test", "bob-pw"), "192.0.2.2", IMailbox)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busyAfterWaiting(self) -> None:
        """
        An attempt whose delay ends while the pool is full fails with
        L{LoginBusy} without a check, and costs the client nothing more.
        """
        first = self.login()
        self.runner.finish()
        second = self.login()
        for i in range(4):
            self.login("user%d@example.test" % (i,), peer="192.0.2.%d" % (10 + i,))
        self.clock.advance(2)
        self.failureResultOf(first, UnauthorizedLogin)
        self.failureResultOf(second, LoginBusy)
        self.assertEqual(self.auth.failures("192.0.2.1", "alice@example.test"), 1)
        self.assertEqual(self.auth.inProgress("192.0.2.1"), 0)

    def test_cancelWhileWaiting(self) -> None:
        """
        An attempt cancelled (the client left) while it waits for the
        delay owed is never checked, and frees its place.
        """
        first = self.login()
        self.runner.finish()
        waiting = self.login()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.clock.advance(30)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.runner.started, 1)
        self.assertEqual(self.auth.inProgress("192.0.2.1"), 0)

    def test_cancelWhileWaitingForACheck(self) -> None:
        """
        An attempt cancelled while it waits for its client's check at the
        same account is forgotten: it is never checked, and frees its
        place.
        """
        first = self.login()
        waiting = self.login()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.auth.inProgress("192.0.2.1"), 1)
        self.runner.finish()
        self.clock.advance(2)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.runner.started, 1)
        self.assertEqual(self.auth._waiters, {})

    def test_cancelWhileChecking(self) -> None:
        """
        Cancelling an attempt being checked frees the client's place at
        once, but not the pool's until the hash is done; a mailbox won
        meanwhile is released.
        """
        d = self.login("alice@example.test", "alice-pw")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.auth.inProgress("192.0.2.1"), 0)
        self.assertEqual(self.auth.inProgress(), 1)
        self.runner.finish()
        self.assertEqual(self.auth.inProgress(), 0)
        self.assertFalse(self.portal.realm.isHeld("alice@example.test"))


class CachedLoginThrottlingTests(SynchronousTestCase):
    """
    Issue 14, "Logins": the login cache changes nothing in the throttling
    of failed logins (they are never remembered), and a remembered
    password does not skip the delay a client owes.
    """

    def setUp(self) -> None:
        self.store = makeStore()
        self.clock = Clock()
        self.runner = ManualRunner()
        self.mailStore = MaildirStore(self.mktemp(), runSynchronously, "test.host")
        self.portal = makePortal(self.store, self.mailStore, self.runner, hasher=CHEAP, clock=self.clock)
        self.auth = Authenticator(self.portal, self.clock, baseDelay=2.0, maxDelay=30.0, busyDelay=0)

    def login(self, password="alice-pw", peer="192.0.2.1"):
        return self.auth.login(creds("alice@example.test", password), peer, ISender)

    def remember(self) -> None:
        d = self.login()
        self.runner.finish()
        self.successResultOf(d)

    def test_hit(self) -> None:
        self.remember()
        _, avatar, _ = self.successResultOf(self.login())
        self.assertEqual(avatar.address, "alice@example.test")
        self.assertEqual(self.runner.started, 1)

    def test_failuresCounted(self) -> None:
        """
        After the right password was remembered, each wrong one is still
        checked, counted and answered after its growing delay.
        """
        self.remember()
        for n, delay in [(1, 2.0), (2, 4.0), (3, 8.0)]:
            d = self.login("wrong")
            self.assertEqual(self.runner.started, 1 + n)
            self.runner.finish()
            self.assertNoResult(d)
            self.clock.advance(delay - 0.5)
            self.assertNoResult(d)
            self.clock.advance(0.5)
            self.failureResultOf(d, UnauthorizedLogin)
            self.assertEqual(self.auth.failures("192.0.2.1", b"alice@example.test"), n)

    def test_hitWaitsForTheDelayOwed(self) -> None:
        """
        A client that just failed waits out its delay before even a
        remembered password is accepted; then it is, without a check.
        """
        self.remember()
        failed = self.login("wrong")
        self.runner.finish()
        d = self.login()
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(failed, UnauthorizedLogin)
        self.successResultOf(d)
        self.assertEqual(self.runner.started, 2)
        self.assertEqual(self.auth.failures("192.0.2.1", b"alice@example.test"), 0)

    def test_admittedWhenThePoolIsFull(self) -> None:
        """
        A remembered password needs no hashing, so it is admitted even when
        the pool has all the checks it may have; other logins are still
        refused.
        """
        self.remember()
        auth = Authenticator(self.portal, self.clock, maxChecking=2, busyDelay=0)
        for i in range(2):
            auth.login(creds("bob@example.test", "wrong"), "198.51.100.%d" % (i,), ISender)
        self.assertEqual(self.runner.started, 3)
        self.failureResultOf(auth.login(creds("bob@example.test", "bob-pw"), "203.0.113.1", ISender), LoginBusy)
        self.failureResultOf(auth.login(creds("alice@example.test", "wrong"), "203.0.113.1", ISender), LoginBusy)
        _, avatar, _ = self.successResultOf(auth.login(creds("alice@example.test", "alice-pw"), "203.0.113.1", ISender))
        self.assertEqual(avatar.address, "alice@example.test")
        self.assertEqual(self.runner.started, 3)
        self.assertEqual(auth.inProgress(), 2)

    def test_admittedWhenSuspectsAreFull(self) -> None:
        """
        Also when the account is being guessed at and the suspects' share
        of the pool is taken.
        """
        self.remember()
        auth = Authenticator(self.portal, self.clock, maxSuspectChecking=1, busyDelay=0)
        auth.login(creds("alice@example.test", "wrong"), "198.51.100.1", ISender)
        auth.login(creds("alice@example.test", "wrong"), "198.51.100.2", ISender)
        self.assertEqual(self.runner.started, 3)
        self.failureResultOf(auth.login(creds("alice@example.test", "other"), "203.0.113.1", ISender), LoginBusy)
        self.successResultOf(auth.login(creds("alice@example.test", "alice-pw"), "203.0.113.1", ISender))
        self.assertEqual(self.runner.started, 3)

    def test_rememberedWithExtraCheckers(self) -> None:
        """
        With more checkers after the account checker, its cache still
        admits remembered logins; other checkers' logins are not.
        """
        memory = InMemoryUsernamePasswordDatabaseDontUse(**{"robot@example.test": b"robot-pw"})
        portal = makePortal(self.store, self.mailStore, self.runner, extraCheckers=[memory], hasher=CHEAP, clock=self.clock)
        d = portal.login(creds("alice@example.test", "alice-pw"), None, ISender)
        self.runner.finish()
        self.successResultOf(d)
        auth = Authenticator(portal, self.clock, maxChecking=1, busyDelay=0)
        auth.login(creds("bob@example.test", "wrong"), "198.51.100.1", ISender)
        self.successResultOf(auth.login(creds("alice@example.test", "alice-pw"), "203.0.113.1", ISender))
        self.failureResultOf(auth.login(creds("robot@example.test", "robot-pw"), "203.0.113.1", ISender), LoginBusy)

    def test_storeFailsWhenFull(self) -> None:
        """
        If the account store cannot be read while the pool is full, the
        login is refused as busy (and the fault logged), not raised into
        the protocol.
        """
        self.remember()
        auth = Authenticator(self.portal, self.clock, maxChecking=1, busyDelay=0)
        auth.login(creds("bob@example.test", "wrong"), "198.51.100.1", ISender)

        def broken(address):
            raise OSError("disk on fire")

        self.patch(self.store, "passwordHash", broken)
        self.failureResultOf(auth.login(creds("alice@example.test", "alice-pw"), "203.0.113.1", ISender), LoginBusy)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class MakePortalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = makeStore()
        self.mailStore = MaildirStore(self.mktemp(), runSynchronously, "test.host")

    def test_default(self) -> None:
        portal = makePortal(self.store, self.mailStore, runSynchronously, hasher=CHEAP)
        self.assertIsInstance(portal.checkers[IUsernamePassword], AccountChecker)
        self.assertIsInstance(portal.realm, MailRealm)
        _, avatar, _ = self.successResultOf(portal.login(creds("alice@example.test", "alice-pw"), None, ISender))
        self.assertIsInstance(avatar, Sender)
        self.assertIsNone(portal.checkers[IUsernamePassword].cache)

    def test_cache(self) -> None:
        """
        With a clock the account checker remembers successful logins for
        C{cacheTTL} seconds.
        """
        portal = makePortal(self.store, self.mailStore, runSynchronously, hasher=CHEAP, clock=Clock(), cacheTTL=42)
        self.assertEqual(portal.checkers[IUsernamePassword].cache.ttl, 42)

    def test_extraChecker(self) -> None:
        """
        A second checker for the same credentials is added after the
        account checker, not instead of it.
        """
        memory = InMemoryUsernamePasswordDatabaseDontUse(**{"robot@example.test": b"robot-pw"})
        portal = makePortal(self.store, self.mailStore, runSynchronously, extraCheckers=[memory], hasher=CHEAP)
        self.assertIsInstance(portal.checkers[IUsernamePassword], FirstSuccessChecker)
        self.assertTrue(verifyObject(ICredentialsChecker, portal.checkers[IUsernamePassword]))
        _, robot, _ = self.successResultOf(portal.login(creds("robot@example.test", "robot-pw"), None, IMailbox))
        self.assertIsInstance(robot, Mailbox)
        self.assertEqual(robot.address, "robot@example.test")
        _, alice, _ = self.successResultOf(portal.login(creds("alice@example.test", "alice-pw"), None, IMailbox))
        self.assertEqual(alice.address, "alice@example.test")
        self.failureResultOf(portal.login(creds("robot@example.test", "alice-pw"), None, IMailbox), UnauthorizedLogin)
        self.failureResultOf(portal.login(creds("alice@example.test", "robot-pw"), None, IMailbox), UnauthorizedLogin)
