# -*- test-case-name: tests.test_delivery -*-
"""
What happens to mail the SMTP server accepts: the recipient policy (local
users, aliases, relay only for authenticated senders) and the routing of an
accepted message to local Maildirs and/or the relay queue.

Two rules guard against loops and lost mail:

  - a copy that an alias forwards to a remote address is queued with a
    C{Delivered-To:} field naming the alias (as Postfix does), so that
    when the message comes back to that address, the SMTP server sees the
    loop and refuses it;
  - C{postmaster} (RFC 5321 §4.5.1: every domain must have one) always
    works: C{postmaster@domain} goes to that user or alias if there is
    one, else to the primary domain's postmaster, else to a Maildir of its
    own for C{postmaster@<primary domain>}, which an administrator reads by
    creating that user.
"""

from typing import Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

from mailnet.address import isSafeMailboxName, splitAddress
from mailnet.errors import AliasExpansionTooLarge, SMTPReply
from mailnet.interfaces import (
    IAccountStore,
    IDeliveryAgent,
    IMailStore,
    IMessageReceiver,
    IRelayQueue,
    ISender,
)

log = Logger()


@implementer(IDeliveryAgent)
class DeliveryAgent:
    """
    Routes mail by the account store: addresses in local domains go to
    their users' Maildirs (after alias expansion); everything else goes to
    the relay queue, and only authenticated senders may put it there.
    """

    #: Seconds a positive look-up (a deliverable address, a local domain) is
    #: remembered.  RCPT and then DATA ask about the same addresses, and busy
    #: senders about the same few users; negative answers are never kept, so
    #: a user added with mailnet-admin receives mail at once, while a removal
    #: takes up to this long to reach delivery.
    CACHE_SECONDS = 5.0
    CACHE_ENTRIES = 10000

    def __init__(
        self,
        accounts: IAccountStore,
        mailStore: IMailStore,
        queue: Optional[IRelayQueue],
        clock: Optional[IReactorTime] = None,
        primaryDomain: Optional[str] = None,
    ) -> None:
        """
        @param primaryDomain: the domain whose postmaster C{<postmaster>}
            is (the first configured one); if it is not given or not
            local, the first local domain in alphabetical order.
        """
        self.accounts = accounts
        self.primaryDomain = primaryDomain.lower() if primaryDomain else None
        self.mailStore = mailStore
        self.queue = queue
        self._clock = clock
        self._resolved: Dict[str, Tuple[float, List[str]]] = {}
        self._localDomains: Dict[str, float] = {}

    def _now(self) -> Optional[float]:
        return self._clock.seconds() if self._clock is not None else None

    def postmaster(self) -> str:
        """
        @return: the address C{<postmaster>} without a domain stands for
            (RFC 5321 §4.5.1): C{postmaster@} the primary local domain.
        @raise SMTPReply: there is no local domain at all (550 5.1.1).
        """
        domain = self.primaryDomain
        if domain is None or not self._isLocalDomain(domain):
            domains = self.accounts.domains()
            if not domains:
                raise SMTPReply(550, "5.1.1 <postmaster>: no local domain is configured here")
            domain = domains[0]
        return "postmaster@" + domain

    def _resolve(self, address: str) -> Optional[List[str]]:
        targets = self._lookUp(address)
        if targets is not None:
            return targets
        local, _, domain = address.rpartition("@")
        if local.lower() != "postmaster" or not self._isLocalDomain(domain):
            return None
        # RFC 5321 §4.5.1: postmaster@ every local domain is accepted.
        primary = self.postmaster()
        if primary != address.lower():
            targets = self._lookUp(primary)
        return targets if targets is not None else [primary]

    def _lookUp(self, address: str) -> Optional[List[str]]:
        now = self._now()
        cached = self._resolved.get(address)
        if now is not None and cached is not None and cached[0] > now:
            return cached[1]
        targets = self.accounts.resolve(address)
        if now is not None and targets is not None:
            if len(self._resolved) >= self.CACHE_ENTRIES:
                self._resolved.clear()
            self._resolved[address] = (now + self.CACHE_SECONDS, targets)
        return targets

    def _isLocalDomain(self, domain: str) -> bool:
        now = self._now()
        if now is not None and self._localDomains.get(domain, 0.0) > now:
            return True
        local = self.accounts.isLocalDomain(domain)
        if now is not None and local:
            if len(self._localDomains) >= self.CACHE_ENTRIES:
                self._localDomains.clear()
            self._localDomains[domain] = now + self.CACHE_SECONDS
        return local

    def checkRecipient(self, address: str, sender: Optional[ISender]) -> None:
        # resolve() answers None for other domains too, so the common case
        # (a deliverable local address) costs one look-up.
        try:
            targets = self._resolve(address)
        except AliasExpansionTooLarge as e:
            log.error("<{recipient}>: {error}", recipient=address, error=str(e))
            raise SMTPReply(451, "4.3.0 <%s>: Alias expansion too large; try again later" % (address,))
        if targets is not None:
            self._checkMailboxNames(address, targets)
            return
        if self._isLocalDomain(splitAddress(address)[1]):
            # RFC 3463 §3.2: X.1.1 bad destination mailbox address.
            raise SMTPReply(550, "5.1.1 <%s>: Recipient address rejected: no such user here" % (address,))
        if sender is None:
            # Never an open relay: RFC 5321 §3.6.2, RFC 3463 X.7.1.
            raise SMTPReply(554, "5.7.1 <%s>: Relay access denied" % (address,))
        if self.queue is None:
            raise SMTPReply(451, "4.3.0 <%s>: Relaying is not available right now" % (address,))

    def _checkMailboxNames(self, address: str, targets: Sequence[str]) -> None:
        """
        Refuse at RCPT a recipient whose mailbox could not be stored (a
        user created before mailnet-admin checked names, such as
        C{/tmp/x@example.test}), with the same test as the store's: then it
        cannot fail the whole message, for every recipient, at end of data.
        """
        for target in targets:
            if not isSafeMailboxName(target) and self._isLocalDomain(splitAddress(target)[1]):
                log.warn("<{recipient}>: mailbox name {target!r} cannot be stored; refused", recipient=address, target=target)
                raise SMTPReply(550, "5.1.3 <%s>: Recipient address rejected: bad mailbox name" % (address,))

    def route(self, recipients: Sequence[str]) -> "tuple[List[str], List[str]]":
        """
        Split envelope recipients into local mailboxes and remote addresses,
        expanding aliases; duplicates are delivered once.
        """
        local, remote, _ = self._route(recipients)
        return local, remote

    def _route(self, recipients: Sequence[str]) -> "tuple[List[str], List[str], Dict[str, List[str]]]":
        """
        L{route}, with the remote addresses that aliases forward to apart.

        @return: C{(local, remote, forwarded)}: the local mailboxes, the
            remote addresses, and for each alias that forwards to remote
            addresses, those of them it brought in.
        """
        local: Dict[str, None] = {}
        remote: Dict[str, None] = {}
        forwarded: Dict[str, List[str]] = {}
        localDomains: Dict[str, bool] = {}

        def isLocal(address: str) -> bool:
            domain = splitAddress(address)[1]
            if domain not in localDomains:
                localDomains[domain] = self._isLocalDomain(domain)
            return localDomains[domain]

        for recipient in recipients:
            try:
                targets = self._resolve(recipient)
            except AliasExpansionTooLarge as e:
                # Changed since RCPT: the others are still delivered.
                log.error("<{recipient}>: {error}; not delivered", recipient=recipient, error=str(e))
                continue
            if targets is None:
                if isLocal(recipient):
                    # Removed between RCPT and DATA: nothing to deliver to.
                    log.warn("<{recipient}> vanished before delivery; not delivered", recipient=recipient)
                else:
                    remote[recipient] = None
                continue
            localDomains[splitAddress(recipient)[1]] = True
            for target in targets:
                if not isLocal(target):
                    if target not in remote:
                        remote[target] = None
                        if target != recipient:
                            forwarded.setdefault(recipient, []).append(target)
                elif isSafeMailboxName(target):
                    local[target] = None
                else:
                    log.warn("<{target}>: mailbox name cannot be stored; not delivered", target=target)
        return list(local), list(remote), forwarded

    def receive(self, returnPath: str, recipients: Sequence[str]) -> IMessageReceiver:
        local, remote, forwarded = self._route(recipients)
        receivers: List[IMessageReceiver] = []
        if local:
            receivers.append(self.mailStore.receive(returnPath, local))
        if (remote or forwarded) and self.queue is None:
            raise SMTPReply(451, "4.3.0 Relaying is not available right now")
        targets = [t for addresses in forwarded.values() for t in addresses]
        inTrace = set(targets)
        plain = [r for r in remote if r not in inTrace]
        if plain:
            assert self.queue is not None
            receivers.append(self.queue.receive(returnPath, plain))
        if forwarded:
            assert self.queue is not None
            # Its own queue entry, so that the other remote recipients do
            # not learn the aliases.
            trace = b"".join(b"Delivered-To: " + alias.encode("utf-8") + b"\r\n" for alias in forwarded)
            receivers.append(PrefixedReceiver(self.queue.receive(returnPath, targets), trace))
        if not receivers:
            # Every alias target vanished between RCPT and DATA.
            raise SMTPReply(451, "4.3.0 No recipient is deliverable any more; try again later")
        return receivers[0] if len(receivers) == 1 else FanOutReceiver(receivers)


