# -*- test-case-name: tests.test_delivery -*-
"""
What happens to mail the SMTP server accepts: the recipient policy (local
users, aliases, relay only for authenticated senders) and the routing of an
accepted message to local Maildirs and/or the relay queue.
"""

from typing import Dict, List, Optional, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

from mailnet.address import splitAddress
from mailnet.errors import SMTPReply
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

    def __init__(self, accounts: IAccountStore, mailStore: IMailStore, queue: Optional[IRelayQueue]) -> None:
        self.accounts = accounts
        self.mailStore = mailStore
        self.queue = queue

    def checkRecipient(self, address: str, sender: Optional[ISender]) -> None:
        # resolve() answers None for other domains too, so the common case
        # (a deliverable local address) costs one look-up.
        if self.accounts.resolve(address) is not None:
            return
        if self.accounts.isLocalDomain(splitAddress(address)[1]):
            # RFC 3463 §3.2: X.1.1 bad destination mailbox address.
            raise SMTPReply(550, "5.1.1 <%s>: Recipient address rejected: no such user here" % (address,))
        if sender is None:
            # Never an open relay: RFC 5321 §3.6.2, RFC 3463 X.7.1.
            raise SMTPReply(554, "5.7.1 <%s>: Relay access denied" % (address,))
        if self.queue is None:
            raise SMTPReply(451, "4.3.0 <%s>: Relaying is not available right now" % (address,))

    def route(self, recipients: Sequence[str]) -> "tuple[List[str], List[str]]":
        """
        Split envelope recipients into local mailboxes and remote addresses,
        expanding aliases; duplicates are delivered once.
        """
        local: Dict[str, None] = {}
        remote: Dict[str, None] = {}
        localDomains: Dict[str, bool] = {}

        def isLocal(address: str) -> bool:
            domain = splitAddress(address)[1]
            if domain not in localDomains:
                localDomains[domain] = self.accounts.isLocalDomain(domain)
            return localDomains[domain]

        for recipient in recipients:
            targets = self.accounts.resolve(recipient)
            if targets is None:
                if isLocal(recipient):
                    # Removed between RCPT and DATA: nothing to deliver to.
                    log.warn("<{recipient}> vanished before delivery; not delivered", recipient=recipient)
                else:
                    remote[recipient] = None
                continue
            localDomains[splitAddress(recipient)[1]] = True
            for target in targets:
                (local if isLocal(target) else remote)[target] = None
        return list(local), list(remote)

    def receive(self, returnPath: str, recipients: Sequence[str]) -> IMessageReceiver:
        local, remote = self.route(recipients)
        receivers: List[IMessageReceiver] = []
        if local:
            receivers.append(self.mailStore.receive(returnPath, local))
        if remote:
            if self.queue is None:
                raise SMTPReply(451, "4.3.0 Relaying is not available right now")
            receivers.append(self.queue.receive(returnPath, remote))
        if not receivers:
            # Every alias target vanished between RCPT and DATA.
            raise SMTPReply(451, "4.3.0 No recipient is deliverable any more; try again later")
        return receivers[0] if len(receivers) == 1 else FanOutReceiver(receivers)


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
