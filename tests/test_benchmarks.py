# -*- test-case-name: tests.test_benchmarks -*-
"""
Tests for the benchmark suite in C{benchmarks/}: its parsers and
bookkeeping on fake transports, and the CI smoke test, which runs
C{benchmarks/run.py --short} in a subprocess and asserts only that it runs
and loses nothing -- never a time.
"""

import io
import json
import os
import subprocess
import sys
import time
from typing import Any, Tuple

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

from mailnetbench import procstat  # noqa: E402
from mailnetbench.driver import percentile  # noqa: E402
from mailnetbench.messages import findIds, header, idsOnDisk, makeBody  # noqa: E402
from mailnetbench.peer import settle  # noqa: E402
from mailnetbench.pop3load import POP3LoadProtocol, POP3Session  # noqa: E402
from mailnetbench.report import buildRows, formatTable  # noqa: E402
from mailnetbench.smtpload import SMTPLoadProtocol, SMTPRun, Workload  # noqa: E402


class MessageTests(SynchronousTestCase):
    def test_bodySize(self):
        """
        A body has exactly the octets asked for, CRLF lines, and no line
        starting with a dot (so that no dot-stuffing changes its size).
        """
        for size in (2, 77, 78, 79, 2048, 1 << 20):
            body = makeBody(size)
            self.assertEqual(len(body), size)
            self.assertTrue(body.endswith(b"\r\n"))
            self.assertFalse(any(line.startswith(b".") for line in body.split(b"\r\n")))

    def test_findIds(self):
        """
        The id in a stored message's header is found again; files without
        one are skipped.
        """
        maildir = self.mktemp()
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub))
        with open(os.path.join(maildir, "new", "a"), "wb") as f:
            f.write(b"Return-Path: <x@y.test>\r\n" + header("case-7", "u0@bench.test") + makeBody(100))
        with open(os.path.join(maildir, "cur", "b:2,S"), "wb") as f:
            f.write(b"Subject: none\r\n\r\nbody\r\n")
        with open(os.path.join(maildir, "tmp", "c"), "wb") as f:
            f.write(header("case-8", "u0@bench.test"))
        self.assertEqual(idsOnDisk([maildir]), {"case-7": 1})
        self.assertEqual([i for i, _ in findIds([os.path.join(maildir, "new", "a")])], ["case-7"])


class PercentileTests(SynchronousTestCase):
    def test_nearestRank(self):
        values = list(range(1, 101))
        self.assertEqual(percentile(values, 50), 50)
        self.assertEqual(percentile(values, 99), 99)
        self.assertEqual(percentile([3.0], 99), 3.0)
        self.assertIsNone(percentile([], 50))


class WorkloadTests(SynchronousTestCase):
    def test_count(self):
        """Message numbers run out after C{count}."""
        work = Workload(2, time.perf_counter() + 60)
        self.assertEqual([work.take(), work.take(), work.take()], [0, 1, None])

    def test_deadline(self):
        """No message is handed out after the deadline."""
        work = Workload(10, time.perf_counter() - 1)
        self.assertIsNone(work.take())


def smtpClient(count: int = 1):
    run = SMTPRun("t", ["u0@bench.test"], makeBody(100), Workload(count, time.perf_counter() + 60))
    done: Deferred = Deferred()
    protocol = SMTPLoadProtocol(run, done)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return run, protocol, transport, done


