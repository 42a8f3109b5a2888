# -*- test-case-name: tests.test_admin -*-
"""
C{mailnet-admin}: manage domains, users, aliases and the relay queue, and
check a configuration before starting the daemon.

It works on the data dir directly (the account store, the queue
directory), so it needs no running daemon, and a running daemon sees its
changes at once (see L{mailnet.store.accounts}).

The data dir comes from C{--data-dir}, else from C{[server] data_dir} of
the C{--config} file, else C{./mailnet-data}: the same rule as the daemon.
It must exist (the daemon creates it on its first start); mailnet-admin
never creates it, so that a mistyped path is an error rather than a new,
empty set of accounts.
"""

import argparse
import datetime
import errno
import os
import shutil
import socket
import sys
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from mailnet.address import (
    canonicalAddress,
    foldedAddress,
    isSafeMailboxName,
    lookAlike,
    mailboxAddress,
    normalizeAddress,
    normalizeDomain,
    splitAddress,
)
from mailnet.cli._common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    dispatch,
    endQuietly,
    parseArguments,
    readNewPassword,
)
from mailnet.config import LISTENERS, Config, loadConfig
from mailnet.errors import (
    ConfigError,
    DomainExists,
    LookAlikeAddress,
    MailnetError,
    UnknownDomain,
    UnknownUser,
    UserExists,
)
from mailnet.escape import escape
from mailnet.passwords import hashPassword
from mailnet.store.accounts import SQLiteAccountStore, openAccountStore

PROGRAM = "mailnet-admin"

#: Warn when the certificate expires sooner than this.
CERTIFICATE_WARNING_DAYS = 14


class DataDirMissing(MailnetError):
    """the data directory {path} does not exist; create it (the daemon does on its first start) or pass --data-dir"""


class DataDirNotADirectory(MailnetError):
    """the data directory {path} is not a directory; pass --data-dir"""


class DataDirNotWritable(MailnetError):
    """the data directory {path} is not writable by this user; run mailnet-admin as the user the daemon runs as, or pass --data-dir"""


class QueueUnavailable(MailnetError):
    """the relay queue module is not available in this installation ({reason})"""


