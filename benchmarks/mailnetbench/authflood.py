# -*- test-case-name: tests.test_benchmarks -*-
"""
The login-flood case (issue 11, item 2): while many connections guess a
password with SMTP AUTH as fast as the server answers, how long do honest
clients wait?

  - the flood: C{attackers} connections to the submission listener (AUTH
    PLAIN without TLS: the server under test allows plain-text logins on
    loopback), each sending C{AUTH PLAIN} with a wrong password for one
    victim again and again, each as soon as the previous answer came;
    from one source address (C{127.0.0.1}) or spread over C{sources}
    addresses (C{127.0.1.x}: a botnet);
  - honest mail: one message at a time to the MTA listener (connect,
    EHLO, MAIL, RCPT, DATA, QUIT) from C{127.0.0.3}; the latency is from
    the connect to the 250 after the data;
  - honest logins: POP3 C{USER}/C{PASS} with the right password from
    C{127.0.0.2}; the latency is from the connect to the C{+OK} of PASS.

The honest figures are taken once on the idle server and then during the
flood.  Nothing leaves the loopback interface, and every part is bounded in
time.  Run it with C{python benchmarks/authflood.py} (see C{--help}).
"""

import argparse
import base64
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater

from mailnetbench import machine, procstat
from mailnetbench.server import SERVE, startServer

DOMAIN = "bench.test"
PASSWORD = "bench-password-0"
VICTIM = "victim@" + DOMAIN
HONEST = "honest@" + DOMAIN

#: Goals of issue 11 under a 150-connection flood.
DELIVERY_GOAL = 1.0
LOGIN_GOAL = 3.0


class LineClient(Protocol):
    """
    A lean line-based client: C{expect()} returns a L{Deferred} that fires
    with the next complete reply (for SMTP: all lines up to the one without
    a C{-} after the code).
    """

    smtp = True

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: List[bytes] = []
        self._waiting: Optional[Deferred] = None
        self.lost: Deferred = Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            self._lines.append(line)
            if self.smtp and line[3:4] == b"-":
                continue
            reply, self._lines = self._lines, []
            waiting, self._waiting = self._waiting, None
            if waiting is not None:
                waiting.callback(reply)

    def expect(self) -> Deferred:
        assert self._waiting is None
        self._waiting = Deferred()
        return self._waiting

    def send(self, line: bytes) -> Deferred:
        d = self.expect()
        self.transport.write(line + b"\r\n")
        return d

    def connectionLost(self, reason=None) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(ConnectionError("connection lost"))
        self.lost.callback(None)


class POP3Client(LineClient):
    smtp = False


async def connect(reactor, port: int, source: str, protocol=LineClient, timeout: float = 30) -> LineClient:
    factory = ClientFactory()
    factory.protocol = protocol
    factory.connected = Deferred()  # type: ignore[attr-defined]

    def failed(connector, reason) -> None:
        factory.connected.errback(reason)  # type: ignore[attr-defined]

    factory.clientConnectionFailed = failed  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory, timeout=timeout, bindAddress=(source, 0))
    return await factory.connected  # type: ignore[attr-defined]


