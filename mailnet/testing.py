# -*- test-case-name: tests.test_testing -*-
"""
Public fakes for testing code that uses mailnet's interfaces.

Everything here keeps its state in memory and answers synchronously, so
tests can drive protocols with L{twisted.internet.testing.StringTransport}
and L{twisted.internet.task.Clock}.
"""

import io
import itertools
import os
import tempfile
import time
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mailnet.address import canonicalAddress, lookAlike, mailboxAddress, normalizeAddress, normalizeDomain, splitAddress
from mailnet.errors import (
    BadAddress,
    BadFolderName,
    CannotDeleteFolder,
    DomainExists,
    LookAlikeAddress,
    FolderExists,
    MailboxInUse,
    MessageGone,
    NoSuchFolder,
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
    IFolder,
    IMailAccount,
    IMailbox,
    IMessageReceiver,
    ISender,
)
from mailnet.store.accounts import expandAliases
from mailnet.store.folders import (
    MAX_FOLDERS,
    LineEndings,
    applyFlags,
    folderListing,
    isBelow,
    normalizeFlags,
    normalizeName,
    parents,
)
from mailnet.store.records import DEFAULT_FOLDERS, FolderState, FolderStatus, MessageRecord

MAX_ALIAS_DEPTH = 10


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


_uidValidities = itertools.count(int(time.time()))


class _MemoryFolderData:
    """One folder's content in a L{MemoryMailAccount}."""

    def __init__(self, name: str, specialUse: Optional[str]) -> None:
        self.name = name
        self.specialUse = specialUse
        self.uidValidity = next(_uidValidities) % (2**32 - 1) + 1
        self.uidNext = 1
        self.highestModSeq = 1
        self.firstRecent = 1
        # uid -> (record, stored bytes), in UID order
        self.messages: Dict[int, Tuple[MessageRecord, bytes]] = {}
        self.parsed: Dict[int, object] = {}
        self.deleted = False


@implementer(IMessageReceiver)
class _MemoryAppend:
    def __init__(self, account: "MemoryMailAccount", name: str, flags: FrozenSet[str], internalDate: Optional[float]) -> None:
        self._account = account
        self._name = name
        self._flags = flags
        self._internalDate = internalDate
        self._lines = LineEndings()
        self._chunks: List[bytes] = []
        self._done = False

    def write(self, data: bytes) -> None:
        assert not self._done, "write after finish or abort"
        self._chunks.append(self._lines.feed(data))

    def finish(self) -> Deferred:
        assert not self._done, "finish twice"
        self._done = True
        self._chunks.append(self._lines.flush())
        try:
            data = self._account._folder(self._name)
        except NoSuchFolder as e:
            return fail(e)
        except BadFolderName:
            return fail(NoSuchFolder(name=self._name))
        uid = self._account._add(data, b"".join(self._chunks), self._flags, self._internalDate)
        return succeed((data.uidValidity, uid))

    def abort(self) -> None:
        self._done = True
        self._chunks = []


