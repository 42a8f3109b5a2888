# -*- test-case-name: tests.test_quota -*-
"""
Storage quotas: a per-user limit (octets, and optionally messages) and a
per-domain default, kept in C{DATA_DIR/quotas.json} (written by
C{mailnet-admin user quota} / C{domain quota}; the daemon reads it again
within a second of a change, no restart).

A mailbox's usage is what its Maildir holds, every folder included: the
sizes come from the C{S=} part of the file names mailnet writes (a
C{stat} for others).  The daemon keeps each mailbox's figure in memory:
counted on first use, brought up to date on each delivery, and counted
again after a removal (POP3 C{DELE}, IMAP expunge: L{forget}) or when it
is older than L{USAGE_TTL} seconds (changes made by other programs).

An IMAP C{COPY} adds to the figure at once (a C{MOVE} within the
account changes nothing), and one that does not fit is refused
(L{mailnet.imap._quota}).

Checked at C{RCPT}: C{452 4.2.2} when the mailbox is full (or would be
with MAIL's C{SIZE}), C{552 5.2.2} when C{SIZE} alone is more than the
quota.  The relay queue retries a C{4.2.2} like any temporary failure and
bounces after C{give_up_after}.
"""

import json
import os
import re
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import attr
from prometheus_client.core import GaugeMetricFamily

from mailnet import datalock, metrics
from mailnet.smtp import codes

QUOTA_FILE = "quotas.json"

#: Beside the quota file: held while it is read, changed and written.
QUOTA_LOCK = QUOTA_FILE + ".lock"

#: Seconds a counted usage is trusted without a delivery or removal by us.
USAGE_TTL = 60.0

#: Seconds between looks at the quota file's modification time.
RELOAD_EVERY = 1.0

#: Share of the quota at which the mailbox counts as nearly full (and its
#: owner is sent one warning).
WARNING_RATIO = 0.9

#: In a Maildir's top directory: the owner has been warned (removed when
#: usage falls below WARNING_RATIO again, so the next time warns again).
WARNED_MARKER = ".mailnet-quota-warned"


@attr.s(frozen=True, auto_attribs=True)
class Limit:
    """A quota; L{None} parts are unlimited."""

    octets: Optional[int] = None
    messages: Optional[int] = None

    def __bool__(self) -> bool:
        return self.octets is not None or self.messages is not None