class Flood:
    """The attackers: counts of answers by reply code, and of reconnects."""

    def __init__(self, reactor, port: int, attackers: int, sources: int) -> None:
        self.reactor = reactor
        self.port = port
        self.attackers = attackers
        self.sources = sources
        self.running = True
        self.answers: Dict[str, int] = {}
        self.connections = 0
        self.errors: List[str] = []
        self._done: List[Deferred] = []
        self._clients: Set[LineClient] = set()

    def source(self, index: int) -> str:
        if self.sources <= 1:
            return "127.0.0.1"
        n = index % self.sources
        return "127.0.%d.%d" % (1 + n // 250, 1 + n % 250)

    def start(self) -> None:
        for i in range(self.attackers):
            self._done.append(Deferred.fromCoroutine(self._attacker(i)))

    async def _attacker(self, index: int) -> None:
        token = base64.b64encode(b"\0" + VICTIM.encode() + b"\0wrong-" + str(index).encode())
        while self.running:
            try:
                client = await connect(self.reactor, self.port, self.source(index))
                self.connections += 1
                self._clients.add(client)
                client.lost.addCallback(lambda _, c=client: self._clients.discard(c))
                await client.expect()
                await client.send(b"EHLO attacker.test")
                while self.running and not client.closed:
                    reply = await client.send(b"AUTH PLAIN " + token)
                    code = reply[-1][:3].decode("ascii", "replace")
                    self.answers[code] = self.answers.get(code, 0) + 1
                    if code == "421":
                        break
                client.transport.loseConnection()
            except Exception as e:  # reconnect: the flood goes on
                if not self.running:
                    break
                if len(self.errors) < 20:
                    self.errors.append("%s: %s" % (type(e).__name__, e))
                await deferLater(self.reactor, 0.1, lambda: None)

    async def stop(self) -> None:
        self.running = False
        # Without waiting for the answers (a throttled one takes 30 s).
        for client in list(self._clients):
            client.transport.abortConnection()
        for d in self._done:
            d.addTimeout(60, self.reactor)
            try:
                await d
            except Exception:
                pass


async def deliverOnce(reactor, port: int, number: int) -> Tuple[float, str]:
    """One honest message to the MTA listener; @return: (seconds, last reply)."""
    started = time.perf_counter()
    client = await connect(reactor, port, "127.0.0.3")
    try:
        await client.expect()
        await client.send(b"EHLO honest-mta.test")
        await client.send(b"MAIL FROM:<sender@remote.test>")
        await client.send(b"RCPT TO:<" + HONEST.encode() + b">")
        await client.send(b"DATA")
        message = b"Subject: honest %d\r\nMessage-ID: <h%d@remote.test>\r\n\r\nHello.\r\n.\r\n" % (number, number)
        reply = await client.send(message.rstrip(b"\r\n"))
        elapsed = time.perf_counter() - started
        return elapsed, reply[-1].decode("utf-8", "replace")
    finally:
        client.transport.loseConnection()


async def loginOnce(reactor, port: int) -> Tuple[float, str]:
    """One honest POP3 login; @return: (seconds, the answer to PASS)."""
    started = time.perf_counter()
    client = await connect(reactor, port, "127.0.0.2", POP3Client)
    try:
        await client.expect()
        await client.send(b"USER " + HONEST.encode())
        reply = await client.send(b"PASS " + PASSWORD.encode())
        elapsed = time.perf_counter() - started
        await client.send(b"QUIT")
        return elapsed, reply[-1].decode("utf-8", "replace")
    finally:
        client.transport.loseConnection()


async def bounded(reactor, coroutine, timeout: float) -> Tuple[float, str]:
    """Run an honest client's C{coroutine}, giving up after C{timeout} seconds."""
    try:
        return await Deferred.fromCoroutine(coroutine).addTimeout(timeout, reactor)
    except Exception as e:
        return timeout, "no answer in %g s (%s)" % (timeout, type(e).__name__)


async def honest(reactor, ports: Dict[str, int], count: int, interval: float, timeout: float = 60) -> Dict[str, Any]:
    """C{count} deliveries and C{count} logins, alternating, C{interval} apart."""
    deliveries: List[float] = []
    logins: List[float] = []
    failed: List[str] = []
    for i in range(count):
        seconds, answer = await bounded(reactor, deliverOnce(reactor, ports["smtp"], i), timeout)
        deliveries.append(seconds)
        if not answer.startswith("250"):
            failed.append("delivery: " + answer)
        seconds, answer = await bounded(reactor, loginOnce(reactor, ports["pop3"]), timeout)
        logins.append(seconds)
        if not answer.startswith("+OK"):
            failed.append("login: " + answer)
        await deferLater(reactor, interval, lambda: None)
    return {
        "deliveries_s": [round(s, 4) for s in deliveries],
        "logins_s": [round(s, 4) for s in logins],
        "delivery_max_s": round(max(deliveries), 4),
        "delivery_median_s": round(sorted(deliveries)[len(deliveries) // 2], 4),
        "login_max_s": round(max(logins), 4),
        "login_median_s": round(sorted(logins)[len(logins) // 2], 4),
        "failed": failed,
    }


async def runFlood(reactor, options: argparse.Namespace) -> Dict[str, Any]:
    root = tempfile.mkdtemp(prefix="mailnet-authflood-", dir=options.tmp)
    spec: Dict[str, Any] = {
        "kind": "mailnet",
        "dataDir": os.path.join(root, "server"),
        "hostname": "mx." + DOMAIN,
        "domain": DOMAIN,
        "users": [VICTIM, HONEST],
        "password": PASSWORD,
        "listeners": ["smtp", "submission", "pop3"],
        # Real Argon2 costs: they are what the flood is about.
        "cheapHash": False,
    }
    if options.hash_threads:
        spec["hashThreads"] = options.hash_threads
    serve = os.path.join(os.path.abspath(options.checkout), "benchmarks", "mailnetbench", "serve.py") if options.checkout else SERVE
    results: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.describe(),
        "checkout": os.path.abspath(options.checkout) if options.checkout else "this one",
        "attackers": options.attackers,
        "sources": options.sources,
        "seconds": options.seconds,
    }
    server = await startServer(reactor, spec, serve=serve)
    try:
        ports = server.ports
        log("server pid %d, ports %s" % (server.pid, ports))
        log("honest clients on the idle server ...")
        results["idle"] = await honest(reactor, ports, options.count, options.interval)
        flood = Flood(reactor, ports["submission"], options.attackers, options.sources)
        cpu = procstat.cpuSeconds(server.pid)
        started = time.perf_counter()
        flood.start()
        log("flood: %d connections from %d address(es); waiting %.0f s ..." % (options.attackers, options.sources, options.warmup))
        await deferLater(reactor, options.warmup, lambda: None)
        log("honest clients during the flood ...")
        results["flood"] = await honest(reactor, ports, options.count, options.interval)
        remaining = options.seconds - (time.perf_counter() - started)
        if remaining > 0:
            await deferLater(reactor, remaining, lambda: None)
        elapsed = time.perf_counter() - started
        results["flood"].update(
            answers=dict(flood.answers),
            answers_per_s={code: round(n / elapsed, 1) for code, n in flood.answers.items()},
            connections=flood.connections,
            server_cpu_s_per_s=round((procstat.cpuSeconds(server.pid) - cpu) / elapsed, 2),
            attacker_errors=flood.errors[:5],
            seconds=round(elapsed, 1),
        )
        await flood.stop()
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)
    flooded = results["flood"]
    results["met"] = {
        "delivery": flooded["delivery_max_s"] < DELIVERY_GOAL and not flooded["failed"],
        "login": flooded["login_max_s"] < LOGIN_GOAL and not flooded["failed"],
    }
    return results


def formatResults(results: Dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "mailnet login flood, %s, checkout %s" % (results["date"], results["checkout"]),
        "%s cores, %s, load average %s" % (m["nproc"], m["cpu"], m["loadavg"]),
        "%d wrong-password AUTH connections from %d address(es), %s s"
        % (results["attackers"], results["sources"], results["flood"]["seconds"]),
        "",
        "%-28s %10s %10s" % ("", "idle", "flood"),
    ]
    for key, label in (
        ("delivery_median_s", "delivery, median (s)"),
        ("delivery_max_s", "delivery, max (s)"),
        ("login_median_s", "POP3 login, median (s)"),
        ("login_max_s", "POP3 login, max (s)"),
    ):
        lines.append("%-28s %10.3f %10.3f" % (label, results["idle"][key], results["flood"][key]))
    flood = results["flood"]
    lines += [
        "",
        "attacker answers per second: %s" % (", ".join("%s: %s" % kv for kv in sorted(flood["answers_per_s"].items())),),
        "server CPU during the flood: %s s/s" % (flood["server_cpu_s_per_s"],),
        "honest failures: %s" % (flood["failed"] + results["idle"]["failed"] or "none",),
        "goals (deliveries < %g s, logins < %g s): delivery %s, login %s"
        % (DELIVERY_GOAL, LOGIN_GOAL, "met" if results["met"]["delivery"] else "NOT met", "met" if results["met"]["login"] else "NOT met"),
    ]
    return "\n".join(lines)


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def parseArguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="authflood.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="a smoke run: 5 attackers, 2 honest rounds")
    parser.add_argument("--attackers", type=int, default=150)
    parser.add_argument("--sources", type=int, default=1, help="source addresses of the attackers (127.0.1.x)")
    parser.add_argument("--seconds", type=float, default=40, help="length of the flood")
    parser.add_argument("--warmup", type=float, default=5, help="flood seconds before the honest clients start")
    parser.add_argument("--count", type=int, default=10, help="honest deliveries and logins, each")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--checkout", help="run the server from another checkout (e.g. /work/main, for a before figure)")
    parser.add_argument("--hash-threads", type=int, default=0, help="override the hashing pool's size")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--json", help="also write the results here")
    options = parser.parse_args(argv)
    if options.short:
        options.attackers, options.seconds, options.warmup, options.count, options.interval = 5, 2, 0.5, 2, 0.1
    return options


async def main(reactor, argv: List[str]) -> int:
    options = parseArguments(argv)
    results = await runFlood(reactor, options)
    print(formatResults(results))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0 if not (results["flood"]["failed"] or results["idle"]["failed"]) else 1


def run(argv: List[str]) -> None:
    from mailnetbench.driver import runMain

    procstat.raiseFileLimit()
    runMain(main, argv)
