# -*- test-case-name: tests.test_cred -*-
"""
Authentication with L{twisted.cred}: credentials -> L{AccountChecker} ->
avatar id (the user's address) -> L{MailRealm} -> (interface, avatar,
logout), and the L{Authenticator} every listener shares, which slows down
password guessing per client address and per (client, account) pair, and
bounds the logins in progress so that a flood of them cannot take the
machine from mail delivery.

Logins are full addresses, compared case-insensitively.  Only users log in:
an alias has no password.  Checking a password costs one Argon2
verification in a thread of the hashing pool (its own, not the pool that
syncs Maildirs: see L{mailnet.service}), also for unknown users (against a
dummy hash), and a failure is reported the same way, after the same
throttling delay, whether or not the user exists.  A successful check is
remembered for a few minutes (L{mailnet.passwords.LoginCache}): the same
password for the same stored hash then succeeds without a thread or a
hash; failures are never remembered.
"""

import ipaddress
import math
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Type, Union

import attr
from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mailnet import metrics
from mailnet.address import canonicalAddress, isSafeMailboxName, normalizeAddress
from mailnet.errors import AliasExpansionTooLarge, BadAddress, LoginBusy, MailboxInUse
from mailnet.interfaces import (
    IAccountStore,
    IAuthenticator,
    IMailAccount,
    IMailbox,
    IMaildir,
    IMailStore,
    ISender,
)
from mailnet.passwords import LOGIN_CACHE_SIZE, LOGIN_CACHE_TTL, LoginCache, dummyHash, hashPassword, needsRehash, verifyPassword

log = Logger()

#: The one message every failed login carries: it must not tell an unknown
#: user from a wrong password.
FAILED = "Authentication failed"


def _text(value) -> Optional[str]:
    """Credentials arrive as bytes from most protocols."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def loginAddress(username) -> Optional[str]:
    """
    @return: the normalised address a username names, or L{None} when it is
        not an address that could be a user (malformed, or unusable as a
        mailbox directory name).
    """
    text = _text(username)
    if text is None:
        return None
    try:
        address = normalizeAddress(text, allowUTF8=True)
    except BadAddress:
        return None
    return address if isSafeMailboxName(address) else None


@implementer(ICredentialsChecker)
class AccountChecker:
    """
    Checks user names and passwords against an L{IAccountStore}.

    @param store: the account store.
    @param run: runs a blocking callable in a thread: C{run(f, *args)}
        returns a L{Deferred} (see L{mailnet.store.maildir.ThreadRunner}).
    @param hasher: the Argon2 parameters wanted now: the dummy hash for
        unknown users is made with them, and a user's hash made with other
        parameters is replaced after a successful login.  The defaults of
        L{mailnet.passwords} if not given.
    @param clock: an L{IReactorTime}; with it, successful verifications are
        remembered for C{cacheTTL} seconds (see L{cache}).  Without it,
        every login is verified.
    @param cacheTTL: seconds a successful verification is remembered
        (C{[limits] login_cache_ttl}); 0 remembers none.

    @ivar cache: the L{LoginCache} of successful verifications, or L{None}.
        It is looked up only after the stored hash is read, with that hash:
        a changed password or a removed user never hits.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        store: IAccountStore,
        run: Callable[..., Deferred],
        hasher: Optional[PasswordHasher] = None,
        clock: Optional[IReactorTime] = None,
        cacheTTL: float = LOGIN_CACHE_TTL,
    ) -> None:
        self._store = store
        self._run = run
        self._hasher = hasher
        self.cache: Optional[LoginCache] = None
        if clock is not None and cacheTTL > 0:
            self.cache = LoginCache(clock, cacheTTL, LOGIN_CACHE_SIZE)

    def requestAvatarId(self, credentials) -> Deferred:
        """
        @return: a L{Deferred} firing with the user's normalised address, or
            failing with L{UnauthorizedLogin}.
        """
        address = loginAddress(credentials.username)
        if address is None:
            # Not an address at all: no user could have it, so there is no
            # existence to hide; don't touch the store.
            return fail(UnauthorizedLogin(FAILED))
        password = credentials.password
        stored = self._store.passwordHash(address)
        if stored is None:
            # Unknown user or an alias: spend the same time as for a real
            # user, then fail.
            d = self._run(verifyPassword, dummyHash(self._hasher), password, self._hasher)
            d.addCallback(lambda _: Failure(UnauthorizedLogin(FAILED)))
            return d
        cache = self.cache
        if cache is not None and cache.hit(address, stored, password):
            # Verified recently against this very hash: no thread, no hash.
            return succeed(address)

        def checked(ok: bool):
            if not ok:
                return Failure(UnauthorizedLogin(FAILED))
            if cache is not None:
                cache.add(address, stored, password)
            if needsRehash(stored, self._hasher):
                self._rehash(address, stored, password)
            return address

        return self._run(verifyPassword, stored, password, self._hasher).addCallback(checked)

    def remembered(self, credentials) -> bool:
        """
        @return: whether these credentials would succeed from the cache now:
            without a thread or a hash (one account-store read and one
            HMAC).  L{Authenticator} admits such logins even when the
            hashing pool is full.
        """
        if self.cache is None:
            return False
        address = loginAddress(getattr(credentials, "username", None))
        if address is None:
            return False
        stored = self._store.passwordHash(address)
        return stored is not None and self.cache.hit(address, stored, credentials.password)

    def _rehash(self, address: str, old: str, password) -> None:
        """
        Replace a hash made with outdated parameters (in the background: the
        login does not wait for it).
        """

        def store(new: str) -> None:
            # Only if no one changed the password meanwhile.
            if self._store.passwordHash(address) == old:
                self._store.setPasswordHash(address, new)
                if self.cache is not None:
                    # The next login finds the new hash: let it hit too.
                    self.cache.add(address, new, password)
                log.info("Rehashed the password of {address} with current parameters", address=address)

        d = self._run(hashPassword, password, self._hasher)
        d.addCallback(store)
        d.addErrback(lambda f: log.failure("Could not rehash the password of {address}", f, address=address))