class SMTPLoadTests(SynchronousTestCase):
    def test_pipelined(self):
        """
        With PIPELINING, MAIL, RCPT and DATA go in one write; the message
        follows 354; a 250 after it counts as accepted, then QUIT.
        """
        run, protocol, transport, done = smtpClient()
        protocol.dataReceived(b"220 mx ESMTP\r\n")
        self.assertEqual(transport.value(), b"EHLO load.sender.test\r\n")
        transport.clear()
        protocol.dataReceived(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
        self.assertEqual(
            transport.value(), b"MAIL FROM:<load@sender.test>\r\nRCPT TO:<u0@bench.test>\r\nDATA\r\n"
        )
        transport.clear()
        # Replies split anywhere must still be understood.
        protocol.dataReceived(b"250 2.1.0 ok\r\n25")
        protocol.dataReceived(b"0 2.1.5 ok\r\n354 go\r\n")
        sent = transport.value()
        self.assertIn(b"\r\nX-Bench-Id: t-0\r\n", sent)
        self.assertTrue(sent.endswith(makeBody(100) + b".\r\n"))
        transport.clear()
        protocol.dataReceived(b"250 2.0.0 queued\r\n")
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.assertEqual(run.accepted, {"t-0": "u0@bench.test"})
        self.assertEqual(len(run.latencies), 1)
        self.assertTrue(run.pipelining)
        protocol.dataReceived(b"221 bye\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(run.errors, [])
        self.assertIsNone(self.successResultOf(done))

    def test_sequential(self):
        """Without PIPELINING each command waits for the previous reply."""
        run, protocol, transport, done = smtpClient()
        protocol.dataReceived(b"220 mx\r\n250 mx\r\n")
        self.assertEqual(transport.value(), b"EHLO load.sender.test\r\nMAIL FROM:<load@sender.test>\r\n")
        transport.clear()
        protocol.dataReceived(b"250 ok\r\n")
        self.assertEqual(transport.value(), b"RCPT TO:<u0@bench.test>\r\n")
        transport.clear()
        protocol.dataReceived(b"250 ok\r\n")
        self.assertEqual(transport.value(), b"DATA\r\n")
        self.assertFalse(run.pipelining)

    def test_refused(self):
        """
        A refused recipient is counted as refused, never accepted; the
        client resets and goes on.
        """
        run, protocol, transport, done = smtpClient(count=2)
        protocol.dataReceived(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n")
        transport.clear()
        protocol.dataReceived(b"250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(transport.value(), b"RSET\r\n")
        self.assertEqual(len(run.refused), 1)
        self.assertIn("5.1.1", run.refused[0])
        transport.clear()
        protocol.dataReceived(b"250 ok\r\n")
        self.assertTrue(transport.value().startswith(b"MAIL FROM:"))
        self.assertEqual(run.accepted, {})

    def test_lostConnection(self):
        """A connection lost in the middle of a transaction is an error."""
        run, protocol, transport, done = smtpClient()
        protocol.dataReceived(b"220 mx\r\n250 mx\r\n")
        protocol.connectionLost(None)
        self.assertEqual(len(run.errors), 1)
        self.assertIsNone(self.successResultOf(done))


class POP3LoadTests(SynchronousTestCase):
    def test_session(self):
        """
        Log in, STAT, then pipelined RETRs whose multi-line responses may be
        split anywhere; octets are counted without the terminator.
        """
        session = POP3Session("p0@bench.test")
        ready: Deferred = Deferred()
        done: Deferred = Deferred()
        protocol = POP3LoadProtocol(session, "secret", ready, done)
        transport = StringTransport()
        protocol.makeConnection(transport)
        message = header("m-1", "p0@bench.test") + makeBody(50)
        protocol.dataReceived(b"+OK POP3 ready\r\n")
        protocol.dataReceived(b"+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n+OK\r\n+OK logged in\r\n")
        protocol.dataReceived(b"+OK 2 %d\r\n" % (2 * len(message),))
        self.assertEqual(transport.value(), b"CAPA\r\nUSER p0@bench.test\r\nPASS secret\r\nSTAT\r\n")
        self.assertIs(self.successResultOf(ready), protocol)
        transport.clear()
        protocol.startRetrieving()
        self.assertEqual(transport.value(), b"RETR 1\r\nRETR 2\r\n")
        transport.clear()
        wire = b"+OK message follows\r\n" + message + b".\r\n"
        stream = wire + wire
        for i in range(0, len(stream), 7):
            protocol.dataReceived(stream[i : i + 7])
        self.assertEqual(transport.value(), b"QUIT\r\n")
        self.assertEqual((session.retrieved, session.retrievedOctets, session.missingIds), (2, 2 * len(message), 0))
        self.assertTrue(session.pipelining)
        self.assertEqual(session.errors, [])

    def test_emptyBody(self):
        """An empty multi-line response ends at the status line's CRLF."""
        session = POP3Session("p0@bench.test")
        protocol = POP3LoadProtocol(session, "secret", Deferred(), Deferred())
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"+OK\r\n+OK\r\n.\r\n")
        self.assertIs(session.pipelining, False)
    def test_warmUpOnly(self):
        """With a limit of 0 a session logs in and quits without a RETR."""
        session = POP3Session("p0@bench.test")
        ready: Deferred = Deferred()
        protocol = POP3LoadProtocol(session, "secret", ready, Deferred(), limit=0)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"+OK hi\r\n+OK\r\nPIPELINING\r\n.\r\n+OK\r\n+OK\r\n+OK 3 300\r\n")
        self.assertIs(self.successResultOf(ready), protocol)
        transport.clear()
        protocol.startRetrieving()
        self.assertEqual(transport.value(), b"QUIT\r\n")


class SettleTests(SynchronousTestCase):
    def test_waitsUntilIdle(self):
        """
        The wait for an idle server (after the warm-up logins, whose
        rehashes run in the background) lasts while the server works and
        ends at the first quiet interval.
        """
        clock = Clock()
        used = iter([0.0, 0.2, 0.4, 0.41, 5.0])
        d = ensureDeferred(settle(clock, lambda: next(used), interval=0.25, quiet=0.02))
        clock.advance(0.25)
        clock.advance(0.25)
        self.assertNoResult(d)
        clock.advance(0.25)
        self.assertEqual(self.successResultOf(d), 0.75)

    def test_timeout(self):
        """A server that never goes idle is waited for at most C{timeout}."""
        clock = Clock()
        used = iter(range(100))
        d = ensureDeferred(settle(clock, lambda: float(next(used)), interval=1, timeout=3))
        clock.pump([1, 1])
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), 3)


