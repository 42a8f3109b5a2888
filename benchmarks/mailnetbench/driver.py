# -*- test-case-name: tests.test_benchmarks -*-
"""
The driver: starts each server under test on loopback in a child process,
runs the bounded cases against it, checks that every accepted message is
on disk, and reports a table and JSON.

Cases (see C{docs/performance.rst} for what each figure means):

  - C{smtp-2k-c1}, C{-c10}, C{-c50}: 2 KB messages over 1, 10, 50
    connections to the MTA listener; C{smtp-1m-c10}: 1 MB messages over 10.
  - C{stock-2k-c*}: the same against Twisted's stock ESMTP classes with the
    same durable delivery (L{mailnetbench.stock}).
  - C{pop3-one}, C{pop3-ten}: RETR of every message by one user, then by
    ten users at once.
  - C{idle}: many idle SMTP sessions and the server's RSS.
  - C{big}: one very large message and the rise of the server's peak RSS.
  - the machine's ceilings: file+dir fsync rate from 1 and 10 threads,
    loopback round trips.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import attr
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from mailnetbench import machine, procstat
from mailnetbench.idle import closeIdle, openIdle
from mailnetbench.messages import idsOnDisk, makeBody, messageFiles, wireSize
from mailnetbench.pop3load import runPOP3
from mailnetbench.report import MB, buildRows, formatTable
from mailnetbench.server import Server, startServer
from mailnetbench.smtpload import SMTPRun, Workload, runSMTP

DOMAIN = "bench.test"
PASSWORD = "bench-password-0"
CASES = ("machine", "smtp", "smtp-2k", "smtp-1m", "stock", "pop3", "idle", "big")


@attr.s(frozen=True, auto_attribs=True)
class Plan:
    """
    How much of everything: every case is bounded in count and in time.

    @ivar smtp: C{(connections, messages, seconds)} of each round of the
        2 KB cases.
    @ivar rounds: how many rounds of each 2 KB case, alternating between
        mailnet and the stock baseline.
    """

    mode: str
    smtp: Sequence[Sequence[int]]
    rounds: int
    smtpLarge: Sequence[int]
    pop3Messages: int
    idle: int
    idleSeconds: float
    big: int
    ceilingSeconds: float


FULL = Plan(
    mode="full",
    smtp=((1, 1500, 4), (10, 5000, 4), (50, 8000, 4)),
    rounds=3,
    smtpLarge=(10, 1000, 15),
    pop3Messages=1000,
    idle=10000,
    idleSeconds=120,
    big=50 * MB,
    ceilingSeconds=2.0,
)

SHORT = Plan(
    mode="short",
    smtp=((1, 10, 5), (10, 40, 5), (50, 100, 5)),
    rounds=1,
    smtpLarge=(10, 10, 10),
    pop3Messages=20,
    idle=100,
    idleSeconds=10,
    big=2 * MB,
    ceilingSeconds=0.2,
)


def percentile(values: Sequence[float], p: float) -> Optional[float]:
    """The nearest-rank C{p}th percentile, or L{None} for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class Driver:
    def __init__(
        self, reactor, plan: Plan, root: str, only: Sequence[str], profileDir: Optional[str], log, profiler: str = "pyinstrument"
    ) -> None:
        self.reactor = reactor
        self.profiler = profiler
        self.plan = plan
        self.root = root
        self.only = only
        self.profileDir = profileDir
        self.log = log
        self.cert: Optional[str] = None
        self.key: Optional[str] = None
        self.results: Dict[str, Any] = {
            "mode": plan.mode,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine.describe(),
            "commit": _commit(),
            "ceilings": {},
            "cases": {},
            "only": list(only),
            "errors": [],
            "lost": 0,
            "refused": 0,
        }

    def wanted(self, case: str) -> bool:
        # "smtp" stands for both of its parts.
        return not self.only or case in self.only or case.split("-")[0] in self.only

    # --- servers -------------------------------------------------------

    async def server(self, name: str, kind: str = "mailnet", users: Sequence[str] = (), listeners=("smtp",), **extra) -> Server:
        spec: Dict[str, Any] = {
            "kind": kind,
            "dataDir": os.path.join(self.root, name),
            "hostname": "mx." + DOMAIN,
            "domain": DOMAIN,
            "users": list(users),
            "password": PASSWORD,
            "listeners": list(listeners),
            "cert": self.cert,
            "key": self.key,
            # A smoke run does not time logins: spare it ten Argon2 checks.
            "cheapHash": self.plan.mode == "short",
        }
        spec.update(extra)
        if self.profileDir:
            spec["profile"] = os.path.join(os.path.abspath(self.profileDir), "%s-%s.txt" % (name, self.profiler))
            spec["profiler"] = self.profiler
        server = await startServer(self.reactor, spec)
        if kind == "mailnet" and self.cert is None:
            # One certificate for every later server: no key generation each time.
            self.cert, self.key = server.info.get("cert"), server.info.get("key")
        self.log("  %s server pid %d, ports %s" % (name, server.pid, server.ports))
        return server

    # --- cases ---------------------------------------------------------

    async def ceilings(self) -> None:
        seconds = self.plan.ceilingSeconds
        directory = os.path.join(self.root, "fsync")
        for key, threads in (("fsync1", 1), ("fsync10", 10)):
            figure = await deferToThread(machine.fsyncRate, os.path.join(directory, key), threads, seconds, 100000)
            self.results["ceilings"][key] = figure
            self.log("  %s: %.0f/s" % (key, figure["per_second"]))
        figure = await deferToThread(machine.createRate, os.path.join(directory, "create"), seconds, 100000)
        self.results["ceilings"]["create"] = figure
        self.log("  file create+write: %.0f/s, %.3f ms CPU each" % (figure["per_second"], figure["cpu_ms_per_op"] or 0))
        shutil.rmtree(directory, ignore_errors=True)
        figure = await deferToThread(machine.loopbackRoundTrips, seconds, 1000000)
        self.results["ceilings"]["rtt"] = figure
        self.log("  loopback round trips: %.0f/s" % (figure["per_second"],))

    async def ceilingsAgain(self) -> None:
        """
        The disk ceilings once more at the end: how far the machine drifted
        during the run (other load, the disk's own state).
        """
        seconds = self.plan.ceilingSeconds
        directory = os.path.join(self.root, "fsync-after")
        after = self.results["ceilings_after"] = {}
        after["fsync1"] = await deferToThread(machine.fsyncRate, os.path.join(directory, "fsync1"), 1, seconds, 100000)
        after["create"] = await deferToThread(machine.createRate, os.path.join(directory, "create"), seconds, 100000)
        shutil.rmtree(directory, ignore_errors=True)
        self.results["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.log("  fsync1: %.0f/s, create: %.0f/s" % (after["fsync1"]["per_second"], after["create"]["per_second"]))

    async def smtpRound(self, server: Server, name: str, connections: int, count: int, seconds: float, size: int) -> Dict[str, Any]:
        """
        One bounded round of an SMTP case: C{count} messages or C{seconds},
        whichever comes first.  The raw figures, to be merged by
        L{smtpSummary}.
        """
        run = SMTPRun(name, server.spec["users"], makeBody(size), Workload(count, time.perf_counter() + seconds))
        before = procstat.cpuBreakdown(server.pid)
        client = _ownCPU()
        await runSMTP(self.reactor, server.ports["smtp"], run, connections, timeout=seconds + 60 + size / MB)
        client = _ownCPU() - client
        after = procstat.cpuBreakdown(server.pid)
        accepted = len(run.accepted)
        elapsed = (run.lastAccepted - run.firstSent) if accepted and run.firstSent else 0.0
        raw: Dict[str, Any] = {
            "accepted": accepted,
            "seconds": elapsed,
            "latencies": run.latencies,
            "refused": run.refused,
            "errors": run.errors,
            "pipelining": run.pipelining,
            "client": client,
            "cpu": {key: after[key] - before[key] for key in after},
        }
        raw.update(await self.verify(server, name, run.accepted))
        return raw

    def smtpSummary(self, rounds: List[Dict[str, Any]], connections: int, size: int) -> Dict[str, Any]:
        """
        Merge rounds: rates and CPU over all messages of all rounds,
        percentiles over all latencies, and each round's rate to show the
        spread.
        """
        accepted = sum(r["accepted"] for r in rounds)
        elapsed = sum(r["seconds"] for r in rounds)
        latencies = [x for r in rounds for x in r["latencies"]]
        cpu = {key: sum(r["cpu"][key] for r in rounds) for key in ("user", "system", "reactor")}
        result: Dict[str, Any] = {
            "connections": connections,
            "size": size,
            "rounds": len(rounds),
            "accepted": accepted,
            "refused": sum(len(r["refused"]) for r in rounds),
            "errors": [e for r in rounds for e in r["errors"]][:20],
            "refusals": [e for r in rounds for e in r["refused"]][:20],
            "pipelining": rounds[0]["pipelining"] if rounds else None,
            "seconds": elapsed,
            "msgs_per_s": accepted / elapsed if elapsed else None,
            "round_msgs_per_s": [round(r["accepted"] / r["seconds"], 1) if r["seconds"] else None for r in rounds],
            "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)),
            "cpu_seconds": cpu["user"] + cpu["system"],
            "cpu_ms_per_msg": (cpu["user"] + cpu["system"]) * 1000 / accepted if accepted else None,
            # The load generator shares the machine: if it is near a whole
            # core, it, not the server, may be the limit.
            "client_cpu_ms_per_msg": sum(r["client"] for r in rounds) * 1000 / accepted if accepted else None,
        }
        if accepted:
            # Where it went: user or kernel time; the reactor thread or the pool.
            for key, value in cpu.items():
                result["cpu_%s_ms_per_msg" % (key,)] = value * 1000 / accepted
        for key in ("lost", "duplicated", "stored_not_accepted"):
            result[key] = sum(r[key] for r in rounds)
        result["lost_ids"] = [i for r in rounds for i in r["lost_ids"]][:10]
        return result

    async def smtpCase(self, server: Server, name: str, connections: int, count: int, seconds: float, size: int) -> Dict[str, Any]:
        """A case of one round."""
        raw = await self.smtpRound(server, name, connections, count, seconds, size)
        return self.smtpSummary([raw], connections, size)

    async def verify(self, server: Server, name: str, accepted: Dict[str, str]) -> Dict[str, Any]:
        """
        Every accepted message must be on disk, once, in its recipient's
        Maildir.
        """
        onDisk = await deferToThread(idsOnDisk, server.maildirs.values())
        prefix = name + "-"  # see SMTPRun.nextMessage
        lost = [i for i in accepted if i not in onDisk]
        duplicated = [i for i in accepted if onDisk.get(i, 0) > 1]
        unacknowledged = [i for i in onDisk if i.startswith(prefix) and i not in accepted]
        return {"lost": len(lost), "lost_ids": lost[:10], "duplicated": len(duplicated), "stored_not_accepted": len(unacknowledged)}

    def record(self, name: str, result: Dict[str, Any]) -> None:
        self.results["cases"][name] = result
        self.results["lost"] += result.get("lost", 0) + result.get("duplicated", 0)
        self.results["refused"] += result.get("refused", 0)
        for error in result.get("errors", ()):
            self.results["errors"].append("%s: %s" % (name, error))
        shown = {k: v for k, v in result.items() if k not in ("errors", "refusals", "lost_ids") and v not in (None, [], {})}
        self.log("  %s: %s" % (name, ", ".join("%s=%s" % (k, _short(v)) for k, v in shown.items())))

    async def smtpCases(self) -> None:
        """
        The 2 KB cases against mailnet and against Twisted's stock classes,
        in alternating rounds (mailnet, stock, mailnet, stock ...) so that
        both see the same drift in the machine's speed; then 1 MB.
        """
        users = ["u%d@%s" % (i, DOMAIN) for i in range(10)]
        servers: Dict[str, Server] = {}
        try:
            if self.wanted("smtp-2k") or self.wanted("smtp-1m"):
                servers["smtp"] = await self.server("smtp", users=users)
            if self.wanted("stock"):
                servers["stock"] = await self.server("stock", kind="stock", users=users)
            if self.wanted("smtp-2k") or self.wanted("stock"):
                for connections, count, seconds in self.plan.smtp:
                    rounds: Dict[str, List[Dict[str, Any]]] = {prefix: [] for prefix in servers if prefix != "smtp" or self.wanted("smtp-2k")}
                    for n in range(self.plan.rounds):
                        for prefix, list_ in rounds.items():
                            name = "%s-2k-c%d.%d" % (prefix, connections, n)
                            list_.append(await self.smtpRound(servers[prefix], name, connections, count, seconds, 2048))
                    for prefix, list_ in rounds.items():
                        self.record("%s-2k-c%d" % (prefix, connections), self.smtpSummary(list_, connections, 2048))
            if self.wanted("smtp-1m"):
                connections, count, seconds = self.plan.smtpLarge
                name = "smtp-1m-c%d" % (connections,)
                self.record(name, await self.smtpCase(servers["smtp"], name, connections, count, seconds, 1 << 20))
        finally:
            for server in servers.values():
                await server.stop()

    async def pop3Cases(self) -> None:
        count = self.plan.pop3Messages
        users = ["p%d@%s" % (i, DOMAIN) for i in range(10)]
        server = await self.server("pop3", users=users, listeners=("pop3",), preload={u: [count, 2048] for u in users})
        try:
            for name, who in (("pop3-one", users[:1]), ("pop3-ten", users)):
                marks: Dict[str, float] = {}

                def ready(marks: Dict[str, float] = marks) -> None:
                    # Logins (Argon2) done: measure the RETRs alone.
                    marks.update(cpu=procstat.cpuSeconds(server.pid), client=_ownCPU())

                sessions = await runPOP3(
                    self.reactor, server.ports["pop3"], who, PASSWORD, timeout=60 + count / 100, onReady=ready
                )
                cpu1, client = procstat.cpuSeconds(server.pid), _ownCPU() - marks.get("client", 0.0)
                cpu0 = marks.get("cpu", cpu1)
                retrieved = sum(s.retrieved for s in sessions)
                started = min((s.retrStarted for s in sessions if s.retrStarted), default=0.0)
                done = max((s.retrDone for s in sessions), default=0.0)
                elapsed = done - started if started and done > started else None
                result: Dict[str, Any] = {
                    "users": len(who),
                    "messages": retrieved,
                    "pipelining": sessions[0].pipelining,
                    "retr_seconds": elapsed,
                    "msgs_per_s": retrieved / elapsed if elapsed else None,
                    "login_seconds": max((s.loginDone - s.loginStarted for s in sessions if s.loginDone), default=None),
                    "errors": [e for s in sessions for e in s.errors][:20],
                    # RETRs and QUIT only; logins are timed in login_seconds.
                    "cpu_ms_per_msg": (cpu1 - cpu0) * 1000 / retrieved if retrieved else None,
                    "client_cpu_ms_per_msg": client * 1000 / retrieved if retrieved else None,
                }
                # Nothing lost: each session saw every preloaded message, and
                # retrieved exactly the octets STAT announced.
                result["lost"] = sum(
                    max(count - s.count, 0) + max(s.count - s.retrieved, 0) + s.missingIds + (s.octets != s.retrievedOctets)
                    for s in sessions
                )
                self.record(name, result)
        finally:
            await server.stop()

    async def idleCase(self) -> None:
        clientLimit = procstat.raiseFileLimit()
        limit = self.plan.idle + 200
        server = await self.server("idle", users=["u0@%s" % (DOMAIN,)], limits={"max_connections": limit})
        try:
            # Each session holds one descriptor here and one in the server.
            wanted = min(self.plan.idle, clientLimit - 100, server.info["nofile"] - 100)
            note = None
            if wanted < self.plan.idle:
                note = "RLIMIT_NOFILE hard limits (client %d, server %d) allow only %d sessions" % (
                    clientLimit,
                    server.info["nofile"],
                    wanted,
                )
                self.log("  " + note)
            before = procstat.memory(server.pid)["VmRSS"]
            started = time.perf_counter()
            run = await openIdle(self.reactor, server.ports["smtp"], wanted, self.plan.idleSeconds)
            opened = time.perf_counter() - started
            # Let the server settle (deferred work, allocator) before reading.
            await deferLater(self.reactor, 1.0, lambda: None)
            after = procstat.memory(server.pid)["VmRSS"]
            closeIdle(run)
            result = {
                "wanted": self.plan.idle,
                "tried": wanted,
                "established": run.established,
                "open_seconds": opened,
                "rss_before": before,
                "rss_after": after,
                "rss_per_session": (after - before) / 1024 / run.established if run.established else None,
                "note": note,
                "errors": run.errors[:20],
            }
            await deferLater(self.reactor, 0.5, lambda: None)
            self.record("idle", result)
        finally:
            await server.stop()

    async def bigCase(self) -> None:
        size = self.plan.big
        server = await self.server("big", users=["u0@%s" % (DOMAIN,)], limits={"max_message_size": size + 2 * MB})
        try:
            before = procstat.memory(server.pid)
            reset = procstat.resetPeak(server.pid)
            base = procstat.memory(server.pid)["VmRSS" if reset else "VmHWM"]
            result = await self.smtpCase(server, "big", 1, 1, 120, size)
            after = procstat.memory(server.pid)
            # Stored whole: the largest file holds at least what was sent.
            files = [p for m in server.maildirs.values() for p in messageFiles(m)]
            stored = max((wireSize(p) for p in files), default=0)
            if result["accepted"] and stored < size:
                result["lost"] += 1
                result["errors"].append("the stored message has %d octets, fewer than the %d sent" % (stored, size))
            result["stored_octets"] = stored
            result.update(
                rss_before=before["VmRSS"],
                hwm_before=before["VmHWM"],
                hwm_after=after["VmHWM"],
                peak_reset=reset,
                peak_rise=after["VmHWM"] - base,
                size=size,
            )
            self.record("big", result)
        finally:
            await server.stop()

    async def run(self) -> Dict[str, Any]:
        steps = [
            ("machine", self.ceilings),
            ("smtp", self.smtpCases),
            ("pop3", self.pop3Cases),
            ("idle", self.idleCase),
            ("big", self.bigCase),
        ]
        for name, step in steps:
            if not (self.wanted(name) or (name == "smtp" and (self.wanted("smtp-2k") or self.wanted("smtp-1m") or self.wanted("stock")))):
                continue
            self.log("%s ..." % (name,))
            try:
                await step()
            except Exception as e:
                self.results["errors"].append("%s: %s: %s" % (name, type(e).__name__, e))
                self.log("  %s failed: %s" % (name, e))
        if self.wanted("machine"):
            self.log("machine, again ...")
            await self.ceilingsAgain()
        rows = buildRows(self.results)
        self.results["rows"] = [row.asDict() for row in rows]
        self.results["table"] = formatTable(rows)
        self.results["ok"] = not self.results["errors"] and not self.results["lost"] and not self.results["refused"]
        return self.results


def _ownCPU() -> float:
    """The load generator's own CPU seconds (this process)."""
    times = os.times()
    return times.user + times.system


def _ms(seconds: Optional[float]) -> Optional[float]:
    return seconds * 1000 if seconds is not None else None


def _short(value: Any) -> str:
    if isinstance(value, float):
        return "%.4g" % (value,)
    return str(value)


def _commit() -> Optional[str]:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parseArguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run.py", description="mailnet benchmark suite (loopback only)")
    parser.add_argument("--short", action="store_true", help="smoke run: tiny counts, a few seconds")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE ('-' for stdout)")
    parser.add_argument("--only", metavar="CASE", action="append", choices=CASES, help="run only these (repeatable): " + ", ".join(CASES))
    parser.add_argument("--profile", metavar="DIR", help="profile each server's reactor thread, a report per server in DIR")
    parser.add_argument(
        "--profiler",
        choices=("pyinstrument", "cprofile"),
        default="pyinstrument",
        help="pyinstrument: wall-clock samples (shows blocking calls); cprofile: reactor-thread CPU time per function",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--tmp", metavar="DIR", help="where to put the data (default: the system's temporary directory)")
    return parser.parse_args(argv)


async def main(reactor, argv: List[str]) -> int:
    options = parseArguments(argv)
    plan = SHORT if options.short else FULL
    procstat.raiseFileLimit()
    if options.profile:
        os.makedirs(options.profile, exist_ok=True)
    root = tempfile.mkdtemp(prefix="mailnet-bench-", dir=options.tmp)

    def log(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    log("mailnet benchmarks (%s run), data in %s" % (plan.mode, root))
    try:
        results = await Driver(reactor, plan, root, options.only or (), options.profile, log, options.profiler).run()
    finally:
        if not options.keep:
            await deferToThread(shutil.rmtree, root, True)
    m = results["machine"]
    sys.stdout.write(
        "mailnet benchmarks, %s run, %s, commit %s\n%s cores, %s, Linux %s, Python %s, Twisted %s\n"
        % (results["mode"], results["date"], results["commit"], m["nproc"], m["cpu"], m["kernel"], m["python"], m["twisted"])
    )
    loads = [m.get("loadavg"), results.get("loadavg_after")]
    if all(loads):
        sys.stdout.write("load average (1 min) %.1f at the start, %.1f at the end" % (loads[0][0], loads[1][0]))
        if max(loads[0][0], loads[1][0]) > (m["nproc"] or 1) / 2:
            # Others' work shares the cores and the disk: figures are low and noisy.
            sys.stdout.write(": THE MACHINE WAS BUSY, figures are not representative")
        sys.stdout.write("\n")
    sys.stdout.write("\n%s\n" % (results["table"],))
    if results["errors"] or results["lost"] or results["refused"]:
        sys.stdout.write("\nlost: %d, refused: %d\n" % (results["lost"], results["refused"]))
        for error in results["errors"]:
            sys.stdout.write("error: %s\n" % (error,))
    text = json.dumps(results, indent=2, default=str)
    if options.json == "-" or not options.json:
        sys.stdout.write("\n" + text + "\n")
    else:
        with open(options.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if results["ok"] else 1


def runMain(main: Any, argv: List[str]) -> None:
    """
    Run the coroutine C{main(reactor, argv)} on a new reactor and exit with
    the status it returns (the benchmarks' entry points).
    """
    from twisted.internet.task import react

    def start(reactor) -> Deferred:
        d = Deferred.fromCoroutine(main(reactor, argv))

        def exit(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(exit)

    react(start, [])


def run(argv: List[str]) -> None:
    """The entry point: C{python benchmarks/run.py [--short] ...}."""
    runMain(main, argv)
