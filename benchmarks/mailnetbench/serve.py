# -*- test-case-name: tests.test_benchmarks -*-
"""
The server under test, in its own process:

    python serve.py SPEC

where SPEC is JSON: C{kind} (C{"mailnet"} or C{"stock"}), C{dataDir},
C{hostname}, C{domain}, C{users}, C{password}, C{listeners} (mailnet
roles), C{limits} (L{mailnet.config.Limits} fields), C{cert} and C{key}
(optional, to skip generating a certificate), C{preload} (address ->
C{[count, size]}: messages written straight into the Maildir before the
start), C{profile} (optional path: profile the reactor thread and write a
text report there on exit) and C{profiler} (C{"pyinstrument"} or
C{"cprofile"}, see L{startProfiler}) and C{cheapHash} (store the users'
password hashed with the cheapest Argon2 parameters, for smoke runs) and
C{hashThreads} (optional: the size of the password-hashing pool) and
C{workers} (optional: C{[server] workers}).

Once listening it prints one JSON line: C{pid}, C{ports} (role -> port),
C{nofile}, C{cert}, C{key}, C{maildirs} (address -> path).  It stops on
SIGTERM, or when its standard input closes, so it never outlives the
driver.
"""

import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Benchmark this checkout's mailnet, whatever is installed.
sys.path[:0] = [os.path.dirname(os.path.dirname(_HERE)), os.path.dirname(_HERE)]

from twisted.internet import stdio  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402
from twisted.logger import globalLogBeginner, textFileLogObserver  # noqa: E402

from mailnetbench.messages import header, makeBody  # noqa: E402
from mailnetbench.procstat import raiseFileLimit  # noqa: E402


