#!/usr/bin/env python3
# -*- test-case-name: tests.test_benchmarks -*-
"""
mailnet's IMAP server against Dovecot's, in one run on one machine.

    python benchmarks/imap.py                 # 10,000 x 2 KB, best of 3 rounds, 200 IDLE sessions
    python benchmarks/imap.py --short         # smoke run: tiny counts, a few seconds
    python benchmarks/imap.py --big 100000    # also SELECT of a 100,000-message folder after a restart

Dovecot (Debian's dovecot-imapd) runs as a private instance: its own
configuration, passwd-file and Maildir under a temporary directory, one
port on 127.0.0.1.  Where it cannot run, its column says why and mailnet is
measured alone.  Both servers get plaintext LOGIN on loopback, so TLS is
not part of the figures.  The rounds alternate between the servers; each
figure is the best of the rounds.  Results go to stdout as a table and,
with C{--json FILE}, as JSON.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

from mailnetbench import imapload, procstat  # noqa: E402
from mailnetbench.messages import makeBody  # noqa: E402
from mailnetbench.peer import dovecotConfig, freePort  # noqa: E402

USER = "user@bench.test"
PASSWORD = "bench-password-0"
SERVE = os.path.join(_HERE, "mailnetbench", "serve.py")

#: figure -> (label, unit, Dovecot 2.3 on a 2-core box as the issue measured it)
FIGURES = [
    ("append_per_s", "pipelined APPEND", "msg/s"),
    ("select", "SELECT", "s"),
    ("fetch_flags", "UID FETCH 1:* FLAGS", "s"),
    ("fetch_headers", "FETCH 1:* BODY.PEEK[HEADER]", "s"),
    ("first_sync", "first sync (FLAGS INTERNALDATE SIZE ENVELOPE)", "s"),
    ("search_subject", "UID SEARCH SUBJECT", "s"),
    ("search_body", "UID SEARCH BODY", "s"),
]


class Mailnet:
    name = "mailnet"

    def __init__(self, root: str) -> None:
        self.dataDir = os.path.join(root, "mailnet")
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.pid = 0

    def start(self, preload: int = 0) -> None:
        spec = {
            "kind": "mailnet",
            "dataDir": self.dataDir,
            "hostname": "bench.test",
            "domain": "bench.test",
            "users": [USER],
            "password": PASSWORD,
            "listeners": ["imap"],
            "cheapHash": True,
            "limits": {"max_connections": 5000, "max_connections_per_client": 5000},
        }
        if preload:
            spec["preload"] = {USER: [preload, 2048]}
        self.process = subprocess.Popen([sys.executable, SERVE, json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        info = json.loads(self.process.stdout.readline())
        self.port, self.pid = info["ports"]["imap"], info["pid"]

    def memory(self) -> Dict[str, int]:
        rss = procstat.memory(self.pid)["VmRSS"]
        return {"rss": rss, "pss": _pss([self.pid]) or rss}

    def stop(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


class Dovecot:
    name = "dovecot"

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "dovecot")
        self.process: Optional[subprocess.Popen] = None
        self.port = 0
        self.why = ""
        self.binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
        if self.binary is None:
            self.why = "dovecot is not installed (Debian: apt-get install dovecot-imapd)"

    def maildir(self) -> str:
        return os.path.join(self.root, "home", "user", "Maildir")

    def _configure(self) -> str:
        os.makedirs(os.path.join(self.root, "home"), exist_ok=True)
        with open(os.path.join(self.root, "passwd"), "w") as f:
            f.write("%s:{PLAIN}%s\n" % (USER, PASSWORD))
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            # Dovecot will not run a mail process as root; the files go to nobody.
            import pwd

            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for top, dirs, files in os.walk(self.root):
                for name in dirs + files:
                    os.chown(os.path.join(top, name), uid, gid)
            os.chown(self.root, uid, gid)
            os.chmod(os.path.dirname(self.root), 0o755)
        self.port = freePort()
        config = os.path.join(self.root, "dovecot.conf")
        with open(config, "w") as f:
            f.write(
                dovecotConfig("imap", self.root, self.port, uid, gid, _userName(), DOVECOT_IDLE_ROOM)
            )
        return config

    def start(self, preload: int = 0) -> None:
        if self.binary is None:
            raise RuntimeError(self.why)
        if preload:
            _preload(self.maildir(), preload)
        config = self._configure()
        self.process = subprocess.Popen([self.binary, "-F", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("dovecot exited: %s" % (self.process.stderr.read().decode(errors="replace")[-2000:],))
                time.sleep(0.1)
        raise RuntimeError("dovecot did not listen within 20 s")

    def pids(self) -> List[int]:
        """The master and every process below it."""
        assert self.process is not None
        found, frontier = [self.process.pid], [self.process.pid]
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
        while frontier:
            pid = frontier.pop()
            for child in children.get(pid, []):
                found.append(child)
                frontier.append(child)
        return found

    def memory(self) -> Dict[str, int]:
        pids = self.pids()
        rss = 0
        for pid in pids:
            try:
                rss += procstat.memory(pid).get("VmRSS", 0)
            except OSError:
                pass
        return {"rss": rss, "pss": _pss(pids) or rss}

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


# Room for the IDLE sessions of the memory figure (the defaults allow 10
# per user and address, 100 processes per service).
DOVECOT_IDLE_ROOM = """\
default_process_limit = 1000
default_client_limit = 10000
protocol imap {
  mail_max_userip_connections = 10000
}"""


def _userName() -> str:
    import pwd

    return "dovecot" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name


def _pss(pids: List[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid, "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def _preload(maildir: str, count: int) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    body = makeBody(2048)
    for i in range(count):
        data = (b"From: <load@sender.test>\nSubject: preloaded %d\n\n" % i) + body.replace(b"\r\n", b"\n")
        with open(os.path.join(maildir, "new", "%d.M%dP1Q%d.bench" % (1700000000 + i, i, i)), "wb") as f:
            f.write(data)


def idleMemory(server, count: int) -> Dict[str, float]:
    before = server.memory()
    sessions = imapload.openIdle("127.0.0.1", server.port, USER, PASSWORD, count)
    time.sleep(1)
    after = server.memory()
    imapload.closeIdle(sessions)
    return {key + "_per_idle": (after[key] - before[key]) / count for key in ("rss", "pss")}


def bigSelect(server, root: str, count: int) -> float:
    """SELECT of a C{count}-message INBOX after a restart (the index exists)."""
    server.start(preload=count)
    session = imapload.Session("127.0.0.1", server.port, timeout=600)
    session.login(USER, PASSWORD)
    session.command(b"SELECT INBOX")  # builds the index
    session.close()
    server.stop()
    server.start()
    session = imapload.Session("127.0.0.1", server.port, timeout=600)
    session.login(USER, PASSWORD)
    seconds, _ = imapload.timed(session, b"SELECT INBOX")
    session.close()
    server.stop()
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="smoke run: 200 messages, 1 round, 10 IDLE sessions")
    parser.add_argument("--messages", type=int, default=10000, help="messages per round (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating (default 3)")
    parser.add_argument("--idle", type=int, default=200, help="IDLE sessions for the memory figure (default 200)")
    parser.add_argument("--big", type=int, default=0, help="also SELECT a folder of this many messages after a restart")
    parser.add_argument("--only", choices=("mailnet", "dovecot"), help="measure one server")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--tmp", metavar="DIR", help="where the servers' data go (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    if args.short:
        args.messages, args.rounds, args.idle = 200, 1, 10
    root = tempfile.mkdtemp(prefix="mailnet-imapbench-", dir=args.tmp)
    servers = [Mailnet(root), Dovecot(root)]
    if args.only:
        servers = [s for s in servers if s.name == args.only]
    results: Dict[str, Dict[str, float]] = {s.name: {} for s in servers}
    problems: Dict[str, str] = {}
    try:
        for server in servers:
            try:
                server.start()
            except (RuntimeError, OSError, KeyError, ValueError) as e:
                problems[server.name] = str(e)
        live = [s for s in servers if s.name not in problems]
        for round in range(args.rounds):
            for server in live:
                print("round %d: %s" % (round + 1, server.name), file=sys.stderr, flush=True)
                figures = imapload.measure("127.0.0.1", server.port, USER, PASSWORD, args.messages, 2048)
                best = results[server.name]
                for key, value in figures.items():
                    better = max if key.endswith("_per_s") else min
                    best[key] = better(best.get(key, value), value)
        for server in live:
            results[server.name].update(idleMemory(server, args.idle))
            server.stop()
        if args.big:
            for server in live:
                print("big SELECT: %s" % (server.name,), file=sys.stderr, flush=True)
                results[server.name]["big_select"] = bigSelect(server, root, args.big)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    _print(results, problems, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "problems": problems, "messages": args.messages, "rounds": args.rounds}, f, indent=2)
    return 1 if "mailnet" in problems else 0


def _print(results, problems, args) -> None:
    names = list(results)
    rows = FIGURES + [("rss_per_idle", "server memory per IDLE session (RSS)", "KiB"), ("pss_per_idle", "  (PSS)", "KiB")]
    if args.big:
        rows.append(("big_select", "SELECT of %d after a restart" % args.big, "s"))
    print("%d x 2 KB messages, best of %d rounds; %d IDLE sessions" % (args.messages, args.rounds, args.idle))
    print("%-48s %14s" % ("figure", "") + "".join("%14s" % n for n in names) + ("%10s" % "ratio" if len(names) == 2 else ""))
    for key, label, unit in rows:
        values = [results[n].get(key) for n in names]
        cells = []
        for v in values:
            if v is None:
                cells.append("%14s" % "-")
            elif unit == "KiB":
                cells.append("%14.1f" % (v / 1024))
            elif unit == "s":
                cells.append("%14.4f" % v)
            else:
                cells.append("%14.0f" % v)
        ratio = ""
        if len(values) == 2 and values[0] and values[1]:
            # > 1 means mailnet is better.
            r = values[0] / values[1] if key.endswith("_per_s") else values[1] / values[0]
            ratio = "%9.2fx" % r
        print("%-48s %14s" % (label, unit) + "".join(cells) + ("%10s" % ratio if len(names) == 2 else ""))
    for name, why in problems.items():
        print("%s: not measured: %s" % (name, why))


if __name__ == "__main__":
    sys.exit(main())
