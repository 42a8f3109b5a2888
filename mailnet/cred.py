# -*- test-case-name: tests.test_cred -*-
"""
Authentication with L{twisted.cred}: credentials -> L{AccountChecker} ->
avatar id (the user's address) -> L{MailRealm} -> (interface, avatar,
logout), and the L{Authenticator} every listener shares, which slows down
password guessing per client address.

Logins are full addresses, compared case-insensitively.  Only users log in:
an alias has no password.  Checking a password costs one Argon2
verification in a thread, also for unknown users (against a dummy hash),
and a failure is reported the same way, after the same throttling delay,
whether or not the user exists.
"""

import ipaddress
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import attr
from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mailnet.address import isSafeMailboxName, normalizeAddress
from mailnet.errors import BadAddress, MailboxInUse
from mailnet.interfaces import (
    IAccountStore,
    IAuthenticator,
    IMailAccount,
    IMailbox,
    IMaildir,
    IMailStore,
    ISender,
)
from mailnet.passwords import dummyHash, hashPassword, needsRehash, verifyPassword

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
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: IAccountStore, run: Callable[..., Deferred], hasher: Optional[PasswordHasher] = None) -> None:
        self._store = store
        self._run = run
        self._hasher = hasher

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

        def checked(ok: bool):
            if not ok:
                return Failure(UnauthorizedLogin(FAILED))
            if needsRehash(stored, self._hasher):
                self._rehash(address, stored, password)
            return address

        return self._run(verifyPassword, stored, password, self._hasher).addCallback(checked)

    def _rehash(self, address: str, old: str, password) -> None:
        """
        Replace a hash made with outdated parameters (in the background: the
        login does not wait for it).
        """

        def store(new: str) -> None:
            # Only if no one changed the password meanwhile.
            if self._store.passwordHash(address) == old:
                self._store.setPasswordHash(address, new)
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
        address = address.lower()
        if address == self.address:
            return True
        if address not in self.store.aliases():
            return False
        try:
            recipients = self.store.resolve(address)
        except BadAddress:
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


@attr.s(auto_attribs=True)
class _PeerRecord:
    failures: int
    last: float


@implementer(IAuthenticator)
class Authenticator:
    """
    Logs clients in through the portal and throttles failures per client
    address, across every listener that shares this object.

    The I{n}th failure in a row from one address is reported after
    C{baseDelay * 2 ** (n - 1)} seconds, at most C{maxDelay}.  A success
    (or a right password for a busy mailbox) forgets the address's
    failures, and so does C{forgetAfter} seconds without one.  At most
    C{maxPeers} addresses are remembered; the ones that failed longest ago
    are forgotten first.

    @param portal: the shared L{Portal} (see L{makePortal}).
    @param clock: an L{IReactorTime} (L{twisted.internet.task.Clock} in tests).
    """

    def __init__(
        self,
        portal: Portal,
        clock: IReactorTime,
        baseDelay: float = 2.0,
        maxDelay: float = 30.0,
        forgetAfter: float = 900.0,
        maxPeers: int = 10000,
    ) -> None:
        self.portal = portal
        self._clock = clock
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.forgetAfter = forgetAfter
        self.maxPeers = maxPeers
        # Oldest failure first: the order to expire and evict in.
        self._peers: "OrderedDict[str, _PeerRecord]" = OrderedDict()

    def delayFor(self, failures: int) -> float:
        """@return: the delay before reporting the C{failures}th failure."""
        if failures < 1:
            return 0.0
        if failures > 64:  # 2 ** n would overflow long before anyone waits that long
            return self.maxDelay
        return min(self.baseDelay * 2 ** (failures - 1), self.maxDelay)

    def failures(self, peerHost: str) -> int:
        """@return: the failures remembered for a client address."""
        self._expire()
        record = self._peers.get(peerKey(peerHost))
        return record.failures if record else 0

    def _expire(self) -> None:
        now = self._clock.seconds()
        while self._peers:
            key, record = next(iter(self._peers.items()))
            if now - record.last < self.forgetAfter:
                break
            del self._peers[key]

    def _recordFailure(self, key: str) -> int:
        self._expire()
        record = self._peers.pop(key, None) or _PeerRecord(0, 0.0)
        record.failures += 1
        record.last = self._clock.seconds()
        self._peers[key] = record
        while len(self._peers) > self.maxPeers:
            self._peers.popitem(last=False)
        return record.failures

    def login(self, credentials, peerHost: str, interface) -> Deferred:
        key = peerKey(peerHost)
        d = self.portal.login(credentials, None, interface)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(key,), errbackArgs=(key, credentials))
        return d

    def _succeeded(self, result, key: str):
        self._peers.pop(key, None)
        return result

    def _failed(self, failure: Failure, key: str, credentials):
        if failure.check(MailboxInUse):
            # The password was right: not a guess.
            self._peers.pop(key, None)
            return failure
        if not failure.check(LoginFailed):
            # A fault of ours (e.g. the store is unreadable): let the
            # protocol answer with a temporary error.
            return failure
        count = self._recordFailure(key)
        delay = self.delayFor(count)
        username = _text(credentials.username) or repr(credentials.username)
        log.info(
            "Authentication failed for {username!r} from {peer} (failure {count}); answering in {delay}s",
            username=username[:100],
            peer=key,
            count=count,
            delay=delay,
        )
        # The same exception, message and delay whether or not the user exists.
        return self._later(delay, UnauthorizedLogin(FAILED))

    def _later(self, delay: float, error: Exception) -> Deferred:
        def cancel(d: Deferred) -> None:
            if call.active():
                call.cancel()

        d: Deferred = Deferred(cancel)
        call = self._clock.callLater(delay, d.errback, Failure(error))
        return d


def makePortal(
    store: IAccountStore,
    mailStore: IMailStore,
    run: Callable[..., Deferred],
    extraCheckers: Iterable[ICredentialsChecker] = (),
    hasher: Optional[PasswordHasher] = None,
    accounts=None,
) -> Portal:
    """
    The portal every listener shares: L{MailRealm} with L{AccountChecker}.

    @param extraCheckers: more checkers (e.g. an external user database).
        For credentials both handle, the account checker is asked first
        and the others after it, in order (see L{FirstSuccessChecker}).
        Their avatar ids must be addresses.
    @param accounts: the L{mailnet.store.folders.AccountRegistry} for IMAP
        avatars (one on C{mailStore} and C{run}, watching no directories,
        if not given; set C{portal.realm.accounts.watcher} to a
        L{mailnet.store.watch} watcher to hear of other processes' changes).
    """
    if accounts is None:
        from mailnet.store.folders import AccountRegistry

        accounts = AccountRegistry(mailStore, run)
    portal = Portal(MailRealm(store, mailStore, accounts))
    checkers: Dict = {}
    for checker in [AccountChecker(store, run, hasher), *extraCheckers]:
        for interface in checker.credentialInterfaces:
            checkers.setdefault(interface, []).append(checker)
    for interface, chain in checkers.items():
        if len(chain) == 1:
            portal.registerChecker(chain[0], interface)
        else:
            portal.registerChecker(FirstSuccessChecker(chain), interface)
    return portal