class _WatchStdin(Protocol):
    """Stops the reactor when the driver closes our stdin (or dies)."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def connectionLost(self, reason=None) -> None:
        if self._reactor.running:
            self._reactor.stop()


def preload(maildir: str, address: str, count: int, size: int, hostname: str) -> None:
    """
    Write C{count} messages into C{maildir}'s C{new/} (no fsync: set-up
    only) as mailnet's own delivery stores them: LF line ends, the stored
    size C{S=} and the wire size C{W=} in the name (the peer's preload
    writes the same LF files).
    """
    from mailnet.store.maildir import ensureMaildir, uniqueName

    ensureMaildir(maildir)
    body = makeBody(size)
    for i in range(count):
        wire = header("pre-%s-%d" % (address, i), address) + body
        data = wire.replace(b"\r\n", b"\n")
        name = "%s,S=%d,W=%d" % (uniqueName(hostname), len(data), len(wire))
        with open(os.path.join(maildir, "new", name), "xb") as f:
            f.write(data)


def buildMailnet(reactor, spec: dict):
    import ipaddress

    import attr

    from mailnet.config import LISTENERS, Limits, loadConfig
    from mailnet.passwords import hashPassword, lowCostHasher
    from mailnet.service import MailService

    settings = {
        "server.data_dir": spec["dataDir"],
        "server.hostname": spec["hostname"],
        "server.domain": (spec["domain"],),
        # The load generator logs in without TLS, to measure POP3 itself.
        "tls.allow_plaintext_auth": True,
        # The load generator is a local client: no SPF/DKIM/DMARC verdicts,
        # whose DNS look-ups would leave the loopback interface.
        "auth.trusted_networks": (ipaddress.ip_network("127.0.0.0/8"),),
    }
    if spec.get("workers"):
        # [server] workers: the parent's pid is the one reported.
        settings["server.workers"] = int(spec["workers"])
    if spec.get("cert"):
        settings["tls.cert"] = spec["cert"]
        settings["tls.key"] = spec["key"]
    for role in LISTENERS:
        settings["listen." + role] = ("tcp:0:interface=127.0.0.1",) if role in spec["listeners"] else ()
    config = loadConfig(None, settings)
    limits = dict(spec.get("limits", {}))
    # Every load generator connects from 127.0.0.1: the per-client limit
    # would measure itself, not the server.  A case may still set it.
    limits.setdefault("max_connections_per_client", limits.get("max_connections", Limits().max_connections))
    config = attr.evolve(config, limits=attr.evolve(Limits(), **limits))
    if spec.get("hashThreads"):
        # The login-flood case compares sizes of the hashing pool.
        import mailnet.service

        mailnet.service.hashingThreads = lambda: spec["hashThreads"]  # type: ignore[attr-defined]
    service = MailService(config, reactor, handleSignals=False)
    # Started first: it prepares the data dir and the account store.  The
    # driver connects only after our ports line, when all below is done.
    service.startService()
    if not service.accounts.isLocalDomain(spec["domain"]):
        service.accounts.addDomain(spec["domain"])
    # One hash for every user: Argon2 is slow on purpose.  Smoke runs may
    # ask for the cheapest parameters (logins are not what they measure).
    passwordHash = hashPassword(spec["password"], lowCostHasher() if spec.get("cheapHash") else None)
    maildirs = {}
    existing = set(service.accounts.users())  # a restart on the same data dir (the crash test)
    for address in spec["users"]:
        if address not in existing:
            service.accounts.addUser(address, passwordHash)
        maildirs[address] = service.mailStore.pathFor(address)
    for address, (count, size) in spec.get("preload", {}).items():
        preload(maildirs[address], address, count, size, spec["hostname"])
    info = {"ports": service.ports(), "cert": service.tls.certPath, "key": service.tls.keyPath, "maildirs": maildirs}
    return service, info


def buildStock(reactor, spec: dict):
    from twisted.application import service as app

    from mailnetbench.stock import makeStockFactory
    from mailnet.store.maildir import ensureMaildir

    root = os.path.join(spec["dataDir"], "mail")
    factory, pool = makeStockFactory(reactor, root, spec["domain"], spec["users"], spec["hostname"])
    maildirs = {}
    for address in spec["users"]:
        maildirs[address] = os.path.join(root, spec["domain"], address.split("@", 1)[0])
        ensureMaildir(maildirs[address])
    pool.start()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    class Stopper(app.Service):
        def stopService(self):
            pool.stop()
            return port.stopListening()

    stopper = Stopper()
    stopper.startService()
    return stopper, {"ports": {"smtp": port.getHost().port}, "maildirs": maildirs}


def startProfiler(reactor, kind: str, path: str) -> None:
    """
    Profile the reactor thread until shutdown, then write a text report to
    C{path}.

    @param kind: C{"pyinstrument"}: wall-clock samples, which show where the
        reactor thread waits (a blocking call) as well as where it computes;
        C{"cprofile"}: the reactor thread's CPU time per function
        (L{time.thread_time}), blocking excluded, with more overhead.
    """
    if kind == "cprofile":
        import cProfile
        import io
        import pstats
        import time

        profile = cProfile.Profile(time.thread_time)
        profile.enable()

        def report() -> None:
            profile.disable()
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
            with open(path, "w", encoding="utf-8") as f:
                f.write(out.getvalue())

    else:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()

        def report() -> None:
            profiler.stop()
            with open(path, "w", encoding="utf-8") as f:
                f.write(profiler.output_text(unicode=False, color=False, show_all=False))

    reactor.addSystemEventTrigger("after", "shutdown", report)


def main(argv) -> None:
    from twisted.internet import reactor

    spec = json.loads(argv[1])
    nofile = raiseFileLimit()
    os.makedirs(spec["dataDir"], exist_ok=True)
    # Log to a file, as twistd does by default: logging is part of the cost.
    logFile = open(os.path.join(spec["dataDir"], "server.log"), "a", encoding="utf-8")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logFile)], redirectStandardIO=False)
    build = buildStock if spec.get("kind") == "stock" else buildMailnet
    service, info = build(reactor, spec)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    if spec.get("profile"):
        startProfiler(reactor, spec.get("profiler", "pyinstrument"), spec["profile"])

    info.update(pid=os.getpid(), nofile=nofile)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    stdio.StandardIO(_WatchStdin(reactor))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