class Admin:
    """
    The state of one mailnet-admin run: the parsed arguments, the streams,
    and (opened on first use) the configuration and the account store.
    """

    def __init__(self, args: argparse.Namespace, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> None:
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._config: Optional[Config] = None
        self._store: Optional[SQLiteAccountStore] = None

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        self.stderr.write("%s: %s\n" % (PROGRAM, text))

    @property
    def config(self) -> Config:
        """
        @raise ConfigError: the file is missing or bad.
        """
        if self._config is None:
            overrides: Dict[str, Any] = {"server.data_dir": self.args.data_dir}
            if self.args.command != "check":
                # Only check uses the host name; don't wait for a DNS
                # look-up of the machine's FQDN otherwise.
                overrides["server.hostname"] = "localhost"
            self._config = loadConfig(self.args.config, overrides)
        return self._config

    @property
    def dataDir(self) -> str:
        return self.config.data_dir

    def checkDataDir(self) -> str:
        """
        @return: the data dir, after making sure it can be used.
        @raise DataDirMissing: it does not exist.
        @raise DataDirNotWritable: it cannot be written (SQLite needs that
            even for reading a WAL database).
        """
        path = self.dataDir
        if not os.path.exists(path):
            raise DataDirMissing(path=path)
        if not os.path.isdir(path):
            raise DataDirNotADirectory(path=path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise DataDirNotWritable(path=path)
        return path

    @property
    def store(self) -> SQLiteAccountStore:
        """
        The account store, with the configured domains in it (the daemon
        adds them at start; so does every admin command).
        """
        if self._store is None:
            store = openAccountStore(self.checkDataDir())
            for domain in self.config.domains:
                if not store.isLocalDomain(domain):
                    try:
                        store.addDomain(domain)
                    except DomainExists:  # the daemon was quicker
                        pass
            self._store = store
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def maildirPath(self, address: str) -> str:
        local, domain = splitAddress(address)
        return os.path.join(self.dataDir, "mail", domain, local)

    def queueDir(self) -> str:
        return os.path.join(self.checkDataDir(), "queue")


# --- domain ---------------------------------------------------------------


def domainAdd(admin: Admin) -> None:
    domain = normalizeDomain(admin.args.name)
    admin.store.addDomain(domain)
    admin.say("Added domain %s." % (domain,))
    admin.say("Run 'mailnet-admin check' for the DNS records it needs.")


def domainDel(admin: Admin) -> None:
    domain = admin.args.name.lower()
    store = admin.store
    if not store.isLocalDomain(domain):
        raise UnknownDomain(domain=domain)
    users = store.users(domain)
    aliases = [a for a in store.aliases() if splitAddress(a)[1] == domain]
    store.removeDomain(domain)
    admin.say(
        "Removed domain %s with %d user%s and %d alias%s (the Maildirs stay on disk in %s)."
        % (
            domain,
            len(users),
            "" if len(users) == 1 else "s",
            len(aliases),
            "" if len(aliases) == 1 else "es",
            os.path.join(admin.dataDir, "mail", domain),
        )
    )
    if domain in admin.config.domains:
        admin.note(
            "note: %s is listed in [server] domain of %s; it comes back (empty) at the next use unless you remove it there"
            % (domain, admin.args.config)
        )


def domainList(admin: Admin) -> None:
    for domain in admin.store.domains():
        admin.say(domain)


# --- user -----------------------------------------------------------------


def userAdd(admin: Admin) -> None:
    store = admin.store
    # The store's own validation (a name that cannot be a Maildir is
    # refused here, not at the first delivery).
    address = mailboxAddress(admin.args.address)
    # Refuse before asking for a password that would be thrown away.
    domain = splitAddress(address)[1]
    if not store.isLocalDomain(domain):
        raise UnknownDomain(domain=domain)
    aliases = store.aliases()
    if store.passwordHash(address) is not None or address in aliases:
        raise UserExists(address=address)
    existing = lookAlike(address, store.users(domain) + [a for a in aliases if a.endswith("@" + domain)])
    if existing is not None:
        raise LookAlikeAddress(address=address, existing=existing)
    password = readNewPassword(address, admin.stdin, admin.stderr, admin.args.password_stdin)
    oldMail = setAsideOldMailbox(admin, address)
    store.addUser(address, hashPassword(password))
    admin.say("Added user %s." % (address,))
    if oldMail is not None:
        admin.note("warning: a mailbox of an earlier %s was still there; moved it to %s (the new user does not get its mail)"
                   % (address, oldMail))


def userPasswd(admin: Admin) -> None:
    store = admin.store
    address = canonicalAddress(admin.args.address)
    if store.passwordHash(address) is None:
        raise UnknownUser(address=address)
    password = readNewPassword(address, admin.stdin, admin.stderr, admin.args.password_stdin)
    store.setPasswordHash(address, hashPassword(password))
    admin.say("Changed the password of %s." % (address,))


def _messageCount(maildir: str) -> int:
    return sum(len(_listdir(os.path.join(maildir, sub))) for sub in ("new", "cur"))


def _listdir(path: str) -> List[str]:
    try:
        return [n for n in os.listdir(path) if not n.startswith(".")]
    except OSError:
        return []


def userDel(admin: Admin) -> None:
    address = canonicalAddress(admin.args.address)
    admin.store.removeUser(address)
    maildir = admin.maildirPath(address)
    if not os.path.isdir(maildir):
        admin.say("Removed user %s (there was no mailbox)." % (address,))
    elif admin.args.keep_mail:
        admin.say(
            "Removed user %s; kept the mailbox (%d messages) in %s.  A new user of this name will not get it: "
            "'user add' moves it aside." % (address, _messageCount(maildir), maildir)
        )
    else:
        count = _messageCount(maildir)
        shutil.rmtree(maildir)
        admin.say("Removed user %s and the mailbox with its %d message%s." % (address, count, "" if count == 1 else "s"))


def setAsideOldMailbox(admin: Admin, address: str) -> Optional[str]:
    """
    A mailbox left by an earlier user of C{address} (C{user del
    --keep-mail}) must not become the new user's: move it to
    C{DATA_DIR/removed-mail/DOMAIN/LOCAL-TIMESTAMP}, outside the mail tree.

    @return: where it went, or L{None} when there was none.
    """
    maildir = admin.maildirPath(address)
    if not os.path.isdir(maildir):
        return None
    local, domain = splitAddress(address)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = os.path.join(admin.dataDir, "removed-mail", domain, "%s-%s" % (local, stamp))
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    os.rename(maildir, target)
    return target


def userList(admin: Admin) -> None:
    store = admin.store
    domain = admin.args.domain
    if domain is not None:
        domain = domain.lower().lstrip("@")
        if not store.isLocalDomain(domain):
            raise UnknownDomain(domain=domain)
    # Users with a quota are shown with their usage (--usage: every user);
    # the address stays the first word of each line.
    hasQuota = _hasQuota(admin)
    for address in store.users(domain):
        admin.say(_quotaLine(admin, address) if getattr(admin.args, "usage", False) or hasQuota(address) else address)


# --- quotas (issue 16; mailnet.quota) ------------------------------------------


class BadQuota(MailnetError):
    """{value!r} is not a quota: {problem}."""


def _parseQuota(text: str):
    from mailnet.quota import parseSize

    try:
        return parseSize(text)
    except ValueError as e:
        raise BadQuota(value=text, problem=str(e))


def _hasQuota(admin: Admin) -> Callable[[str], bool]:
    from mailnet.quota import QuotaFile

    data = QuotaFile(admin.dataDir).read()
    return lambda address: address in data["users"] or address.rsplit("@", 1)[-1] in data["domains"]


def _quotaLine(admin: Admin, address: str) -> str:
    from mailnet.quota import QuotaFile, formatSize, mailboxUsage

    data = QuotaFile(admin.dataDir).read()
    entry = data["users"].get(address) or data["domains"].get(address.rsplit("@", 1)[-1]) or {}
    octets, count = mailboxUsage(admin.maildirPath(address))
    limit = entry.get("octets")
    used = "%s" % (formatSize(octets),) + (" (%d%%)" % (100 * octets // limit,) if limit else "")
    maxMessages = entry.get("messages")
    messages = "%d message(s)" % (count,) + (" of %d" % (maxMessages,) if maxMessages else "")
    origin = "" if not entry else " (user)" if address in data["users"] else " (domain default)"
    return "%s  %s of %s%s, %s" % (address, used, formatSize(limit), origin, messages)


def userQuota(admin: Admin) -> None:
    from mailnet.quota import Limit, QuotaFile

    address = normalizeAddress(admin.args.address, allowUTF8=True)
    if address not in admin.store.users(address.rsplit("@", 1)[-1]):
        raise UnknownUser(address=address)
    octets = _parseQuota(admin.args.size)
    QuotaFile(admin.dataDir).set("users", address, Limit(octets, admin.args.messages or None))
    admin.say(_quotaLine(admin, address))


def domainQuota(admin: Admin) -> None:
    from mailnet.quota import Limit, QuotaFile, formatSize

    domain = admin.args.name.lower().lstrip("@")
    if not admin.store.isLocalDomain(domain):
        raise UnknownDomain(domain=domain)
    octets = _parseQuota(admin.args.size)
    QuotaFile(admin.dataDir).set("domains", domain, Limit(octets, admin.args.messages or None))
    admin.say("Default quota of %s's users: %s (a user's own quota wins)." % (domain, formatSize(octets)))


def userShow(admin: Admin) -> None:
    address = normalizeAddress(admin.args.address, allowUTF8=True)
    if address not in admin.store.users(address.rsplit("@", 1)[-1]):
        raise UnknownUser(address=address)
    admin.say(_quotaLine(admin, address))


# --- alias ----------------------------------------------------------------


def aliasAdd(admin: Admin) -> None:
    store = admin.store
    targets = [t.strip() for arg in admin.args.targets for t in arg.split(",") if t.strip()]
    store.addAlias(admin.args.alias, targets)
    alias = admin.args.alias.lower()
    stored = store.aliases()[alias if alias.startswith("@") else normalizeAddress(alias, allowUTF8=True)]
    admin.say("%s -> %s" % (alias, ", ".join(stored)))
    for target in stored:
        if store.isLocalDomain(splitAddress(target)[1]) and store.resolve(target) is None:
            admin.note("warning: %s is not deliverable here yet (no such user or alias)" % (target,))


def aliasDel(admin: Admin) -> None:
    admin.store.removeAlias(admin.args.alias)
    admin.say("Removed alias %s." % (admin.args.alias.lower(),))


def aliasList(admin: Admin) -> None:
    for alias, targets in admin.store.aliases().items():
        admin.say("%s -> %s" % (alias, ", ".join(targets)))


# --- queue ----------------------------------------------------------------


def _queue():
    try:
        from mailnet.store import queue
    except ImportError as e:
        raise QueueUnavailable(reason=str(e)) from e
    return queue


def _when(epoch: Optional[float]) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def queueList(admin: Admin) -> None:
    entries = _queue().listEntries(admin.queueDir())
    if not entries:
        admin.say("The queue is empty.")
        return
    # Addresses and remote replies come from the network: escaped, so
    # that none can drive the terminal (ESC sequences, BEL, CR).
    for entry in entries:
        admin.say(
            "%s  from <%s>  to %s  attempts %d  next try %s"
            % (
                escape(entry["id"]),
                escape(entry["sender"]),
                escape(", ".join(entry["recipients"])) or "-",
                entry["attempts"],
                _when(entry["next_try"]),
            )
        )
        if entry.get("last_error"):
            admin.say("    last error: %s" % (escape(entry["last_error"]),))
    admin.say("%d message%s queued." % (len(entries), "" if len(entries) == 1 else "s"))


def queueFlush(admin: Admin) -> None:
    _queue().requestFlush(admin.queueDir())
    admin.say("Asked for every queued message to be retried now (a running daemon notices within seconds).")


class QueueDeleteFailed(MailnetError):
    """queued message {id} could not be deleted: the server was writing it back (a delivery attempt was ending); run the command again"""


def queueDelete(admin: Admin) -> None:
    queue = _queue()
    queueDir = admin.queueDir()
    wanted = admin.args.id.strip()
    # IDs are case-insensitive: the docs show lower case, 'queue list' upper.
    known = {entry["id"].upper(): entry["id"] for entry in queue.listEntries(queueDir)}
    entryId = known.get(wanted.upper(), wanted)
    queue.deleteEntry(queueDir, entryId)
    # A delivery attempt that ends meanwhile writes the entry back: say
    # "deleted" only when it is gone.
    if entryId.upper() in {entry["id"].upper() for entry in queue.listEntries(queueDir)}:
        raise QueueDeleteFailed(id=entryId)
    admin.say("Deleted queued message %s; nobody was notified." % (entryId,))


# --- dkim -----------------------------------------------------------------


def _dkimKeys(admin: Admin) -> Any:
    from mailnet.dkim import KeyStore

    return KeyStore(admin.checkDataDir(), admin.config.dkim_selector)


def dkimGenerate(admin: Admin) -> None:
    domain = normalizeDomain(admin.args.domain)
    if not admin.store.isLocalDomain(domain):
        raise UnknownDomain(domain=domain)
    keys = _dkimKeys(admin)
    key = keys.generate(domain, admin.args.selector, admin.args.type)
    admin.say("Generated an %s key for %s, selector %s: %s" % ("RSA %d" % key.bits() if key.type == "rsa" else "Ed25519", domain, key.selector, key.path))
    admin.say("Publish this DNS TXT record:")
    admin.say(key.zoneLine())
    if key in keys.signingKeys(domain):
        admin.say("Mail from %s is signed with it from now on." % (domain,))
    else:
        admin.say(
            "Mail is still signed with selector %s; once the record is published, set [dkim] selector = %s and restart."
            % (", ".join(k.selector for k in keys.signingKeys(domain) if k.type == key.type), key.selector)
        )


def dkimList(admin: Admin) -> None:
    keys = _dkimKeys(admin)
    found = keys.keys()
    if not found:
        admin.say("No DKIM keys; make one with 'mailnet-admin dkim generate DOMAIN'.")
        return
    signing = {k.path for domain in {k.domain for k in found} for k in keys.signingKeys(domain)}
    for key in found:
        admin.say(
            "%s  selector %s  %s %d  created %s%s"
            % (key.domain, key.selector, key.type, key.bits(), _when(key.created), "  (signs mail)" if key.path in signing else "")
        )
        admin.say("    %s" % (key.zoneLine(),))


def dkimRemove(admin: Admin) -> None:
    removed = _dkimKeys(admin).remove(admin.args.domain, admin.args.selector)
    for key in removed:
        admin.say("Removed the %s key of %s with selector %s; its DNS record %s can go once no mail in transit needs it." % (key.type, key.domain, key.selector, key.dnsName))


# --- check ----------------------------------------------------------------


class Report:
    """
    What C{check} found: C{ok} and C{note} lines are information, C{warning}
    and C{error} lines are problems (exit status 1).
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.problems = 0

    def section(self, title: str) -> None:
        self.out.write("%s\n" % (title,))

    def ok(self, text: str) -> None:
        self.out.write("  ok: %s\n" % (text,))

    def note(self, text: str) -> None:
        self.out.write("  note: %s\n" % (text,))

    def warning(self, text: str) -> None:
        self.problems += 1
        self.out.write("  warning: %s\n" % (text,))

    def error(self, text: str) -> None:
        self.problems += 1
        self.out.write("  error: %s\n" % (text,))


def splitEndpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    Split a Twisted endpoint string (C{tcp:2525:interface=127.0.0.1}) into
    positional and keyword parts; C{\\:} is a literal colon.
    """
    parts: List[str] = []
    current = ""
    escaped = False
    for c in description:
        if escaped:
            current += c
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    args: List[str] = []
    kwargs: Dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key:
            kwargs[key] = value
        else:
            args.append(part)
    return args, kwargs


def endpointAddress(description: str) -> Optional[Tuple[int, str, int]]:
    """
    @return: C{(family, interface, port)} of a TCP-based server endpoint
        (C{tcp}, C{tcp6}, C{ssl}), or L{None} for other kinds.
    @raise ValueError: a TCP endpoint without a valid port.
    """
    args, kwargs = splitEndpoint(description)
    kind = args[0].lower() if args else ""
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    port = kwargs.get("port") or (args[1] if len(args) > 1 else "")
    try:
        number = int(port)
    except ValueError:
        raise ValueError("no valid port number") from None
    if not 0 <= number < 65536:
        raise ValueError("port %d out of range" % (number,))
    interface = kwargs.get("interface", "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    if kind == "tcp6" and not interface:
        interface = "::"
    return family, interface, number


def daemonEndpointProblem(description: str) -> Optional[str]:
    """
    Parse a listener endpoint exactly as the daemon does
    (L{twisted.internet.endpoints.serverFromString}), so that C{check}
    passes only what the daemon accepts (C{tpc:2525}, C{interfce=}: no).

    @return: what is wrong, or L{None}.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except TypeError as e:
        # An unknown keyword: "... got an unexpected keyword argument 'interfce'".
        text = str(e)
        if "unexpected keyword argument" in text:
            return "unknown option %s" % (text.rsplit("argument", 1)[1].strip(),)
        return text
    except Exception as e:  # ValueError "Unknown endpoint type", a bad ssl: key file ...
        if "invalid literal for int()" in str(e):
            return "no valid port number"
        return str(e) or type(e).__name__
    return None


def tryBind(family: int, interface: str, port: int) -> None:
    """
    Bind and listen on a TCP port the way Twisted does (C{SO_REUSEADDR} on
    POSIX), then let it go.

    @raise OSError: it cannot be done.
    """
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((interface, port))
        s.listen(1)
    finally:
        s.close()


def _bindProblem(e: OSError, port: int) -> str:
    if e.errno == errno.EADDRINUSE:
        return "in use (is mailnet, or another mail server, already running?)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied%s" % (
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if 0 < port < 1024 else ""
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    return e.strerror or str(e)


def _matchesName(hostname: str, names: Sequence[str]) -> bool:
    """RFC 6125 §6.4.3: a wildcard stands for exactly one left-most label."""
    hostname = hostname.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == hostname:
            return True
        if name.startswith("*.") and "." in hostname and hostname.split(".", 1)[1] == name[2:]:
            return True
    return False


def _checkConfig(admin: Admin, report: Report) -> Optional[Config]:
    report.section("Configuration")
    try:
        config = admin.config
    except ConfigError as e:
        report.error(str(e))
        return None
    if admin.args.config:
        report.ok("%s is valid" % (admin.args.config,))
    else:
        report.note("no --config file: built-in defaults")
    report.ok("host name %s" % (config.hostname,))
    if "." not in config.hostname or config.hostname.endswith(".localdomain"):
        report.note("%s is not a public DNS name; set [server] hostname for mail from the Internet" % (config.hostname,))
    return config


def _checkDataDir(admin: Admin, report: Report) -> Optional[SQLiteAccountStore]:
    report.section("Data directory %s" % (admin.dataDir,))
    try:
        admin.checkDataDir()
    except MailnetError as e:
        report.error(str(e))
        return None
    report.ok("exists and is writable")
    try:
        store = admin.store
    except (MailnetError, OSError) as e:
        report.error(str(e))
        return None
    users = store.users()
    report.ok("account store: %d domain(s), %d user(s), %d alias(es)" % (len(store.domains()), len(users), len(store.aliases())))
    if not users:
        report.note("no users yet: add one with 'mailnet-admin user add ADDRESS'")
    _checkNames(store, users, report)
    return store


def _checkNames(store, users: List[str], report: Report) -> None:
    """
    Users made by an older mailnet may have names the store now refuses:
    ones that cannot be a Maildir (mail to them is refused at RCPT), and
    look-alikes of other users or aliases.
    """
    for address in users:
        if not isSafeMailboxName(address):
            report.warning("user %r cannot have a Maildir; mail to it is refused: remove it with 'mailnet-admin user del'" % (address,))
        elif canonicalAddress(address) != address:
            report.warning(
                "user %a is not stored in Unicode NFC, so logins and mail do not find it: remove it and add it again" % (address,)
            )
    seen: Dict[str, str] = {}
    for address in users + [a for a in store.aliases() if not a.startswith("@")]:
        key = foldedAddress(address)
        if key in seen:
            report.warning("%a and %a look alike (they differ only in case, width or a similar form)" % (seen[key], address))
        else:
            seen[key] = address


def _checkCertificate(config: Config, report: Report, now: datetime.datetime) -> None:
    from mailnet.tls import certificateNames, fingerprint, serverContextFactory

    report.section("TLS certificate")
    certPath, keyPath = config.tls_cert, config.tls_key
    if not certPath:
        certPath = os.path.join(config.data_dir, "tls", "selfsigned.pem")
        keyPath = os.path.join(config.data_dir, "tls", "selfsigned.key")
        if not os.path.exists(certPath):
            report.note("none configured; the daemon generates a self-signed one into %s on its first start" % (certPath,))
            return
        report.note("none configured; using the generated self-signed %s (clients must be told to trust it)" % (certPath,))
    try:
        names, expiry = certificateNames(certPath)
        digest = fingerprint(certPath)
        if keyPath:
            serverContextFactory(certPath, keyPath)
    except (MailnetError, ValueError) as e:
        report.error(str(e))
        return
    report.ok("%s: names %s; SHA-256 fingerprint %s" % (certPath, ", ".join(names) or "(none)", digest))
    left = expiry - now
    if left.total_seconds() <= 0:
        report.error("expired on %s" % (expiry.strftime("%Y-%m-%d %H:%M UTC"),))
    elif left < datetime.timedelta(days=CERTIFICATE_WARNING_DAYS):
        report.warning("expires in %d day(s), on %s: renew it" % (left.days, expiry.strftime("%Y-%m-%d %H:%M UTC")))
    else:
        report.ok("valid until %s (%d days)" % (expiry.strftime("%Y-%m-%d"), left.days))
    if not _matchesName(config.hostname, names):
        report.warning("the host name %s is not among the certificate's names; clients will refuse it" % (config.hostname,))


def _checkListeners(config: Config, report: Report) -> None:
    report.section("Listeners")
    for name in LISTENERS:
        endpoints = config.listen.get(name, ())
        if not endpoints:
            report.note("%s: off" % (name,))
        for description in endpoints:
            problem = daemonEndpointProblem(description)
            if problem is not None:
                report.error("%s %s: %s (the daemon would not start)" % (name, description, problem))
                continue
            try:
                address = endpointAddress(description)
            except ValueError as e:
                report.error("%s %s: %s" % (name, description, e))
                continue
            if address is None:
                report.note("%s %s: not a TCP endpoint, not checked" % (name, description))
                continue
            family, interface, port = address
            try:
                tryBind(family, interface, port)
            except OSError as e:
                report.error("%s %s: %s" % (name, description, _bindProblem(e, port)))
            else:
                report.ok("%s %s: can listen" % (name, description))


def _checkDomains(config: Config, store: Optional[SQLiteAccountStore], report: Report) -> None:
    domains = list(dict.fromkeys(list(config.domains) + (store.domains() if store is not None else [])))
    report.section("Domains")
    if not domains:
        report.warning("no local domain: add one with 'mailnet-admin domain add NAME' or [server] domain")
        return
    host = config.hostname.rstrip(".")
    for domain in domains:
        if store is not None and store.resolve("postmaster@" + domain) is None:
            # RFC 5321 §4.5.1: every domain that takes mail has a postmaster.
            report.warning(
                "%s has no postmaster (RFC 5321 §4.5.1): 'mailnet-admin alias add postmaster@%s YOU@%s'"
                % (domain, domain, domain)
            )
        else:
            report.ok(domain)
    report.section("DNS records to publish")
    for domain in domains:
        rows = [
            # RFC 5321 §5.1: mail for the domain goes to its MX host.
            ("%s." % domain, "MX", "10 %s." % host),
            # RFC 7208: only the MX hosts send mail for the domain.
            ("%s." % domain, "TXT", '"v=spf1 mx -all"'),
            # RFC 7489 §6.1: the DMARC policy lives at _dmarc.<domain>.
            ("_dmarc.%s." % domain, "TXT", '"v=DMARC1; p=quarantine; rua=mailto:postmaster@%s"' % domain),
        ]
        width = max(len(r[0]) for r in rows)
        for owner, kind, value in rows:
            report.out.write("  %-*s  %-3s  %s\n" % (width, owner, kind, value))
        _checkDKIM(config, domain, report)
        _clientRecords(config, domain, report)
    report.out.write(
        "  %s.  A/AAAA  <this server's public addresses>, with PTR records naming %s back\n" % (host, host)
    )


def _checkDKIM(config: Config, domain: str, report: Report) -> None:
    """RFC 6376 §3.6.2: the key records of the domain's DKIM keys."""
    from mailnet.dkim import KeyStore

    keys = KeyStore(config.data_dir, config.dkim_selector).keys(domain)
    if not keys:
        report.out.write("  (no DKIM key for %s: 'mailnet-admin dkim generate %s')\n" % (domain, domain))
    for key in keys:
        report.out.write("  %s\n" % (key.zoneLine(),))


def _checkAliases(admin: Admin, store: Optional[SQLiteAccountStore], report: Report) -> None:
    """
    Aliases that cannot work: loops, local targets that are nobody, and
    targets at a domain that was removed (mail to them would now be
    relayed out to the Internet).
    """
    if store is None:
        return
    aliases = dict(store.aliases())
    if not aliases:
        return
    report.section("Aliases")
    users = set(store.users())
    problems = report.problems

    def loopFrom(start: str) -> Optional[List[str]]:
        path: List[str] = [start]
        seen = {start}

        def walk(alias: str) -> Optional[List[str]]:
            for target in aliases.get(alias, ()):
                if target == start:
                    return path + [target]
                if target in aliases and target not in seen:
                    seen.add(target)
                    path.append(target)
                    found = walk(target)
                    if found:
                        return found
                    path.pop()
            return None

        return walk(start)

    reported = set()
    for alias in sorted(aliases):
        loop = loopFrom(alias)
        if loop and frozenset(loop) not in reported:
            reported.add(frozenset(loop))
            report.warning("alias loop: %s (mail to these is refused)" % (" -> ".join(loop),))
    mailRoot = os.path.join(admin.dataDir, "mail")
    for alias in sorted(aliases):
        for target in aliases[alias]:
            domain = splitAddress(target)[1].lower()
            if store.isLocalDomain(domain):
                if target not in users and target not in aliases and "@" + domain not in aliases:
                    report.warning(
                        "%s -> %s: there is no such user or alias; add it, or 'mailnet-admin alias add %s ...' "
                        "with another target" % (alias, target, alias)
                    )
            elif os.path.isdir(os.path.join(mailRoot, domain)):
                report.warning(
                    "%s -> %s: %s is no longer a local domain (its Maildirs are still in %s), so this mail "
                    "would be relayed out; add the domain back or change the alias"
                    % (alias, target, domain, os.path.join(mailRoot, domain))
                )
    if report.problems == problems:
        report.ok("%d alias(es), every target deliverable" % (len(aliases),))


def _clientRecords(config: Config, domain: str, report: Report) -> None:
    """Autoconfig host names, RFC 6186 SRV and MTA-STS (RFC 8461) records (mailnet.autoconfig)."""
    from mailnet.autoconfig import dnsRecords

    rows = dnsRecords(config, domain)
    width = max(len(r[0]) for r in rows)
    report.out.write("  ; for mail clients (served by the http listener; see the admin guide)\n")
    for owner, kind, value in rows:
        report.out.write("  %-*s  %-5s  %s\n" % (width, owner, kind, value))


def _checkFreeSpace(config: Config, report: Report) -> None:
    """[limits] min_free_space: below it the server refuses new mail."""
    from mailnet.diskspace import DiskSpace

    space = DiskSpace(config.data_dir, config.limits.min_free_space)
    free, total = space.usage()
    if total == 0:
        return
    floor = space.threshold(total)
    text = "%d MiB free of %d MiB; new mail is refused below %d MiB (min_free_space = %s)" % (
        free // 2**20, total // 2**20, floor // 2**20, config.limits.min_free_space)
    if free < floor:
        report.warning(text + ": free some space")
    else:
        report.ok(text)


def _checkJournal(config: Config, report: Report) -> None:
    """The delivery journals: messages a crash would replay at the next start."""
    from mailnet.store.journal import journalState

    states = journalState(config.data_dir)
    if states:
        report.ok(
            "delivery journal: %d file(s), %d message(s) not yet checkpointed (replayed at start after a crash)"
            % (len(states), sum(count for _, count in states))
        )


def check(admin: Admin, now: Optional[datetime.datetime] = None) -> int:
    report = Report(admin.stdout)
    config = _checkConfig(admin, report)
    if config is None:
        admin.say("Problems found: 1.")
        return EXIT_ERROR
    store = _checkDataDir(admin, report)
    if os.path.isdir(config.data_dir):
        _checkFreeSpace(config, report)
        _checkJournal(config, report)
    _checkCertificate(config, report, now or datetime.datetime.now(datetime.timezone.utc))
    _checkListeners(config, report)
    _checkDomains(config, store, report)
    _checkAliases(admin, store, report)
    if report.problems:
        admin.say("Problems found: %d." % (report.problems,))
        return EXIT_ERROR
    admin.say("No problems found.")
    return EXIT_OK


# --- the command line -------------------------------------------------------


DESCRIPTION = """\
Manage a mailnet server: domains, users, aliases and the relay queue, and
check the configuration.  Works on the data directory directly; a running
daemon sees changes at once."""

EPILOG = """\
examples:
  mailnet-admin --data-dir /var/lib/mailnet domain add example.test
  mailnet-admin user add alice@example.test
  echo "$PW" | mailnet-admin user add bob@example.test --password-stdin
  mailnet-admin alias add postmaster@example.test alice@example.test
  mailnet-admin alias add @example.test alice@example.test      (catch-all)
  mailnet-admin --config /etc/mailnet.ini check"""


def _command(
    subparsers, name: str, handler: Callable[..., Any], help: str, description: Optional[str] = None
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=description or help)
    parser.set_defaults(handler=handler)
    return parser


def _group(subparsers, name: str, help: str) -> Any:
    parser = subparsers.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")


def buildParser() -> argparse.ArgumentParser:
    from mailnet import __version__

    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version="%s %s" % (PROGRAM, __version__))
    parser.add_argument(
        "--config", metavar="FILE", help="the daemon's ini file: data_dir and domains are taken from it"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data directory (overrides the config file) [default: ./mailnet-data]; it must exist",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    domains = _group(commands, "domain", "add, remove or list local domains")
    p = _command(domains, "add", domainAdd, "add a local domain")
    p.add_argument("name", metavar="NAME", help="the domain, e.g. example.test")
    p = _command(
        domains, "del", domainDel, "remove a local domain with its users and aliases (Maildirs stay on disk)"
    )
    p.add_argument("name", metavar="NAME", help="the domain to remove")
    _command(domains, "list", domainList, "list the local domains")
    p = _command(domains, "quota", domainQuota, "set the default storage quota of a domain's users",
                 "Set the quota of DOMAIN's users that have none of their own.  SIZE such as 1G; 0 removes it.")
    p.add_argument("name", metavar="DOMAIN", help="the local domain whose users get this quota unless they have their own")
    p.add_argument("size", metavar="SIZE", help="storage per user, e.g. 2G or 500M; 0 = no quota")
    p.add_argument("--messages", type=int, metavar="N", help="also at most N messages")

    users = _group(commands, "user", "add, remove or list users, or change a password")
    passwordHelp = "read the password from the first line of standard input instead of prompting twice"
    p = _command(
        users,
        "add",
        userAdd,
        "add a user",
        "Add a user.  The login is the full address.  The password is asked for twice on the "
        "terminal, or read from standard input with --password-stdin; never give it on the command line.",
    )
    p.add_argument("address", metavar="ADDRESS", help="the address, e.g. alice@example.test")
    p.add_argument("--password-stdin", action="store_true", help=passwordHelp)
    p = _command(users, "passwd", userPasswd, "set a user's password")
    p.add_argument("address", metavar="ADDRESS", help="the user's address")
    p.add_argument("--password-stdin", action="store_true", help=passwordHelp)
    p = _command(
        users,
        "del",
        userDel,
        "remove a user and their mailbox",
        "Remove a user and delete their mailbox (with every message in it); with --keep-mail the "
        "mailbox stays on disk, and a later 'user add' of the same name moves it aside.",
    )
    p.add_argument("address", metavar="ADDRESS", help="the user's address")
    p.add_argument("--keep-mail", action="store_true", help="keep the mailbox on disk (and say where)")
    p = _command(users, "list", userList, "list the users")
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain's users")
    p.add_argument("--usage", action="store_true", help="with each user's mailbox usage and quota")
    p = _command(users, "show", userShow, "show a user's mailbox usage and quota")
    p.add_argument("address", metavar="ADDRESS", help="the user's address")
    quotaHelp = "SIZE such as 2G or 500M; 0 removes it.  The running server applies it within seconds."
    p = _command(users, "quota", userQuota, "set a user's storage quota", "Set ADDRESS's storage quota.  " + quotaHelp)
    p.add_argument("address", metavar="ADDRESS", help="the user's address")
    p.add_argument("size", metavar="SIZE", help="storage, e.g. 2G or 500M; 0 = no quota of the user's own")
    p.add_argument("--messages", type=int, metavar="N", help="also at most N messages")

    aliases = _group(commands, "alias", "add, remove or list aliases")
    p = _command(
        aliases,
        "add",
        aliasAdd,
        "make an alias deliver to one or more addresses (replaces an existing alias's targets)",
        "Make ALIAS deliver to each TARGET.  Targets may be local users, other aliases or remote "
        "addresses.  ALIAS may be @DOMAIN: a catch-all for addresses of DOMAIN that are neither "
        "users nor aliases.",
    )
    p.add_argument("alias", metavar="ALIAS", help="the alias address, or @DOMAIN for a catch-all")
    p.add_argument("targets", metavar="TARGET[,TARGET...]", nargs="+", help="where mail for ALIAS goes")
    p = _command(aliases, "del", aliasDel, "remove an alias")
    p.add_argument("alias", metavar="ALIAS", help="the alias address, or @DOMAIN for a catch-all")
    _command(aliases, "list", aliasList, "list the aliases and their targets")

    queue = _group(commands, "queue", "inspect and manage the relay queue (outgoing mail)")
    _command(queue, "list", queueList, "list the queued messages")
    _command(queue, "flush", queueFlush, "retry every queued message now")
    p = _command(queue, "delete", queueDelete, "delete a queued message without delivering it (nobody is told)")
    p.add_argument("id", metavar="ID", help="the message id, from 'queue list'")

    dkim = _group(commands, "dkim", "make, list or remove DKIM signing keys (prints the DNS records)")
    p = _command(
        dkim,
        "generate",
        dkimGenerate,
        "make a DKIM key for a local domain and print its DNS TXT record",
        "Make a DKIM key for DOMAIN (RSA 2048 by default) in the data directory (mode 0600) and print "
        "the TXT record to publish at SELECTOR._domainkey.DOMAIN.  Mail from DOMAIN is signed with the "
        "key of the [dkim] selector if it has one, else with its newest key.",
    )
    p.add_argument("domain", metavar="DOMAIN", help="a local domain (mail whose From: is there gets signed)")
    p.add_argument("--selector", metavar="S", help="the selector [default: [dkim] selector, s1]")
    p.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="the key type [default: rsa]")
    _command(dkim, "list", dkimList, "list the DKIM keys and their DNS records")
    p = _command(dkim, "remove", dkimRemove, "delete a domain's DKIM key (all its keys without --selector)")
    p.add_argument("domain", metavar="DOMAIN", help="the domain whose key to delete")
    p.add_argument("--selector", metavar="S", help="only the key with this selector")

    _command(
        commands,
        "check",
        check,
        "validate the configuration, data directory, certificate and ports; print DNS records",
        "Validate the configuration file, the data directory, the TLS certificate (names, expiry) "
        "and whether each listener can bind; print the DNS records each domain needs.  Exits 1 "
        "when there are warnings or errors.",
    )
    return parser


def main(
    argv: Optional[Sequence[str]] = None,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
) -> int:
    """
    Run mailnet-admin.

    @return: the exit status: 0 success, 1 an error (one line on stderr),
        2 a usage error.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    return endQuietly(PROGRAM, lambda: _main(argv, stdin, stdout, stderr), stdout, stderr)


def _main(argv: Optional[Sequence[str]], stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    parser = buildParser()
    args, code = parseArguments(parser, argv, stdout, stderr)
    if args is None:
        return code
    if args.command is None:
        # Bare mailnet-admin: what there is to do, as bare git says.
        stdout.write(parser.format_help())
        return EXIT_USAGE
    admin = Admin(args, stdin, stdout, stderr)
    try:
        return dispatch(PROGRAM, lambda: args.handler(admin), stderr)
    finally:
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