@implementer(IMailAccount)
class MemoryMailAccount:
    """
    An L{IMailAccount} in memory, answering synchronously: the reference
    the Maildir++ account (L{mailnet.store.folders.MaildirAccount}) is
    tested against, and a fake to drive the IMAP server with.

    Messages are kept in their stored form (LF line endings), as APPEND
    leaves them; L{deliver} adds one as SMTP would.

    @param parse: parses a stored message from a binary file
        (L{mailnet.mime.parseMessage} by default).
    @param clock: gives the time for internal dates (L{time.time} if not
        given).
    """

    def __init__(self, address: str = "alice@example.test", parse: Optional[Callable] = None, clock=None) -> None:
        self.address = address
        self._parse = parse
        self._now = clock.seconds if clock is not None else time.time
        self._folders: Dict[str, _MemoryFolderData] = {}
        self._subscribed: Dict[str, None] = {}
        self._open: Dict[str, "MemoryFolder"] = {}
        self._keys = itertools.count(1)
        self._initialised = False

    def _initialise(self) -> None:
        if self._initialised:
            return
        self._initialised = True
        if any(name in self._folders for name, _ in DEFAULT_FOLDERS):
            return
        for name, use in DEFAULT_FOLDERS:
            self._folders.setdefault(name, _MemoryFolderData(name, use))
            self._subscribed[name] = None

    def _folder(self, name: str) -> _MemoryFolderData:
        self._initialise()
        name = normalizeName(name)
        data = self._folders.get(name)
        if data is None:
            raise NoSuchFolder(name=name)
        return data

    def _notify(self, data: _MemoryFolderData) -> None:
        folder = self._open.get(data.name)
        if folder is not None and folder._data is data:
            folder._notify()

    def _add(self, data: _MemoryFolderData, stored: bytes, flags: Iterable[str], internalDate: Optional[float]) -> int:
        uid = data.uidNext
        data.uidNext += 1
        data.highestModSeq += 1
        lines = stored.count(b"\n")
        record = MessageRecord(
            uid=uid,
            flags=normalizeFlags(flags),
            modSeq=data.highestModSeq,
            internalDate=self._now() if internalDate is None else float(internalDate),
            size=len(stored) + lines,
            key="mem%d" % (next(self._keys),),
        )
        data.messages[uid] = (record, stored)
        self._notify(data)
        return uid

    def deliver(self, message: bytes, name: str = "INBOX", flags: Iterable[str] = (), internalDate: Optional[float] = None) -> int:
        """
        Add a message at once, as a delivery would (line endings normalised
        as for APPEND); watchers are told.

        @return: its UID.
        """
        lines = LineEndings()
        stored = lines.feed(message) + lines.flush()
        return self._add(self._folder(name), stored, flags, internalDate)

    def _call(self, f: Callable, *args) -> Deferred:
        try:
            return succeed(f(*args))
        except Exception as e:
            return fail(e)

    def listFolders(self) -> Deferred:
        def listing():
            self._initialise()
            return folderListing(((n, d.specialUse) for n, d in self._folders.items()), self._subscribed)

        return self._call(listing)

    def createFolder(self, name: str, specialUse: Optional[str] = None) -> Deferred:
        def create():
            self._initialise()
            folder = normalizeName(name[:-1] if name.endswith(".") else name)
            if folder in self._folders:
                raise FolderExists(name=folder)
            missing = [p for p in parents(folder) if p not in self._folders]
            if len(self._folders) + len(missing) + 1 > MAX_FOLDERS:
                raise BadFolderName(name=folder, reason="an account holds at most %d folders" % (MAX_FOLDERS,))
            for parent in parents(folder):
                self._folders.setdefault(parent, _MemoryFolderData(parent, None))
            self._folders[folder] = _MemoryFolderData(folder, specialUse)
            self._subscribed[folder] = None

        return self._call(create)

    def deleteFolder(self, name: str) -> Deferred:
        def delete():
            data = self._folder(name)
            if data.name == "INBOX":
                raise CannotDeleteFolder(name=name, reason="the inbox is always there")
            del self._folders[data.name]
            self._subscribed.pop(data.name, None)
            data.deleted = True
            self._notify(data)

        return self._call(delete)

    def renameFolder(self, oldName: str, newName: str) -> Deferred:
        def rename():
            data = self._folder(oldName)
            new = normalizeName(newName)
            if new in self._folders:
                raise FolderExists(name=new)
            if new == data.name or isBelow(new, data.name):
                raise BadFolderName(name=new, reason="a folder cannot move below itself")
            if data.name == "INBOX":
                target = _MemoryFolderData(new, None)
                target.messages, data.messages = data.messages, {}
                target.uidNext = max(target.messages, default=0) + 1
                data.highestModSeq += 1
                for parent in parents(new):
                    self._folders.setdefault(parent, _MemoryFolderData(parent, None))
                self._folders[new] = target
                self._notify(data)
                return
            moving = [n for n in self._folders if n == data.name or isBelow(n, data.name)]
            for parent in parents(new):
                self._folders.setdefault(parent, _MemoryFolderData(parent, None))
            for old in moving:
                folder = self._folders.pop(old)
                folder.name = new + old[len(data.name) :]
                if self._subscribed.pop(old, 0) is None:
                    self._subscribed[folder.name] = None
                self._folders[folder.name] = folder
                opened = self._open.pop(old, None)
                if opened is not None:
                    opened.name = folder.name
                    self._open[folder.name] = opened

        return self._call(rename)

    def setSubscribed(self, name: str, subscribed: bool) -> Deferred:
        def subscribe():
            self._initialise()
            folder = normalizeName(name)
            if subscribed:
                if folder not in self._subscribed and len(self._subscribed) >= MAX_FOLDERS:
                    raise BadFolderName(name=folder, reason="at most %d names can be subscribed" % (MAX_FOLDERS,))
                self._subscribed[folder] = None
            else:
                self._subscribed.pop(folder, None)

        return self._call(subscribe)

    def status(self, name: str) -> Deferred:
        def status():
            data = self._folder(name)
            records = [record for record, _ in data.messages.values()]
            return FolderStatus(
                messages=len(records),
                unseen=sum(1 for r in records if "\\Seen" not in r.flags),
                uidNext=data.uidNext,
                uidValidity=data.uidValidity,
                size=sum(r.size for r in records),
                highestModSeq=data.highestModSeq,
                deleted=sum(1 for r in records if "\\Deleted" in r.flags),
                recent=sum(1 for r in records if r.uid >= data.firstRecent),
            )

        return self._call(status)

    def openFolder(self, name: str) -> Deferred:
        def openFolder():
            data = self._folder(name)
            folder = self._open.get(data.name)
            if folder is None or folder._data is not data:
                folder = self._open[data.name] = MemoryFolder(self, data)
            folder._refs += 1
            return folder

        return self._call(openFolder)

    def append(self, name: str, flags: FrozenSet[str], internalDate: Optional[float]) -> _MemoryAppend:
        return _MemoryAppend(self, name, frozenset(flags), internalDate)

    def openFolders(self) -> List[str]:
        """The names of the folders some session has open (for tests of C{close})."""
        return sorted(self._open)