@implementer(ICredentialsChecker)
class FirstSuccessChecker:
    """
    Tries several checkers for the same credentials in order; the first
    that accepts wins.  Lets L{makePortal} add a checker without replacing
    the account checker.
    """

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self.checkers = list(checkers)
        interfaces: List = []
        for checker in self.checkers:
            interfaces.extend(i for i in checker.credentialInterfaces if i not in interfaces)
        self.credentialInterfaces = tuple(interfaces)

    def requestAvatarId(self, credentials) -> Deferred:
        candidates = [c for c in self.checkers if any(i.providedBy(credentials) for i in c.credentialInterfaces)]

        def attempt(previous: Optional[Failure], index: int) -> Deferred:
            if index >= len(candidates):
                return fail(previous or UnauthorizedLogin(FAILED))
            d = maybeDeferred(candidates[index].requestAvatarId, credentials)

            def failed(f: Failure):
                f.trap(UnauthorizedLogin)
                return attempt(f, index + 1)

            return d.addErrback(failed)

        return attempt(None, 0)


@implementer(IMailbox)
@attr.s(auto_attribs=True, frozen=True)
class Mailbox:
    """
    The POP3 avatar.
    """

    address: str
    maildir: IMaildir


@implementer(ISender)
@attr.s(auto_attribs=True, frozen=True)
class Sender:
    """
    The submission avatar.  It may send as its own address and as any
    alias that delivers to it (looked up at each call, so alias changes
    apply at once).  A catch-all does not count: owning C{@example.test}
    does not make every address there one's own.
    """

    address: str
    store: IAccountStore

    def maySendAs(self, address: str) -> bool:
        address = canonicalAddress(address)
        if address == self.address:
            return True
        # One index read, not the whole alias table (a From: may list
        # thousands of addresses).
        if self.store.aliasTargets(address) is None:
            return False
        try:
            recipients = self.store.resolve(address)
        except (BadAddress, AliasExpansionTooLarge):
            return False
        return recipients is not None and self.address in recipients


