# -*- test-case-name: tests.test_benchmarks -*-
"""
mailnet against the servers people would run instead: a private Postfix
(SMTP, C{postfix -c DIR start-fg}, virtual(8) Maildir delivery) and a
private Dovecot (POP3, C{dovecot -F -c CONFIG}, passwd-file), both from
Debian packages, each on a port of 127.0.0.1 with its files under the
run's temporary directory (issue 14).

Each case runs in rounds that alternate between the servers (mailnet with
one process, mailnet with several, the peer), so that all see the same
drift in the machine's speed; a figure is the best round, and the table
shows every round for the spread.  POP3 is plaintext on both sides; the
logins are done before the RETR phase is timed.

Postfix answers 250 once the message is safely in its queue and delivers
to the Maildir afterwards; mailnet answers 250 once the message is in the
Maildir.  The rate is the 250s per second either way (what a sender sees);
for Postfix the driver then waits until every accepted message is in its
Maildir (the loss check) and reports that time as C{drain_s}.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from mailnetbench.messages import header, idsOnDisk, makeBody, messageFiles
from mailnetbench.pop3load import runPOP3
from mailnetbench.server import Server, startServer
from mailnetbench.smtpload import SMTPRun, Workload, runSMTP

DOMAIN = "bench.test"
PASSWORD = "bench-password-0"
SMTP_USERS = ["u%d@%s" % (i, DOMAIN) for i in range(10)]
POP3_USERS = ["p%d@%s" % (i, DOMAIN) for i in range(10)]
NOBODY = "nobody"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def treePids(root: int) -> List[int]:
    """C{root} and every process below it (from C{/proc})."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as f:
                    stat = f.read()
                ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, frontier = [root], [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


def treeCPU(root: int) -> float:
    """
    CPU seconds of a process tree: each live process's own, and what its
    ended children used (the C{cutime} and C{cstime} of proc(5), counted
    once their parent has reaped them: Dovecot's per-session processes).
    """
    total = 0
    for pid in treePids(root):
        try:
            with open("/proc/%d/stat" % (pid,), "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _mailOwner() -> Optional[pwd.struct_passwd]:
    """As root, the peers' mail files belong to nobody (neither delivers as root)."""
    return pwd.getpwnam(NOBODY) if os.getuid() == 0 else None


def _chownTree(path: str, owner: Optional[pwd.struct_passwd]) -> None:
    if owner is None:
        return
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(top, name), owner.pw_uid, owner.pw_gid)
    os.chown(path, owner.pw_uid, owner.pw_gid)


def preloadMaildir(maildir: str, address: str, count: int, size: int) -> None:
    """C{count} messages with their bench ids, LF line endings (as a peer stores them)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    body = makeBody(size).replace(b"\r\n", b"\n")
    for i in range(count):
        data = header("pre-%s-%d" % (address, i), address).replace(b"\r\n", b"\n") + body
        with open(os.path.join(maildir, "new", "%d.M%dP1Q%d.peer" % (1700000000 + i, i, i)), "wb") as f:
            f.write(data)


def emptyMaildirs(maildirs: Any) -> None:
    """Remove every message from C{new/} and C{cur/} of C{maildirs}."""
    for maildir in maildirs:
        for path in messageFiles(maildir):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _waitForPort(port: int, process: subprocess.Popen, name: str, log: Callable[[], str], seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("%s exited: %s" % (name, log()[-2000:]))
            time.sleep(0.1)
    raise RuntimeError("%s did not listen within %d s" % (name, seconds))


class Postfix:
    """A private Postfix: its own main.cf, master.cf, queue and Maildirs."""

    name = "postfix"

    def __init__(self, root: str, users: Sequence[str] = SMTP_USERS, masterCf: str = "/etc/postfix/master.cf") -> None:
        self.root = os.path.join(root, "postfix")
        self.users = list(users)
        self.masterCf = masterCf
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.why = ""
        self.binary = shutil.which("postfix") or ("/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None)
        if self.binary is None:
            self.why = "postfix is not installed (Debian: apt-get install postfix)"
        elif os.getuid() != 0:
            self.why = "a private Postfix must be started as root (its master drops to the postfix user)"
        elif not os.path.exists(masterCf):
            self.why = "no %s to start from" % (masterCf,)
        else:
            try:
                pwd.getpwnam("postfix")
            except KeyError:
                self.why = "there is no postfix user (install the Debian package)"

    @property
    def maildirs(self) -> Dict[str, str]:
        return {u: os.path.join(self.root, "mail", DOMAIN, u.split("@")[0]) for u in self.users}

    def _configure(self) -> str:
        conf = os.path.join(self.root, "conf")
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(os.path.join(self.root, "data"), "postfix")
        owner = _mailOwner()
        _chownTree(os.path.join(self.root, "mail"), owner)
        with open(os.path.join(conf, "vmailbox"), "w") as f:
            for user in self.users:
                f.write("%s %s/%s/\n" % (user, DOMAIN, user.split("@")[0]))
        self.port = freePort()
        uid = owner.pw_uid if owner else os.getuid()
        gid = owner.pw_gid if owner else os.getgid()
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN.format(root=self.root, uid=uid, gid=gid))
        # Debian's master.cf, with our port for smtpd and no chroot.
        with open(self.masterCf) as f, open(os.path.join(conf, "master.cf"), "w") as out:
            for line in f:
                fields = line.split()
                if line[:1] in ("#", " ", "\t") or len(fields) < 8:
                    out.write(line)
                    continue
                if fields[:2] == ["smtp", "inet"]:
                    fields[0] = "127.0.0.1:%d" % (self.port,)
                elif fields[1] == "inet":
                    continue  # no other listener (submission ...)
                fields[4] = "n"
                out.write("\t".join(fields) + "\n")
        return conf

    def start(self) -> None:
        if self.why:
            raise RuntimeError(self.why)
        conf = self._conf = self._configure()
        self.process = subprocess.Popen(
            [self.binary, "-c", conf, "start-fg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _waitForPort(self.port, self.process, "postfix", self._log)

    def _log(self) -> str:
        try:
            with open(os.path.join(self.root, "maillog"), errors="replace") as f:
                return f.read()
        except OSError:
            return "(no maillog)"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            # "postfix start-fg" is a script whose master(8) outlives a signal
            # to the script: ask the master itself, by its pid file.
            subprocess.run(
                [self.binary, "-c", self._conf, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60
            )
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = bench.test
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
message_size_limit = 104857600
alias_maps =
alias_database =
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
# Every load generator connects from 127.0.0.1: no per-client limits.
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
smtp_dns_support_level = disabled
biff = no
smtputf8_enable = no
"""


def dovecotConfig(protocol: str, root: str, port: int, uid: int, gid: int, user: str, extra: str = "") -> str:
    """
    A private Dovecot serving C{protocol} (C{"imap"} or C{"pop3"}) on
    127.0.0.1:C{port}: passwd-file users, Maildirs under C{root}, plaintext
    logins (loopback only, so TLS is not part of the figures); C{extra} is
    added to the main section.
    """
    return DOVECOT_TEMPLATE.format(protocol=protocol, root=root, port=port, uid=uid, gid=gid, user=user, extra=extra)


DOVECOT_TEMPLATE = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = {protocol}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
mail_location = maildir:{root}/home/%n/Maildir
default_internal_user = {user}
default_login_user = {user}
pop3_uidl_format = %f
{extra}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%n
}}
service {protocol}-login {{
  chroot =
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


class DovecotPOP3:
    """A private Dovecot serving POP3 (the configuration of L{imap.Dovecot}, for POP3)."""

    name = "dovecot"

    def __init__(self, root: str, users: Sequence[str] = POP3_USERS) -> None:
        self.root = os.path.join(root, "dovecot-pop3")
        self.users = list(users)
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.why = ""
        self.binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
        if self.binary is None:
            self.why = "dovecot is not installed (Debian: apt-get install dovecot-pop3d)"
        elif not os.path.exists("/usr/lib/dovecot/pop3"):
            self.why = "dovecot has no POP3 server (Debian: apt-get install dovecot-pop3d)"

    @property
    def maildirs(self) -> Dict[str, str]:
        return {u: os.path.join(self.root, "home", u.split("@")[0], "Maildir") for u in self.users}

    def start(self, preload: int = 0, size: int = 2048) -> None:
        if self.why:
            raise RuntimeError(self.why)
        os.makedirs(os.path.join(self.root, "home"), exist_ok=True)
        for user, maildir in self.maildirs.items():
            preloadMaildir(maildir, user, preload, size)
        with open(os.path.join(self.root, "passwd"), "w") as f:
            for user in self.users:
                f.write("%s:{PLAIN}%s\n" % (user, PASSWORD))
        owner = _mailOwner()
        _chownTree(self.root, owner)
        if owner is not None:
            os.chmod(os.path.dirname(self.root), 0o755)
        self.port = freePort()
        config = os.path.join(self.root, "dovecot.conf")
        user = "dovecot" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        with open(config, "w") as f:
            f.write(
                dovecotConfig(
                    "pop3",
                    self.root,
                    self.port,
                    owner.pw_uid if owner else os.getuid(),
                    owner.pw_gid if owner else os.getgid(),
                    user,
                )
            )
        self.process = subprocess.Popen([self.binary, "-F", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _waitForPort(self.port, self.process, "dovecot", lambda: self.process.stderr.read().decode(errors="replace"))  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


class MailnetPeer:
    """mailnet (L{mailnetbench.serve}) with C{workers} processes, in the same shape as the peers."""

    def __init__(self, reactor: Any, root: str, workers: int, listeners: Sequence[str], users: Sequence[str]) -> None:
        self.reactor = reactor
        self.name = "mailnet-w%d" % (workers,)
        self.workers = workers
        self.dataDir = os.path.join(root, "%s-%s" % (self.name, listeners[0]))
        self.listeners = list(listeners)
        self.users = list(users)
        self.server: Optional[Server] = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    @property
    def maildirs(self) -> Dict[str, str]:
        assert self.server is not None
        return self.server.maildirs

    async def start(self, preload: int = 0, size: int = 2048) -> None:
        spec: Dict[str, Any] = {
            "kind": "mailnet",
            "dataDir": self.dataDir,
            "hostname": "bench.test",
            "domain": DOMAIN,
            "users": self.users,
            "password": PASSWORD,
            "listeners": self.listeners,
            "cheapHash": True,
            "workers": self.workers,
            "limits": {"max_connections": 5000, "max_connections_per_client": 5000},
        }
        if preload:
            spec["preload"] = {u: [preload, size] for u in self.users}
        self.server = await startServer(self.reactor, spec)
        self.port = self.server.ports[self.listeners[0]]
        # The workers start once the parent is up: wait until each listens
        # (the parent's log has a line per process and listener).
        deadline = time.time() + 60
        while self._listening() < self.workers * len(self.listeners) and time.time() < deadline:
            await deferLater(self.reactor, 0.1, lambda: None)

    def _listening(self) -> int:
        try:
            with open(os.path.join(self.dataDir, "server.log"), encoding="utf-8", errors="replace") as f:
                return sum(1 for line in f if " listening on 127.0.0.1:" in line)
        except OSError:
            return 0

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        """
        Start again on the same data dir once the server is gone (killed):
        the log of the run before is kept as C{server.log.1}.
        """
        if self.server is not None:
            await self.server.process.ended
            self.server = None
        log = os.path.join(self.dataDir, "server.log")
        if os.path.exists(log):
            os.replace(log, log + ".1")
        await self.start()

    def replayed(self) -> List[str]:
        """The delivery journal's recovery lines in the server's log."""
        try:
            with open(os.path.join(self.dataDir, "server.log"), encoding="utf-8", errors="replace") as f:
                return [line.split("journal ", 1)[1].strip() for line in f if "messages replayed" in line]
        except OSError:
            return []


async def smtpRound(reactor, server: Any, name: str, connections: int, count: int, seconds: float, size: int, drain: float = 120) -> Dict[str, Any]:
    """
    One bounded round against C{server} (anything with C{port}, C{pid},
    C{maildirs}); then the loss check, waiting up to C{drain} seconds for
    a server that delivers after its 250.
    """
    run = SMTPRun(name, SMTP_USERS, makeBody(size), Workload(count, time.perf_counter() + seconds))
    cpu0 = treeCPU(server.pid)
    await runSMTP(reactor, server.port, run, connections, timeout=seconds + 60 + size / (1 << 20))
    accepted = len(run.accepted)
    elapsed = (run.lastAccepted - run.firstSent) if accepted and run.firstSent else 0.0
    started = time.perf_counter()
    while True:
        onDisk = await deferToThread(idsOnDisk, server.maildirs.values())
        lost = [i for i in run.accepted if i not in onDisk]
        if not lost or time.perf_counter() - started > drain:
            break
        await deferLater(reactor, 0.2, lambda: None)
    # Postfix's deliveries (after its 250s) count too.
    cpu = treeCPU(server.pid) - cpu0
    # Checked: out of the way, so that the next round's check reads only its own.
    await deferToThread(emptyMaildirs, server.maildirs.values())
    latencies = sorted(run.latencies)
    return {
        "accepted": accepted,
        "msgs_per_s": accepted / elapsed if elapsed else None,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else None,
        "cpu_ms_per_msg": cpu * 1000 / accepted if accepted else None,
        "drain_s": time.perf_counter() - started,
        "lost": len(lost),
        "duplicated": sum(1 for i in run.accepted if onDisk.get(i, 0) > 1),
        "refused": len(run.refused),
        "errors": (run.errors + run.refused)[:5],
    }


async def settle(
    reactor, cpu: Callable[[], float], interval: float = 0.25, quiet: float = 0.02, timeout: float = 30.0
) -> float:
    """
    Wait until a server is idle: until it used at most C{quiet} CPU seconds
    over one C{interval}, or C{timeout} seconds have passed.

    @param cpu: the server's CPU seconds so far (L{treeCPU}).
    @return: the seconds waited.
    """
    waited = 0.0
    before = cpu()
    while waited < timeout:
        await deferLater(reactor, interval, lambda: None)
        waited += interval
        now = cpu()
        if now - before <= quiet:
            break
        before = now
    return waited


async def pop3Round(reactor, server: Any, users: Sequence[str], count: int) -> Dict[str, Any]:
    """
    Every user RETRs every preloaded message, all at once; logins untimed.

    Each user first logs in once and quits, and the server is left to go
    idle before the timed round: a first login may start work in the
    background (mailnet rehashes a password stored with outdated Argon2
    parameters, such as the benchmark's cheap ones, at full cost), which
    must not be counted in, or slow down, the RETRs.
    """
    await runPOP3(reactor, server.port, list(users), PASSWORD, timeout=60, limit=0)
    await settle(reactor, lambda: treeCPU(server.pid))
    marks: Dict[str, float] = {}

    def ready() -> None:
        marks["cpu"] = treeCPU(server.pid)

    sessions = await runPOP3(reactor, server.port, list(users), PASSWORD, timeout=60 + count / 50, onReady=ready)
    cpu = treeCPU(server.pid) - marks.get("cpu", 0.0)
    retrieved = sum(s.retrieved for s in sessions)
    started = min((s.retrStarted for s in sessions if s.retrStarted), default=0.0)
    done = max((s.retrDone for s in sessions), default=0.0)
    elapsed = done - started if started and done > started else None
    lost = sum(max(count - s.count, 0) + max(s.count - s.retrieved, 0) + s.missingIds for s in sessions)
    return {
        "messages": retrieved,
        "msgs_per_s": retrieved / elapsed if elapsed else None,
        "cpu_ms_per_msg": cpu * 1000 / retrieved if retrieved else None,
        "login_s": max((s.loginDone - s.loginStarted for s in sessions if s.loginDone), default=None),
        "lost": lost,
        "errors": [e for s in sessions for e in s.errors][:5],
    }


def best(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The round with the highest rate, with every round's rate for the spread."""
    rated = [r for r in rounds if r.get("msgs_per_s")]
    if not rated:
        return dict(rounds[-1]) if rounds else {}
    result = dict(max(rated, key=lambda r: r["msgs_per_s"]))
    result["rounds"] = [round(r["msgs_per_s"] or 0, 1) for r in rounds]
    result["lost"] = sum(r.get("lost", 0) for r in rounds)
    result["errors"] = [e for r in rounds for e in r.get("errors", [])][:5]
    return result


async def crashRound(reactor, server: MailnetPeer, connections: int = 20, seconds: float = 6, killAfter: float = 2) -> Dict[str, Any]:
    """
    SMTP load on a mailnet with workers; after C{killAfter} seconds every
    process of the server (the parent included) gets SIGKILL, as in a
    power loss of the service.  The server is then started again on the
    same data dir (it replays its delivery journals before it listens):
    nothing acknowledged may be missing from disk.
    """
    run = SMTPRun("crash", SMTP_USERS, makeBody(2048), Workload(10**7, time.perf_counter() + seconds))
    killed: List[int] = []

    def kill() -> None:
        for pid in treePids(server.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)

    reactor.callLater(killAfter, kill)
    await runSMTP(reactor, server.port, run, connections, timeout=seconds + 60)
    restarted = time.perf_counter()
    await server.restart()
    restartSeconds = time.perf_counter() - restarted
    onDisk = await deferToThread(idsOnDisk, server.maildirs.values())
    return {
        "accepted": len(run.accepted),
        "killed": killed,
        "restart_s": round(restartSeconds, 2),
        "replayed": server.replayed(),
        "connection_errors": len(run.errors),
        "lost": sum(1 for i in run.accepted if i not in onDisk),
        "duplicated": sum(1 for i in run.accepted if onDisk.get(i, 0) > 1),
        "stored_not_acknowledged": sum(1 for i in onDisk if i.startswith("crash-") and i not in run.accepted),
    }
