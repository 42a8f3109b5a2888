# -*- test-case-name: tests.test_testing -*-
"""
Public fakes for testing code that uses mailnet's interfaces.

Everything here keeps its state in memory and answers synchronously, so
tests can drive protocols with L{twisted.internet.testing.StringTransport}
and L{twisted.internet.task.Clock}.
"""

import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mailnet.address import canonicalAddress, lookAlike, mailboxAddress, normalizeAddress, normalizeDomain, splitAddress
from mailnet.errors import (
    BadAddress,
    DomainExists,
    LookAlikeAddress,
    MailboxInUse,
    SMTPReply,
    UnknownAlias,
    UnknownDomain,
    UnknownUser,
    UserExists,
)
from mailnet.interfaces import (
    IAccountStore,
    IAuthenticator,
    IDeliveryAgent,
    IMailbox,
    IMessageReceiver,
    ISender,
)
from mailnet.store.accounts import expandAliases


@implementer(IAccountStore)
class MemoryAccountStore:
    """
    An L{IAccountStore} in a few dicts: the reference the SQLite store is
    tested against.
    """

    def __init__(self) -> None:
        self._domains: Dict[str, None] = {}
        self._users: Dict[str, str] = {}
        self._aliases: Dict[str, Tuple[str, ...]] = {}

    def domains(self) -> List[str]:
        return sorted(self._domains)

    def isLocalDomain(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def addDomain(self, domain: str) -> None:
        domain = normalizeDomain(domain)
        if domain in self._domains:
            raise DomainExists(domain=domain)
        self._domains[domain] = None

    def removeDomain(self, domain: str) -> None:
        domain = domain.lower()
        if domain not in self._domains:
            raise UnknownDomain(domain=domain)
        del self._domains[domain]
        for table in (self._users, self._aliases):
            for address in [a for a in table if splitAddress(a)[1] == domain]:
                del table[address]

    def users(self, domain: Optional[str] = None) -> List[str]:
        return sorted(a for a in self._users if domain is None or splitAddress(a)[1] == domain.lower())

    def _localAddress(self, address: str) -> str:
        address = normalizeAddress(address, allowUTF8=True)
        domain = splitAddress(address)[1]
        if domain not in self._domains:
            raise UnknownDomain(domain=domain)
        return address

    def addUser(self, address: str, passwordHash: str) -> None:
        address = self._localAddress(mailboxAddress(address))
        if address in self._users or address in self._aliases:
            raise UserExists(address=address)
        self._refuseLookAlike(address)
        self._users[address] = passwordHash

    def _refuseLookAlike(self, address: str) -> None:
        domain = splitAddress(address)[1]
        existing = lookAlike(address, (a for a in list(self._users) + list(self._aliases) if splitAddress(a)[1] == domain))
        if existing is not None:
            raise LookAlikeAddress(address=address, existing=existing)

    def setPasswordHash(self, address: str, passwordHash: str) -> None:
        address = canonicalAddress(address)
        if address not in self._users:
            raise UnknownUser(address=address)
        self._users[address] = passwordHash

    def removeUser(self, address: str) -> None:
        address = canonicalAddress(address)
        if address not in self._users:
            raise UnknownUser(address=address)
        del self._users[address]

    def passwordHash(self, address: str) -> Optional[str]:
        return self._users.get(canonicalAddress(address))

    def addAlias(self, alias: str, targets: Sequence[str]) -> None:
        alias = alias.lower()
        if alias.startswith("@"):
            domain = normalizeDomain(alias[1:])
            if domain not in self._domains:
                raise UnknownDomain(domain=domain)
        else:
            alias = self._localAddress(alias)
            if alias in self._users:
                raise UserExists(address=alias)
            self._refuseLookAlike(alias)
        normalised = tuple(dict.fromkeys(normalizeAddress(t, allowUTF8=True) for t in targets))
        if not normalised:
            raise BadAddress(address=alias, reason="an alias needs at least one target")
        self._aliases[alias] = normalised

    def removeAlias(self, alias: str) -> None:
        alias = canonicalAddress(alias)
        if alias not in self._aliases:
            raise UnknownAlias(alias=alias)
        del self._aliases[alias]

    def aliases(self) -> Dict[str, Tuple[str, ...]]:
        return dict(sorted(self._aliases.items()))

    def aliasTargets(self, alias: str) -> Optional[Tuple[str, ...]]:
        return self._aliases.get(canonicalAddress(alias))

    def resolve(self, address: str) -> Optional[List[str]]:
        users = self._users
        return expandAliases(
            address, users.__contains__, self.isLocalDomain, self._aliases.get, lambda addresses: [a for a in addresses if a in users]
        )


@implementer(IMessageReceiver)
class RecordingReceiver:
    """
    An L{IMessageReceiver} that keeps the bytes; C{finish} answers with
    C{result} (a message id, or an exception to fail with).
    """

    def __init__(self, returnPath: str = "", recipients: Sequence[str] = (), result: object = "test-id") -> None:
        self.returnPath = returnPath
        self.recipients = list(recipients)
        self.chunks: List[bytes] = []
        self.finished = False
        self.aborted = False
        self.result = result

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        assert not (self.finished or self.aborted)
        self.chunks.append(data)

    def finish(self) -> Deferred:
        self.finished = True
        if isinstance(self.result, BaseException):
            return fail(self.result)
        return succeed(self.result)

    def abort(self) -> None:
        self.aborted = True


@implementer(IDeliveryAgent)
class FakeDeliveryAgent:
    """
    Accepts recipients in C{localDomains} that are in C{users}, relays
    anything for authenticated senders, and records every message.
    """

    def __init__(self, localDomains: Sequence[str] = ("example.test",), users: Sequence[str] = ("alice@example.test", "bob@example.test")) -> None:
        self.localDomains = set(localDomains)
        self.users = set(users)
        self.messages: List[RecordingReceiver] = []
        self.result: object = "test-id"

    def checkRecipient(self, address: str, sender: Optional[ISender]) -> None:
        if splitAddress(address)[1] in self.localDomains:
            # RFC 5321 §4.5.1: postmaster exists in every local domain.
            if address not in self.users and splitAddress(address)[0] != "postmaster":
                raise SMTPReply(550, "5.1.1 <%s>: no such user here" % (address,))
        elif sender is None:
            raise SMTPReply(554, "5.7.1 <%s>: relay access denied" % (address,))

    def postmaster(self) -> str:
        return "postmaster@" + sorted(self.localDomains)[0]

    def receive(self, returnPath: str, recipients: Sequence[str]) -> RecordingReceiver:
        receiver = RecordingReceiver(returnPath, recipients, self.result)
        self.messages.append(receiver)
        return receiver


@implementer(ISender)
class FakeSender:
    def __init__(self, address: str, aliases: Sequence[str] = ()) -> None:
        self.address = address
        self.aliases = set(aliases)

    def maySendAs(self, address: str) -> bool:
        return address.lower() == self.address or address.lower() in self.aliases


@implementer(IMailbox)
class FakeMailbox:
    def __init__(self, address: str, maildir: object) -> None:
        self.address = address
        self.maildir = maildir


@implementer(IAuthenticator)
class FakeAuthenticator:
    """
    Logs in C{passwords} (address -> password) at once; failures fail at
    once too (no delay), and are counted in C{failures}.  POP3 avatars get
    C{maildirs[address]}.  A mailbox is held until its logout is called.
    """

    def __init__(self, passwords: Dict[str, str], maildirs: Optional[Dict[str, object]] = None) -> None:
        self.passwords = passwords
        self.maildirs = maildirs or {}
        self.failures: List[Tuple[str, str]] = []
        self.held: Dict[str, int] = {}

    def login(self, credentials, peerHost: str, interface) -> Deferred:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        address = username.lower()
        password = self.passwords.get(address)
        if password is None or not credentials.checkPassword(password.encode("utf-8")):
            self.failures.append((address, peerHost))
            return fail(UnauthorizedLogin("bad credentials"))
        if interface is ISender:
            return succeed((ISender, FakeSender(address), lambda: None))
        if self.held.get(address):
            return fail(MailboxInUse(address=address))
        self.held[address] = 1

        def logout() -> None:
            self.held.pop(address, None)

        return succeed((IMailbox, FakeMailbox(address, self.maildirs.get(address)), logout))


def makeCertificate(directory: Optional[str] = None, hostname: str = "localhost") -> Tuple[str, str]:
    """
    Make a throwaway self-signed certificate for C{hostname} (also valid
    for C{localhost} and 127.0.0.1).

    @return: C{(certPath, keyPath)}.
    """
    from mailnet.tls import generateSelfSigned

    directory = directory or tempfile.mkdtemp(prefix="mailnet-cert-")
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    generateSelfSigned(hostname, cert, key, days=2)
    return cert, key