@implementer(IFolder)
class MemoryFolder:
    """The L{IFolder} of a L{MemoryMailAccount}: shared by its sessions."""

    def __init__(self, account: MemoryMailAccount, data: _MemoryFolderData) -> None:
        self._account = account
        self._data = data
        self.name = data.name
        self._refs = 0
        self._watchers: List[Callable[[], None]] = []

    @property
    def uidValidity(self) -> int:
        return self._data.uidValidity

    def _notify(self) -> None:
        for callback in list(self._watchers):
            callback()

    def _checked(self) -> _MemoryFolderData:
        if self._data.deleted:
            raise NoSuchFolder(name=self.name)
        return self._data

    def sync(self) -> Deferred:
        def state():
            data = self._checked()
            return FolderState(data.uidValidity, data.uidNext, data.highestModSeq, tuple(r for r, _ in data.messages.values()))

        return self._account._call(state)

    def claimRecent(self) -> Deferred:
        data = self._data
        recent = frozenset(uid for uid in data.messages if uid >= data.firstRecent)
        data.firstRecent = data.uidNext
        return succeed(recent)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(callback)

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return stop

    def setFlags(self, uids: Iterable[int], flags: Iterable[str], mode: str, unchangedSince: Optional[int] = None) -> Deferred:
        def store():
            data = self._checked()
            changed, refused = [], []
            # One mod-sequence for every message this call changes, as on disk.
            modSeq = data.highestModSeq + 1
            for uid in sorted(set(uids)):
                entry = data.messages.get(uid)
                if entry is None:
                    continue
                record, stored = entry
                if unchangedSince is not None and record.modSeq > unchangedSince:
                    refused.append(uid)
                    continue
                new = applyFlags(record.flags, frozenset(flags), mode)
                if new == record.flags:
                    continue
                record = MessageRecord(record.uid, new, modSeq, record.internalDate, record.size, record.key)
                data.messages[uid] = (record, stored)
                changed.append(record)
            if changed:
                data.highestModSeq = modSeq
                self._notify()
            return changed, refused

        return self._account._call(store)

    def expunge(self, uids: Optional[Iterable[int]] = None) -> Deferred:
        def expunge():
            data = self._checked()
            among = None if uids is None else set(uids)
            gone = [uid for uid, (r, _) in data.messages.items() if "\\Deleted" in r.flags and (among is None or uid in among)]
            self._remove(data, gone)
            return gone

        return self._account._call(expunge)

    def _remove(self, data: _MemoryFolderData, gone: List[int]) -> None:
        for uid in gone:
            del data.messages[uid]
            data.parsed.pop(uid, None)
        if gone:
            data.highestModSeq += 1
            self._notify()

    def copy(self, uids: Iterable[int], target: str) -> Deferred:
        def copy():
            data = self._checked()
            into = self._account._folder(target)
            pairs = []
            for uid in sorted(set(uids)):
                entry = data.messages.get(uid)
                if entry is not None:
                    record, stored = entry
                    pairs.append((uid, self._account._add(into, stored, record.flags, record.internalDate)))
            return into.uidValidity, pairs

        return self._account._call(copy)

    def move(self, uids: Iterable[int], target: str) -> Deferred:
        def moved(result):
            self._remove(self._data, [source for source, _ in result[1]])
            return result

        return self.copy(uids, target).addCallback(moved)

    def parsed(self, uids: Iterable[int]) -> Deferred:
        def parse():
            from mailnet import mime

            data = self._checked()
            result = {}
            for uid in uids:
                entry = data.messages.get(uid)
                if entry is None:
                    continue
                if uid not in data.parsed:
                    data.parsed[uid] = (self._account._parse or mime.parseMessage)(io.BytesIO(entry[1]))
                result[uid] = data.parsed[uid]
            return result

        return self._account._call(parse)

    def openMessage(self, uid: int) -> Deferred:
        entry = self._data.messages.get(uid)
        if entry is None:
            return fail(MessageGone(uid=str(uid)))
        return succeed(io.BytesIO(entry[1]))

    def close(self) -> None:
        self._refs -= 1
        if self._refs <= 0 and self._account._open.get(self.name) is self:
            del self._account._open[self.name]