@implementer(IRealm)
class MailRealm:
    """
    Hands out L{IMailbox}, L{ISender} and L{IMailAccount} avatars for
    authenticated addresses.  A mailbox is held by one session at a time
    (RFC 1939 §8: the POP3 server locks the maildrop) until that session's
    logout; an IMAP account is shared by any number of sessions (they get
    one account object, and through it each other's changes).

    @param store: the account store (for L{ISender.maySendAs}).
    @param mailStore: where the Maildirs are.
    @param accounts: the L{mailnet.store.folders.AccountRegistry} that
        gives L{IMailAccount} avatars; without one, none are offered.
    """

    def __init__(self, store: IAccountStore, mailStore: IMailStore, accounts=None) -> None:
        self._store = store
        self._mailStore = mailStore
        self._held: Dict[str, object] = {}
        self.accounts = accounts

    def isHeld(self, address: str) -> bool:
        return address.lower() in self._held

    def requestAvatar(self, avatarId, mind, *interfaces) -> Tuple[Type[Interface], object, Callable[[], None]]:
        address = _text(avatarId)
        if address is None:
            raise UnauthorizedLogin(FAILED)
        address = address.lower()
        for interface in interfaces:
            if interface is IMailbox:
                return IMailbox, self._mailbox(address), self._releaser(address)
            if interface is ISender:
                return ISender, Sender(address, self._store), lambda: None
            if interface is IMailAccount and self.accounts is not None:
                return IMailAccount, *self._account(address)
        raise NotImplementedError("mailnet's realm offers only IMailbox, ISender and IMailAccount")

    def _account(self, address: str) -> Tuple[object, Callable[[], None]]:
        accounts = self.accounts
        account = accounts.open(address)
        released: List[bool] = []

        def logout() -> None:
            # Idempotent: one release per login.
            if not released:
                released.append(True)
                accounts.release(account)

        return account, logout

    def _mailbox(self, address: str) -> Mailbox:
        if address in self._held:
            raise MailboxInUse(address=address)
        token = object()
        self._held[address] = token
        try:
            return Mailbox(address, self._mailStore.maildir(address))
        except BaseException:
            del self._held[address]
            raise

    def _releaser(self, address: str) -> Callable[[], None]:
        token = self._held[address]

        def logout() -> None:
            # Idempotent, and a stale logout never frees a later session's hold.
            if self._held.get(address) is token:
                del self._held[address]

        return logout


def peerKey(peerHost: str) -> str:
    """
    The throttling key of a client address: IPv4 addresses as they are,
    IPv6 addresses by their /64 (one subscriber usually has a whole /64),
    IPv4-mapped IPv6 addresses as IPv4.  Anything else as given.
    """
    try:
        ip = ipaddress.ip_address(peerHost.split("%", 1)[0])
    except ValueError:
        return peerHost
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def accountKey(username) -> str:
    """
    The account part of a throttling key: the normalised address a login
    names, or (for a name that cannot be an address) its text, lower-cased
    and cut to 320 characters so that junk names cannot grow the tables.
    """
    address = loginAddress(username)
    if address is not None:
        return address
    text = _text(username)
    return (text if text is not None else repr(username))[:320].lower()


@attr.s(auto_attribs=True)
class _ClientRecord:
    """
    What a client address owes.

    @ivar level: its recent failures, whatever the account; decays by one
        every C{decay} seconds.
    @ivar updated: when C{level} was last brought up to date.
    @ivar notBefore: no check of this client's passwords starts earlier.
    """

    level: float
    updated: float
    notBefore: float


@attr.s(auto_attribs=True)
class _AccountRecord:
    """Recent failures at one account, from any client (decays as a client's level)."""

    level: float
    updated: float


@attr.s(auto_attribs=True)
class _PairRecord:
    """Failures in a row from one client at one account."""

    failures: int
    last: float


