# -*- test-case-name: tests.test_benchmarks_peer -*-
"""
Tests for C{benchmarks/peer.py} and L{mailnetbench.peer}: the private
Postfix's configuration, the preloaded Maildirs, the bookkeeping of rounds
and the goals in the table (the peers themselves are not started here).
"""

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

from mailnetbench.messages import idsOnDisk  # noqa: E402
from mailnetbench.peer import Postfix, best, preloadMaildir, treePids  # noqa: E402

MASTER_CF = """\
# a comment
smtp      inet  n       -       y       -       -       smtpd
#submission inet n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
cleanup   unix  n       -       y       -       0       cleanup
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixConfigTests(SynchronousTestCase):
    def test_configuration(self) -> None:
        """
        smtpd listens on our port of 127.0.0.1 only, nothing runs chrooted,
        every bench user has a Maildir in the virtual map.
        """
        master = self.mktemp()
        with open(master, "w") as f:
            f.write(MASTER_CF)
        root = self.mktemp()
        os.makedirs(root)
        postfix = Postfix(root, users=["u0@bench.test", "u1@bench.test"], masterCf=master)
        conf = postfix._configure()
        with open(os.path.join(conf, "master.cf")) as f:
            services = [line.split() for line in f if line[:1] not in ("#", " ", "\t") and line.strip()]
        self.assertEqual(services[0][:2], ["127.0.0.1:%d" % (postfix.port,), "inet"])
        self.assertEqual([s[0] for s in services], ["127.0.0.1:%d" % (postfix.port,), "cleanup", "postlog"])
        self.assertEqual({s[4] for s in services}, {"n"})
        with open(os.path.join(conf, "vmailbox")) as f:
            self.assertEqual(f.read(), "u0@bench.test bench.test/u0/\nu1@bench.test bench.test/u1/\n")
        with open(os.path.join(conf, "main.cf")) as f:
            main = f.read()
        self.assertIn("inet_interfaces = 127.0.0.1\n", main)
        self.assertIn("virtual_mailbox_base = %s/mail\n" % (postfix.root,), main)
        self.assertEqual(postfix.maildirs["u1@bench.test"], os.path.join(postfix.root, "mail", "bench.test", "u1"))

    def test_notInstalled(self) -> None:
        """Without its master.cf, the peer says why it is skipped."""
        postfix = Postfix(self.mktemp(), masterCf="/nonexistent/master.cf")
        if postfix.binary is not None and os.getuid() == 0:
            self.assertIn("/nonexistent/master.cf", postfix.why)
        self.assertRaises(RuntimeError, postfix.start)


class BookkeepingTests(SynchronousTestCase):
    def test_preload(self) -> None:
        """Preloaded messages carry their bench ids, as a peer stores them (LF)."""
        maildir = self.mktemp()
        preloadMaildir(maildir, "p0@bench.test", 3, 2048)
        names = os.listdir(os.path.join(maildir, "new"))
        self.assertEqual(len(names), 3)
        with open(os.path.join(maildir, "new", names[0]), "rb") as f:
            self.assertNotIn(b"\r\n", f.read())
        self.assertEqual(sorted(idsOnDisk([maildir])), ["pre-p0@bench.test-%d" % i for i in range(3)])

    def test_best(self) -> None:
        """The best round, every round's rate, and losses summed over all rounds."""
        rounds = [{"msgs_per_s": 10.0, "lost": 1, "errors": ["a"]}, {"msgs_per_s": 30.0, "lost": 0, "errors": []}]
        result = best(rounds)
        self.assertEqual(result["msgs_per_s"], 30.0)
        self.assertEqual(result["rounds"], [10.0, 30.0])
        self.assertEqual(result["lost"], 1)
        self.assertEqual(result["errors"], ["a"])

    def test_treePids(self) -> None:
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        self.addCleanup(child.wait)
        self.addCleanup(child.stdin.close)
        pids = treePids(os.getpid())
        self.assertEqual(pids[0], os.getpid())
        self.assertIn(child.pid, pids)


class TableTests(SynchronousTestCase):
    def test_goals(self) -> None:
        """
        Each mailnet line says met or missed against the peer (1.3x; p99 <=
        40 ms at 50), judged on the median rounds when both sides have
        rounds, else on the best.
        """
        sys.path.insert(0, BENCHMARKS)
        import peer

        results = {
            "smtp-2k-c10": {"mailnet-w2": {"msgs_per_s": 140.0, "rounds": [140.0]}, "postfix": {"msgs_per_s": 100.0}},
            "smtp-2k-c50": {"mailnet-w2": {"msgs_per_s": 200.0, "p99_ms": 50.0}, "postfix": {"msgs_per_s": 100.0}},
            "pop3-one": {"mailnet-w1": {"msgs_per_s": 120.0}, "dovecot": {"msgs_per_s": 100.0}},
            # A lucky best round (2.00x) but medians 1.10x: missed.
            "pop3-ten": {
                "mailnet-w2": {"msgs_per_s": 200.0, "rounds": [110.0, 200.0, 100.0]},
                "dovecot": {"msgs_per_s": 100.0, "rounds": [100.0, 100.0, 90.0]},
            },
        }
        lines = peer.table(results, [2]).splitlines()
        self.assertEqual(lines[1].split()[-2:], ["1.40x", "met"])
        self.assertEqual(lines[3].split()[-2:], ["2.00x", "missed"])
        self.assertEqual(lines[5].split()[-2:], ["1.20x", "missed"])
        self.assertEqual(lines[7].split()[-3:], ["2.00x", "1.10x", "missed"])