@implementer(IMessageReceiver)
class PrefixedReceiver:
    """
    Passes a message on with some header fields written first.
    """

    def __init__(self, receiver: IMessageReceiver, prefix: bytes) -> None:
        self._receiver = receiver
        self._prefix = prefix

    def write(self, data: bytes) -> None:
        if self._prefix:
            data, self._prefix = self._prefix + data, b""
        self._receiver.write(data)

    def finish(self) -> Deferred:
        if self._prefix:
            self.write(b"")
        return self._receiver.finish()

    def abort(self) -> None:
        self._receiver.abort()


@implementer(IMessageReceiver)
class FanOutReceiver:
    """
    Feeds one message to several receivers (local Maildirs and the queue).
    The message is acknowledged only when every part is durable; if one part
    fails the sender retries, so a recipient may get a second copy rather
    than none (at-least-once, as every MTA does).
    """

    def __init__(self, receivers: Sequence[IMessageReceiver]) -> None:
        self._receivers = list(receivers)

    def write(self, data: bytes) -> None:
        for receiver in self._receivers:
            receiver.write(data)

    def finish(self) -> Deferred:
        results = DeferredList([r.finish() for r in self._receivers], consumeErrors=True)

        def combine(outcomes: list) -> str:
            for ok, value in outcomes:
                if not ok:
                    assert isinstance(value, Failure)
                    value.raiseException()
            return "+".join(value for _, value in outcomes)

        return results.addCallback(combine)

    def abort(self) -> None:
        for receiver in self._receivers:
            receiver.abort()

    def fileInto(self, folder: str) -> None:
        """Local copies go to C{folder} (see L{MaildirReceiver.fileInto}); queued ones are unchanged."""
        for receiver in self._receivers:
            fileInto = getattr(receiver, "fileInto", None)
            if fileInto is not None:
                fileInto(folder)