def parseSize(text: str) -> Optional[int]:
    """
    C{2G}, C{500M}, C{100K}, C{1048576}; C{0} means no quota.

    @raise ValueError: anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not match:
        raise ValueError("expected a size such as 2G, 500M or 0 (no quota)")
    octets = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
    return octets or None


def formatSize(octets: Optional[int]) -> str:
    if octets is None:
        return "none"
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if octets >= size:
            value = octets / size
            return ("%d%s" if value == int(value) else "%.1f%s") % (value, unit)
    return "%d" % (octets,)


# --- usage -------------------------------------------------------------------

_SIZE = re.compile(r",S=(\d+)")


def mailboxUsage(path: str) -> Tuple[int, int]:
    """
    Count a Maildir: octets and messages in C{new/} and C{cur/} of INBOX
    and of every C{.Folder}.  A missing Maildir is empty.
    """
    octets = count = 0
    roots = [path]
    try:
        roots += [os.path.join(path, e.name) for e in os.scandir(path) if e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    for root in roots:
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(os.path.join(root, sub)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                match = _SIZE.search(entry.name)
                if match:
                    octets += int(match.group(1))
                else:
                    try:
                        octets += entry.stat().st_size
                    except FileNotFoundError:
                        continue
                count += 1
    return octets, count


# The daemon's figures, by Maildir path: (octets, messages, when counted).
# Module-level so that the Maildir code can keep it current with one call.
_usage: Dict[str, Tuple[int, int, float]] = {}
_lock = threading.Lock()


def delivered(path: str, octets: int, messages: int = 1) -> None:
    """
    C{messages} messages (one by default) of C{octets} in all were added
    to the Maildir at C{path}: a delivery, an IMAP APPEND or COPY.
    """
    with _lock:
        known = _usage.get(path)
        if known is not None:
            _usage[path] = (known[0] + octets, known[1] + messages, known[2])


def forget(path: str) -> None:
    """Messages were removed from the Maildir at C{path}: count it again when asked."""
    with _lock:
        _usage.pop(path, None)


# --- the quota file ------------------------------------------------------------


class QuotaFile:
    """
    C{DATA_DIR/quotas.json}: C{{"users": {ADDRESS: {"octets": N,
    "messages": M}}, "domains": {DOMAIN: {...}}}}.

    A change is a read-modify-write under an exclusive lock on
    C{quotas.json.lock} (L{mailnet.datalock.exclusively}), so two
    C{mailnet-admin} at the same moment both take effect; the file is
    replaced atomically (temporary file, fsync, rename, directory fsync),
    so a reader (the daemon) sees the old or the new whole, and a crash
    leaves one of them.
    """

    def __init__(self, dataDir: str) -> None:
        self.dataDir = dataDir
        self.path = os.path.join(dataDir, QUOTA_FILE)
        self.lockPath = os.path.join(dataDir, QUOTA_LOCK)

    def read(self) -> Dict[str, Dict[str, Dict[str, Optional[int]]]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        if not isinstance(data, dict):
            raise ValueError("%s is not a JSON object" % (self.path,))
        return {"users": dict(data.get("users", {})), "domains": dict(data.get("domains", {}))}

    def _write(self, data: Dict[str, Any]) -> None:
        """Replace the file atomically and durably (called with the lock held)."""
        from mailnet.store.maildir import fsyncDirectory

        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsyncDirectory(self.dataDir)

    def set(self, kind: str, name: str, limit: Limit) -> None:
        """
        Set (or with an empty L{Limit}, remove) a C{"users"} or
        C{"domains"} quota, keeping every other entry, including those
        another process changes at the same moment.
        """
        with datalock.exclusively(self.lockPath):
            data = self.read()
            if limit:
                data[kind][name] = {"octets": limit.octets, "messages": limit.messages}
            else:
                data[kind].pop(name, None)
            self._write(data)


def _limit(entry: Any) -> Limit:
    if not isinstance(entry, dict):
        return Limit()

    def number(key: str) -> Optional[int]:
        value = entry.get(key)
        return value if isinstance(value, int) and value > 0 else None

    return Limit(number("octets"), number("messages"))


class Quotas:
    """
    The daemon's view: limits from the quota file (read again when it
    changes), usage counted from the Maildirs.

    @param accounts: the account store (C{resolve}, C{users}).
    @param pathFor: address -> Maildir path.
    """

    def __init__(
        self,
        dataDir: str,
        accounts: Any,
        pathFor: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
        run: Optional[Callable[..., Any]] = None,
    ) -> None:
        self.file = QuotaFile(dataDir)
        self.accounts = accounts
        self.pathFor = pathFor
        self.clock = clock
        # Counting a large Maildir takes milliseconds: done with run (a
        # thread pool) when given, not on the reactor.
        self.run = run
        self._users: Dict[str, Limit] = {}
        self._domains: Dict[str, Limit] = {}
        self._stamp: Optional[Tuple[int, int]] = None
        self._lookedAt: Optional[float] = None
        #: Called as C{warn(address, used, limit)} when a mailbox reaches
        #: L{WARNING_RATIO} of its quota (see L{deliverWarning}).
        self.warn: Optional[Callable[[str, int, int], None]] = None

    def _reload(self) -> None:
        now = self.clock()
        if self._lookedAt is not None and 0 <= now - self._lookedAt < RELOAD_EVERY:
            return
        self._lookedAt = now
        try:
            st = os.stat(self.file.path)
            stamp: Optional[Tuple[int, int]] = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            data = self.file.read()
        except (ValueError, OSError):
            return  # half-written or broken: keep what we had
        self._users = {k: _limit(v) for k, v in data["users"].items()}
        self._domains = {k: _limit(v) for k, v in data["domains"].items()}

    def limitFor(self, address: str) -> Limit:
        """The user's own quota, else its domain's, else none."""
        self._reload()
        limit = self._users.get(address)
        if limit:
            return limit
        return self._domains.get(address.rsplit("@", 1)[-1], Limit())

    def _known(self, address: str) -> Optional[Tuple[int, int]]:
        """The counted usage of C{address}'s Maildir, if recent enough."""
        now = self.clock()
        with _lock:
            known = _usage.get(self.pathFor(address))
        if known is not None and 0 <= now - known[2] < USAGE_TTL:
            return known[0], known[1]
        return None

    def usage(self, address: str) -> Tuple[int, int]:
        """@return: octets and messages in C{address}'s Maildir (counted now if need be)."""
        known = self._known(address)
        if known is not None:
            return known
        path, now = self.pathFor(address), self.clock()
        octets, count = mailboxUsage(path)
        with _lock:
            _usage[path] = (octets, count, now)
        return octets, count

    def count(self, address: str) -> Optional[Any]:
        """
        Have C{address}'s usage counted off the reactor, if it must be
        counted at all, so that a following L{usage} answers at once.

        @return: L{None} when the figure is known (or there is no thread
            pool to count in: L{usage} counts then), else a L{Deferred}
            that fires once it is counted.
        """
        if self.run is None or self._known(address) is not None:
            return None
        return self.run(self._countAll, [address])

    def _countAll(self, addresses: List[str]) -> None:
        for address in addresses:
            self.usage(address)

    def check(self, address: str, size: Optional[int]) -> Any:
        """
        At RCPT: every local mailbox C{address} delivers to has room.

        @return: L{None} when checked, or a L{Deferred} when a Maildir had
            to be counted first (in C{run}'s thread) that fires when checked.
        @raise SMTPReply: 552 5.2.2 when C{size} can never fit, 452 4.2.2
            when the mailbox is full (or the Deferred fails with it).
        """
        self._reload()
        if not self._users and not self._domains:
            return None
        targets = [(t, self.limitFor(t)) for t in self.accounts.resolve(address) or ()]
        targets = [(t, limit) for t, limit in targets if limit]
        uncounted = [t for t, _ in targets if self._known(t) is None]
        if uncounted and self.run is not None:
            return self.run(self._countAll, uncounted).addCallback(lambda _: self._check(address, targets, size))
        return self._check(address, targets, size)

    def _check(self, address: str, targets: List[Tuple[str, Limit]], size: Optional[int]) -> None:
        for target, limit in targets:
            if size is not None and limit.octets is not None and size > limit.octets:
                metrics.storageRefused("quota")
                raise codes.reply(
                    codes.EXCEEDED_STORAGE, codes.P_MAILBOX_FULL,
                    "<%s>: the message is larger than the mailbox's quota" % (address,),
                )
            octets, count = self.usage(target)
            self._maybeWarn(target, limit, octets)
            if (limit.octets is not None and octets + (size or 0) > limit.octets) or (
                limit.messages is not None and count >= limit.messages
            ):
                metrics.storageRefused("quota")
                raise codes.reply(codes.INSUFFICIENT_STORAGE, codes.T_MAILBOX_FULL, "<%s>: mailbox full" % (address,))

    def _maybeWarn(self, address: str, limit: Limit, octets: int) -> None:
        """Warn the owner once when the mailbox passes WARNING_RATIO of its quota."""
        if self.warn is None or not limit.octets:
            return
        marker = os.path.join(self.pathFor(address), WARNED_MARKER)
        try:
            if octets < WARNING_RATIO * limit.octets:
                if os.path.exists(marker):
                    os.unlink(marker)
                return
            if os.path.exists(marker):
                return
            with open(marker, "x"):
                pass
        except OSError:
            return  # no Maildir yet, or a race with another session: no warning now
        self.warn(address, octets, limit.octets)

    def states(self) -> Dict[str, List[str]]:
        """Users with a quota, by state: C{ok}, C{warning} (90 % or more), C{full}."""
        self._reload()
        result: Dict[str, List[str]] = {"ok": [], "warning": [], "full": []}
        users = set(self._users)
        if self._domains:
            users.update(u for u in self.accounts.users() if u.rsplit("@", 1)[-1] in self._domains)
        uncounted = []
        for user in sorted(users):
            limit = self.limitFor(user)
            if not limit:
                continue
            known = self._known(user) if self.run is not None else self.usage(user)
            if known is None:
                uncounted.append(user)  # counted in the background, shown next time
                continue
            octets, count = known
            ratios = []
            if limit.octets:
                ratios.append(octets / limit.octets)
            if limit.messages:
                ratios.append(count / limit.messages)
            ratio = max(ratios)
            result["full" if ratio >= 1 else "warning" if ratio >= WARNING_RATIO else "ok"].append(user)
        if uncounted and self.run is not None:
            self.run(self._countAll, uncounted).addErrback(lambda f: None)
        return result

    def collect(self) -> Iterator[Any]:
        """Metrics: how many users with a quota are fine, nearly full, full."""
        family = GaugeMetricFamily(
            "mailnet_quota_users", "Users with a quota, by state (warning: 90 % used or more; full).", labels=["state"]
        )
        for state, users in self.states().items():
            family.add_metric([state], len(users))
        yield family