class ProcStatTests(SynchronousTestCase):
    def test_ownProcess(self):
        """CPU seconds and memory of a running process can be read."""
        if not os.path.exists("/proc/self/stat"):
            raise self.failureException("the benchmark suite needs Linux /proc")
        self.assertGreaterEqual(procstat.cpuSeconds(os.getpid()), 0.0)
        memory = procstat.memory(os.getpid())
        self.assertGreater(memory["VmRSS"], 1 << 20)
        self.assertGreaterEqual(memory["VmHWM"], memory["VmRSS"])


class ReportTests(SynchronousTestCase):
    def results(self, mode):
        return {
            "mode": mode,
            "cases": {
                "smtp-2k-c50": {"msgs_per_s": 1500.0, "p99_ms": 50.0, "cpu_ms_per_msg": 0.4},
                "stock-2k-c50": {"msgs_per_s": 1000.0},
            },
            "ceilings": {"fsync1": {"per_second": 800.0}},
        }

    def test_judged(self):
        """A full run's figures are judged against the targets."""
        rows = {(r.name, r.target): r for r in buildRows(self.results("full"))}
        self.assertIs(rows[("SMTP 2 KB, 50 conn: msgs/s", ">= 1300")].met, True)
        self.assertIs(rows[("  p99 latency", "<= 40")].met, False)
        self.assertIs(rows[("  mailnet / stock here", ">= 1.00")].met, True)
        self.assertIsNone(rows[("SMTP 1 MB, 10 conn: msgs/s", ">= 200")].met)
        self.assertIn("NO", formatTable(buildRows(self.results("full"))))

    def test_shortNotJudged(self):
        """A short run is too small to judge: no row says yes or no."""
        self.assertEqual({r.met for r in buildRows(self.results("short"))}, {None})


def shortRun(case: SynchronousTestCase, script: str) -> Tuple[Any, str, str]:
    """
    Run C{benchmarks/SCRIPT --short} with a JSON report and a data
    directory of its own; it must exit 0.

    @return: the report, the script's output (for failure messages) and
        the data directory.
    """
    output = os.path.abspath(case.mktemp())
    tmp = os.path.abspath(case.mktemp())
    os.makedirs(tmp)
    process = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), "--short", "--json", output, "--tmp", tmp],
        capture_output=True,
        timeout=180,
    )
    detail = (process.stdout + process.stderr).decode("utf-8", "replace")
    case.assertEqual(process.returncode, 0, detail)
    with open(output, encoding="utf-8") as f:
        return json.load(f), detail, tmp