@implementer(IAuthenticator)
class Authenticator:
    """
    Logs clients in through the portal, throttles password guessing per
    client address and per (client, account) pair, and bounds how many
    logins are in progress, across every listener that shares this object.

    B{Throttling.}  A client is keyed by L{peerKey} (an IPv6 client by its
    /64).  Two counts set the delay after a failed login:

      - the failures in a row from the client at this account (the pair):
        a success forgets them -- only them -- and so does C{forgetAfter}
        seconds without a failure;
      - the client's recent failures at any account (its level): one more
        per failure, one less every C{decay} seconds, never more than
        C{forgetAfter / decay}.  A success does not lower it, so that
        logging in to one's own account cannot buy more guesses at
        another one.

    With I{n} the larger of the two, the failure is reported after
    C{baseDelay * 2 ** (n - 1)} seconds (at most C{maxDelay}), and the
    client owes that delay: a later attempt from it, on any connection,
    first waits until the delay has passed, then checks its password.  A
    client has one check at a time at one account, and a client with
    recent failures one check at a time at all (an attempt waits for the
    one in progress, then for the delay that one cost).  So parallel
    connections do not multiply the guessing rate; a client without recent
    failures (many users behind one NAT) is checked in parallel for
    different accounts.

    B{Bounds.}  At most C{maxChecking} attempts are being checked (queued
    for or in the password-hashing pool) at once, and only
    C{maxSuspectChecking} of them from clients with recent failures, or at
    accounts with recent failures from anywhere or with a check in
    progress (a botnet guessing one password from many addresses): the
    others are never queued behind
    more than those, and a flood keeps its hashing to part of the CPUs.  A client with recent
    failures has at most C{maxPerClient} attempts in progress (waiting for
    the delay owed, being checked, or waiting to report a failure); one
    without, at most C{maxChecking}.  An attempt beyond any of these
    bounds fails with L{mailnet.errors.LoginBusy} after C{busyDelay}
    seconds (so that a client retrying at once costs little); that is not
    a failed login, and the client may retry.  The pool bounds do not apply
    to a password the account checker remembers (see
    L{AccountChecker.remembered}): it needs no hashing.  At most C{maxPeers}
    clients, C{maxPeers} accounts and C{maxPeers} pairs are remembered;
    the ones whose last failure is oldest are forgotten first.

    @param portal: the shared L{Portal} (see L{makePortal}).
    @param clock: an L{IReactorTime} (L{twisted.internet.task.Clock} in tests).
    @param decay: seconds for the client's level to drop by one (> 0).
    @param maxChecking: should match the hashing pool: its threads and a
        short queue (see L{mailnet.service}).
    @param maxSuspectChecking: at most the pool's threads (see
        L{mailnet.service}: half of them).
    """

    def __init__(
        self,
        portal: Portal,
        clock: IReactorTime,
        baseDelay: float = 2.0,
        maxDelay: float = 30.0,
        forgetAfter: float = 900.0,
        maxPeers: int = 10000,
        decay: float = 60.0,
        maxPerClient: int = 4,
        maxChecking: int = 16,
        busyDelay: float = 1.0,
        maxSuspectChecking: int = 1,
    ) -> None:
        self.portal = portal
        self._clock = clock
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.forgetAfter = forgetAfter
        self.maxPeers = maxPeers
        self.decay = decay
        self.maxPerClient = maxPerClient
        self.maxChecking = maxChecking
        self.busyDelay = busyDelay
        self.maxSuspectChecking = maxSuspectChecking
        # Oldest failure first: the order to expire and evict in.
        self._clients: "OrderedDict[str, _ClientRecord]" = OrderedDict()
        self._pairs: "OrderedDict[Tuple[str, str], _PairRecord]" = OrderedDict()
        self._accounts: "OrderedDict[str, _AccountRecord]" = OrderedDict()
        # Attempts in progress per client; attempts being checked, in all
        # and per client; attempts waiting for their client's check to end.
        self._inProgress: Dict[str, int] = {}
        self._checking = 0
        self._suspectChecking = 0
        self._checkingClients: Dict[str, int] = {}
        self._checkingPairs: Set[Tuple[str, str]] = set()
        self._checkingAccounts: Dict[str, int] = {}
        self._waiters: Dict[str, List[Deferred]] = {}

    def delayFor(self, failures: int) -> float:
        """@return: the delay before reporting the C{failures}th failure."""
        if failures < 1:
            return 0.0
        if failures > 64:  # 2 ** n would overflow long before anyone waits that long
            return self.maxDelay
        return min(self.baseDelay * 2 ** (failures - 1), self.maxDelay)

    def failures(self, peerHost: str, username=None) -> int:
        """
        @return: with C{username}, the failures in a row remembered for that
            login from this client address; without it, the client's
            current level (its recent failures at any account, rounded up).
        """
        self._expire()
        client = peerKey(peerHost)
        if username is not None:
            pair = self._pairs.get((client, accountKey(username)))
            return pair.failures if pair else 0
        record = self._clients.get(client)
        return math.ceil(self._level(record)) if record else 0

    def inProgress(self, peerHost: Optional[str] = None) -> int:
        """
        @return: the login attempts in progress from one client address, or
            being checked (all clients) if none is given.
        """
        if peerHost is None:
            return self._checking
        return self._inProgress.get(peerKey(peerHost), 0)

    # --- the tables -----------------------------------------------------

    def _level(self, record: Union[_ClientRecord, "_AccountRecord"]) -> float:
        elapsed = self._clock.seconds() - record.updated
        return max(0.0, record.level - elapsed / self.decay)

    def _expire(self) -> None:
        now = self._clock.seconds()
        tables: List[Tuple["OrderedDict[Any, Any]", Callable[[Any], float]]] = [
            (self._clients, lambda record: record.updated),
            (self._pairs, lambda record: record.last),
            (self._accounts, lambda record: record.updated),
        ]
        for table, last in tables:
            while table and now - last(next(iter(table.values()))) >= self.forgetAfter:
                table.popitem(last=False)

    def _suspect(self, client: str) -> bool:
        """@return: whether the client failed recently (it has a level or owes a delay)."""
        record = self._clients.get(client)
        return record is not None and (self._level(record) > 0 or record.notBefore > self._clock.seconds())

    def _targeted(self, account: str) -> bool:
        """
        @return: whether logins at this account failed recently, from any
            client, or one is being checked now (for another client: the
            same client waits for its own).
        """
        if self._checkingAccounts.get(account):
            return True
        record = self._accounts.get(account)
        return record is not None and self._level(record) > 0

    def _owed(self, client: str) -> float:
        """@return: how long the client must still wait before a check."""
        record = self._clients.get(client)
        return record.notBefore - self._clock.seconds() if record else 0.0

    def _recordFailure(self, client: str, account: str) -> Tuple[float, int, int]:
        """
        Count a failure.

        @return: the delay it costs the client, the pair's failures in a
            row, and the client's level (rounded up).
        """
        self._expire()
        now = self._clock.seconds()
        pair = self._pairs.pop((client, account), None) or _PairRecord(0, now)
        pair.failures += 1
        pair.last = now
        self._pairs[(client, account)] = pair
        record = self._clients.pop(client, None)
        if record is None:
            record = _ClientRecord(0.0, now, now)
        # Capped so that forgetAfter seconds without a failure forget it.
        record.level = min(self._level(record) + 1, max(self.forgetAfter / self.decay, 1.0))
        record.updated = now
        level = math.ceil(record.level)
        delay = self.delayFor(max(pair.failures, level))
        record.notBefore = max(record.notBefore, now + delay)
        self._clients[client] = record
        target = self._accounts.pop(account, None) or _AccountRecord(0.0, now)
        target.level = min(self._level(target) + 1, max(self.forgetAfter / self.decay, 1.0))
        target.updated = now
        self._accounts[account] = target
        for table in (self._clients, self._pairs, self._accounts):
            while len(table) > self.maxPeers:
                table.popitem(last=False)
        return delay, pair.failures, level

    # --- logging in -----------------------------------------------------

    def login(self, credentials, peerHost: str, interface) -> Deferred:
        client = peerKey(peerHost)
        account = accountKey(getattr(credentials, "username", None))
        count = self._inProgress.get(client, 0)
        if count >= (self.maxPerClient if self._suspect(client) else self.maxChecking):
            log.debug("Login from {peer} refused: {count} attempts from it already in progress", peer=client, count=count)
            return self._busy().addBoth(metrics.login, interface)
        self._inProgress[client] = self._inProgress.get(client, 0) + 1
        d = self._attempt(client, account, credentials, interface)
        d.addBoth(self._finished, client)
        d.addErrback(self._busyLater)
        d.addBoth(metrics.login, interface)
        return d

    def _busy(self) -> Deferred:
        """L{LoginBusy}, after C{busyDelay} seconds."""
        return self._later(self.busyDelay, LoginBusy())

    def _busyLater(self, failure: Failure):
        """An attempt refused by the pool: answer it after C{busyDelay} too."""
        failure.trap(LoginBusy)
        return self._busy()

    def _later(self, delay: float, error: Exception) -> Deferred:
        if delay <= 0:
            return fail(error)

        def cancel(d: Deferred) -> None:
            if call.active():
                call.cancel()

        d: Deferred = Deferred(cancel)
        call = self._clock.callLater(delay, d.errback, Failure(error))
        return d

    def _attempt(self, client: str, account: str, credentials, interface) -> Deferred:
        """
        Wait for the delay the client owes, and for the check in progress
        of the same client at the same account, or, if the client failed
        recently, of the same client at any account (then look again:
        either may have grown); then check.
        """
        owed = self._owed(client)
        if owed > 0:
            return deferLater(self._clock, owed, self._attempt, client, account, credentials, interface)
        if (client, account) in self._checkingPairs or (client in self._checkingClients and self._suspect(client)):
            waiters = self._waiters.setdefault(client, [])
            waiter: Deferred = Deferred(lambda d: waiters.remove(d) if d in waiters else None)
            waiters.append(waiter)
            return waiter.addCallback(lambda _: self._attempt(client, account, credentials, interface))
        return self._check(client, account, credentials, interface)

    def _remembered(self, credentials) -> bool:
        """
        @return: whether the portal's account checker would accept these
            credentials from its login cache, with no work for the hashing
            pool (see L{AccountChecker.remembered}).
        """
        if not IUsernamePassword.providedBy(credentials):
            return False
        checker = self.portal.checkers.get(IUsernamePassword)
        if isinstance(checker, FirstSuccessChecker):
            # Only the first is asked first.
            checker = checker.checkers[0]
        if not isinstance(checker, AccountChecker):
            return False
        try:
            return checker.remembered(credentials)
        except Exception:
            # The store is unreadable: the check would fail too; refuse.
            log.failure("Could not look up a remembered login")
            return False

    def _check(self, client: str, account: str, credentials, interface) -> Deferred:
        suspect = self._suspect(client) or self._targeted(account)
        full = (suspect and self._suspectChecking >= self.maxSuspectChecking) or self._checking >= self.maxChecking
        # A remembered password costs the pool nothing: admit it even then.
        if full and not self._remembered(credentials):
            log.debug("Login from {peer} refused: {count} logins already being checked", peer=client, count=self._checking)
            return fail(LoginBusy())
        self._checking += 1
        self._suspectChecking += suspect
        self._checkingClients[client] = self._checkingClients.get(client, 0) + 1
        self._checkingPairs.add((client, account))
        self._checkingAccounts[account] = self._checkingAccounts.get(account, 0) + 1
        timer: List[IDelayedCall] = []

        def cancel(d: Deferred) -> None:
            # The client left.  The check itself goes on (the hash runs in
            # its thread) and is still counted, in the pool and against the
            # client; only the answer is dropped.
            if timer and timer[0].active():
                timer[0].cancel()

        result: Deferred = Deferred(cancel)

        def checked(outcome) -> None:
            self._checking -= 1
            self._suspectChecking -= suspect
            count = self._checkingClients.pop(client) - 1
            if count:
                self._checkingClients[client] = count
            self._checkingPairs.discard((client, account))
            count = self._checkingAccounts.pop(account) - 1
            if count:
                self._checkingAccounts[account] = count
            outcome, delay = self._judge(outcome, client, account, credentials)
            for waiter in self._waiters.pop(client, []):
                if not waiter.called:
                    waiter.callback(None)
            if result.called:
                if not isinstance(outcome, Failure):
                    outcome[2]()  # nobody wants the avatar any more: log it out
                return None
            if delay > 0:
                timer.append(self._clock.callLater(delay, result.errback, outcome))
            elif isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            return None

        self.portal.login(credentials, None, interface).addBoth(checked)
        return result

    def _judge(self, outcome, client: str, account: str, credentials) -> Tuple[object, float]:
        """
        Count a check's outcome.

        @return: what to answer, and after how many seconds.
        """
        if not isinstance(outcome, Failure) or outcome.check(MailboxInUse):
            # A success, or the right password for a busy mailbox: forget
            # this pair's failures, only them (see the class docstring).
            self._pairs.pop((client, account), None)
            return outcome, 0.0
        if not outcome.check(LoginFailed):
            # A fault of ours (e.g. the store is unreadable): not the
            # client's guess; let the protocol answer with a temporary error.
            return outcome, 0.0
        delay, count, level = self._recordFailure(client, account)
        raw = getattr(credentials, "username", None)
        username = _text(raw) or repr(raw)
        log.info(
            "Authentication failed for {username!r} from {peer} (failure {count} at this account, "
            "{recent} recent at any); answering in {delay}s",
            username=username[:100],
            peer=client,
            count=count,
            recent=level,
            delay=delay,
        )
        # The same exception, message and delay whether or not the user exists.
        return Failure(UnauthorizedLogin(FAILED)), delay

    def _finished(self, result, client: str):
        count = self._inProgress.get(client, 0) - 1
        if count > 0:
            self._inProgress[client] = count
        else:
            self._inProgress.pop(client, None)
        return result