def warningMessage(hostname: str, address: str, used: int, limit: int, now: Optional[float] = None) -> bytes:
    """The message that tells C{address} its mailbox is nearly full."""
    from email.utils import formatdate, make_msgid

    percent = 100 * used // limit
    lines = [
        "From: Mail system <MAILER-DAEMON@%s>" % (hostname,),
        "To: <%s>" % (address,),
        "Subject: Your mailbox is %d%% full" % (percent,),
        "Date: %s" % (formatdate(now, localtime=False),),
        "Message-ID: %s" % (make_msgid("quota", domain=hostname),),
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Your mailbox %s uses %s of its %s quota (%d%%)." % (address, formatSize(used), formatSize(limit), percent),
        "",
        "When it is full, new mail for you is refused (senders are told to",
        "try again later).  Delete or move away some messages, large ones",
        "first, to make room.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii", "replace")


def deliverWarning(mailStore: Any, hostname: str, address: str, used: int, limit: int) -> None:
    """Put the warning straight into C{address}'s Maildir (past the quota check)."""
    from twisted.logger import Logger

    log = Logger()
    receiver = mailStore.receive("", [address])
    receiver.write(warningMessage(hostname, address, used, limit))
    log.info("{address}: mailbox at {percent}% of its quota, owner warned", address=address, percent=100 * used // limit)
    receiver.finish().addErrback(lambda f: log.failure("could not deliver the quota warning to {address}", f, address=address))