class SmokeTests(SynchronousTestCase):
    def test_shortRun(self):
        """
        C{python benchmarks/run.py --short} runs every case, exits 0, and
        every message the server accepted is on disk.  No time is asserted.
        """
        results, detail, tmp = shortRun(self, "run.py")
        self.assertEqual((results["lost"], results["refused"], results["errors"]), (0, 0, []), detail)
        cases = results["cases"]
        for name in ("smtp-2k-c1", "smtp-2k-c10", "smtp-2k-c50", "smtp-1m-c10", "stock-2k-c50", "big"):
            self.assertGreater(cases[name]["accepted"], 0, name)
            self.assertEqual(cases[name]["lost"], 0, name)
        for name in ("pop3-one", "pop3-ten"):
            self.assertGreater(cases[name]["messages"], 0, name)
            self.assertEqual(cases[name]["lost"], 0, name)
        self.assertGreater(cases["idle"]["established"], 0)
        self.assertEqual(os.listdir(tmp), [], "the run must clean up after itself")


class AuthFloodTests(SynchronousTestCase):
    def test_lineClient(self):
        """
        An SMTP reply is complete at its line without a dash; a POP3 reply
        is one line.  Replies split anywhere are understood.
        """
        from mailnetbench.authflood import LineClient, POP3Client

        client = LineClient()
        client.transport = StringTransport()
        d = client.send(b"EHLO x")
        self.assertEqual(client.transport.value(), b"EHLO x\r\n")
        client.dataReceived(b"250-mx\r\n250-PIPE")
        self.assertNoResult(d)
        client.dataReceived(b"LINING\r\n250 SIZE\r\n")
        self.assertEqual(self.successResultOf(d), [b"250-mx", b"250-PIPELINING", b"250 SIZE"])
        pop = POP3Client()
        pop.transport = StringTransport()
        d = pop.expect()
        pop.dataReceived(b"-ERR [SYS/TEMP] busy\r\n")
        self.assertEqual(self.successResultOf(d), [b"-ERR [SYS/TEMP] busy"])

    def test_shortRun(self):
        """
        C{python benchmarks/authflood.py --short} floods, measures honest
        deliveries and logins, exits 0 (none of them failed).  No time is
        asserted.
        """
        results, detail, tmp = shortRun(self, "authflood.py")
        for phase in ("idle", "flood"):
            self.assertEqual(results[phase]["failed"], [], detail)
            self.assertEqual(len(results[phase]["deliveries_s"]), 2)
            self.assertEqual(len(results[phase]["logins_s"]), 2)
        self.assertIsInstance(results["flood"]["answers"], dict)
        self.assertEqual(os.listdir(tmp), [], "the run must clean up after itself")


class IMAPBenchTests(SynchronousTestCase):
    def test_literals(self):
        """
        The IMAP load client reads literals inside a response as part of it,
        so a literal that looks like a tagged reply does not end a command.
        """
        from mailnetbench.imapload import Session

        session = Session.__new__(Session)
        session.file = io.BytesIO(
            b"* 1 FETCH (BODY[HEADER] {12}\r\na1 OK fake\r\n)\r\n* 2 EXISTS\r\na1 OK done\r\n"
        )
        seen = []
        self.assertEqual(session.waitFor(b"a1", seen.append), b"a1 OK done\r\n")
        self.assertEqual(seen, [b"* 1 FETCH (BODY[HEADER] {12}\r\na1 OK fake\r\n)\r\n", b"* 2 EXISTS\r\n"])

    def test_shortRun(self):
        """
        C{python benchmarks/imap.py --short --only mailnet} runs every IMAP
        figure against mailnet and exits 0.  No time is asserted.
        """
        output = os.path.abspath(self.mktemp())
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        process = subprocess.run(
            [sys.executable, os.path.join(BENCHMARKS, "imap.py"), "--short", "--only", "mailnet", "--json", output, "--tmp", tmp],
            capture_output=True,
            timeout=180,
        )
        detail = (process.stdout + process.stderr).decode("utf-8", "replace")
        self.assertEqual(process.returncode, 0, detail)
        with open(output, encoding="utf-8") as f:
            results = json.load(f)["results"]["mailnet"]
        for figure in ("append_per_s", "select", "fetch_flags", "fetch_headers", "first_sync", "search_subject", "search_body"):
            self.assertGreater(results[figure], 0, figure)
        self.assertIn("rss_per_idle", results)
        self.assertEqual(os.listdir(tmp), [], "the run must clean up after itself")