#: Logins checked at once per hashing thread (one hashing, the others
#: queued): with Argon2's ~0.25 s per check, a login waits at most about
#: two seconds for the pool, however many are refused meanwhile.
CHECKS_PER_HASHING_THREAD = 8


def hashingThreads(cpus: Optional[int] = None) -> int:
    """
    @return: the size of the password-hashing pool: one thread per CPU, at
        most four.  (The reactor thread and the disk work need little CPU
        and still get their share: the OS schedules them as soon as they
        are runnable.)
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def makePortal(
    store: IAccountStore,
    mailStore: IMailStore,
    run: Callable[..., Deferred],
    extraCheckers: Iterable[ICredentialsChecker] = (),
    hasher: Optional[PasswordHasher] = None,
    accounts=None,
    clock: Optional[IReactorTime] = None,
    cacheTTL: float = LOGIN_CACHE_TTL,
) -> Portal:
    """
    The portal every listener shares: L{MailRealm} with L{AccountChecker}.

    @param run: runs the password checks (Argon2) in threads: give it a
        pool of its own, not the one that syncs Maildirs.

    @param extraCheckers: more checkers (e.g. an external user database).
        For credentials both handle, the account checker is asked first
        and the others after it, in order (see L{FirstSuccessChecker}).
        Their avatar ids must be addresses.
    @param accounts: the L{mailnet.store.folders.AccountRegistry} for IMAP
        avatars (one on C{mailStore} and C{run}, watching no directories,
        if not given; set C{portal.realm.accounts.watcher} to a
        L{mailnet.store.watch} watcher to hear of other processes' changes).
    @param clock: with it, the account checker remembers successful
        verifications for C{cacheTTL} seconds (see L{AccountChecker}).
    """
    if accounts is None:
        from mailnet.store.folders import AccountRegistry

        accounts = AccountRegistry(mailStore, run)
    portal = Portal(MailRealm(store, mailStore, accounts))
    checkers: Dict = {}
    for checker in [AccountChecker(store, run, hasher, clock, cacheTTL), *extraCheckers]:
        for interface in checker.credentialInterfaces:
            checkers.setdefault(interface, []).append(checker)
    for interface, chain in checkers.items():
        if len(chain) == 1:
            portal.registerChecker(chain[0], interface)
        else:
            portal.registerChecker(FirstSuccessChecker(chain), interface)
    return portal
