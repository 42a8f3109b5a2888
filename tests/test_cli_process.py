"""
mailnet-cli and mailnet-admin as real processes: Ctrl-C (a real SIGINT)
and a closed output pipe end them with one line (or none) and a known exit
status, never a traceback (issue 15, items 1 and 2).
"""

import os
import sys
from typing import Dict, List, Optional, Sequence

from twisted.internet import defer, protocol, reactor
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from mailnet.cli import main as cli
from mailnet.cli._common import EXIT_INTERRUPTED, EXIT_PIPE
from mailnet.store.accounts import openAccountStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child must take SIGINT as a person's Ctrl-C even when the test runner
# ignores it (a background job does): restore Python's default handler.
BOOT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from mailnet.cli.{module} import main; sys.exit(main())"
)


class Child(protocol.ProcessProtocol):
    """
    Collects a child's output; C{onOutput} may act on it (send a signal);
    C{closeStdout} closes our end of its stdout at once, as C{head} does.
    """

    def __init__(self, onOutput=None, closeStdout: bool = False) -> None:
        self.output: Dict[int, bytes] = {1: b"", 2: b""}
        self.onOutput = onOutput
        self.closeStdout = closeStdout
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.closeStdout:
            self.transport.closeChildFD(1)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output[fd] = self.output.get(fd, b"") + data
        if self.onOutput is not None:
            self.onOutput(self)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


def spawn(testCase, module: str, argv: Sequence[str], child: Child, environ: Optional[dict] = None, usePTY: bool = False):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT, "HOME": os.path.abspath(testCase.mktemp())}
    env.update(environ or {})
    reactor.spawnProcess(
        child,
        sys.executable,
        [sys.executable, "-c", BOOT.format(module=module)] + list(argv),
        env=env,
        usePTY=usePTY,
    )
    return child.ended


def interruptOn(marker: bytes):
    """@return: an C{onOutput} that sends SIGINT once C{marker} was printed."""

    def check(child: Child) -> None:
        if marker in b"".join(child.output.values()) and not getattr(child, "signalled", False):
            child.signalled = True
            child.transport.signalProcess("INT")

    return check


class SilentPOP3(LineReceiver):
    """Greets, then sends SIGINT to the client once it has logged in halfway."""

    def connectionMade(self) -> None:
        self.sendLine(b"+OK ready")

    def lineReceived(self, line: bytes) -> None:
        if line.upper().startswith(b"USER"):
            self.factory.child.transport.signalProcess("INT")
        # Never answer: the client waits, as for a slow server.


class CtrlCTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_cliDuringSession(self):
        """Ctrl-C while talking to a server: "interrupted", exit 130, nothing else."""
        factory = protocol.Factory.forProtocol(SilentPOP3)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory.child = child = Child()
        argv = ["--host", "127.0.0.1", "--pop3-port", str(port.getHost().port), "--tls", "none",
                "--allow-plaintext", "--user", "a@example.test", "list"]
        code = yield spawn(self, "main", argv, child, {"MAILNET_PASSWORD": "x"})
        self.assertEqual((code, child.output[2], child.output[1]), (EXIT_INTERRUPTED, b"mailnet-cli: interrupted\n", b""))

    @defer.inlineCallbacks
    def test_cliPasswordPrompt(self):
        """Ctrl-C at the password prompt (a real terminal)."""
        child = Child(onOutput=interruptOn(b"Password for"))
        code = yield spawn(self, "main", ["--user", "a@example.test", "list"], child, usePTY=True)
        output = child.output[1] + child.output[2]
        self.assertEqual(code, EXIT_INTERRUPTED, output)
        self.assertIn(b"mailnet-cli: interrupted", output)
        self.assertNotIn(b"Traceback", output)

    @defer.inlineCallbacks
    def test_adminPasswordPrompt(self):
        """mailnet-admin: Ctrl-C at the new-password prompt."""
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        store = openAccountStore(dataDir)
        store.addDomain("example.test")
        store.close()
        child = Child(onOutput=interruptOn(b"New password"))
        code = yield spawn(self, "admin", ["--data-dir", dataDir, "user", "add", "a@example.test"], child, usePTY=True)
        output = child.output[1] + child.output[2]
        self.assertEqual(code, EXIT_INTERRUPTED, output)
        self.assertIn(b"mailnet-admin: interrupted", output)
        self.assertNotIn(b"Traceback", output)


class ClosedPipeTests(unittest.TestCase):
    """C{... | head -1}: the reader goes away; we end quietly with 141."""

    @defer.inlineCallbacks
    def test_adminCheck(self):
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir)
        child = Child(closeStdout=True)
        code = yield spawn(self, "admin", ["--data-dir", dataDir, "check"], child)
        self.assertEqual((code, child.output[2]), (EXIT_PIPE, b""))

    def test_commandOutput(self):
        """Inside a command (C{list} printing), a closed pipe is no error line."""
        class Closed:
            def write(self, text):
                raise BrokenPipeError(32, "Broken pipe")

            def flush(self):
                pass

        streams = cli.Streams(None, Closed(), Closed(), {})
        self.assertEqual(cli.report(BrokenPipeError(32, "Broken pipe"), streams, False), EXIT_PIPE)


class ClosedPipeAgainstServerTests(unittest.TestCase):
    """C{mailnet-cli list | head -1}: quiet, 141 (a short write: L{tests.test_cli.ShortWriteTests})."""

    @defer.inlineCallbacks
    def setUp(self):
        from mailnet import passwords
        from tests.support import startServer

        self.patch(passwords, "DEFAULT_HASHER", passwords.lowCostHasher())
        self.server = yield startServer(self)
        self.server.addUser("alice@example.test", "secret")
        receiver = self.server.mailStore.receive("bob@example.test", ["alice@example.test"])
        receiver.write(b"Subject: hi\r\n\r\nhello\r\n")
        yield receiver.finish()

    def argv(self, *command: str) -> List[str]:
        return ["--host", "localhost", "--pop3-port", str(self.server.ports["pop3"]), "--user", "alice@example.test",
                "--cafile", self.server.certPath] + list(command)

    @defer.inlineCallbacks
    def test_list(self):
        child = Child(closeStdout=True)
        code = yield spawn(self, "main", self.argv("list"), child, {"MAILNET_PASSWORD": "secret"})
        self.assertEqual((code, child.output[2]), (EXIT_PIPE, b""))


class StallingPOP3(LineReceiver):
    """Serves message 1, then stalls on RETR 2 and sends the client SIGINT."""

    MESSAGE = b"Subject: one\r\n\r\nbody\r\n"

    def connectionMade(self) -> None:
        self.sendLine(b"+OK ready")

    def lineReceived(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"USER", b"PASS"):
            self.sendLine(b"+OK")
        elif verb == b"LIST":
            self.sendLine(b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n." % (len(self.MESSAGE), len(self.MESSAGE)))
        elif verb == b"UIDL":
            self.sendLine(b"+OK\r\n1 u1\r\n2 u2\r\n.")
        elif line.upper() == b"RETR 1":
            self.transport.write(b"+OK\r\n" + self.MESSAGE + b".\r\n")
        elif line.upper() == b"RETR 2":
            self.factory.child.transport.signalProcess("INT")
        else:
            self.sendLine(b"-ERR no")


class InterruptedFetchTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_savedAreReported(self):
        """Ctrl-C in the middle of fetch: what was saved is said (and kept), then "interrupted"."""
        factory = protocol.Factory.forProtocol(StallingPOP3)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory.child = child = Child()
        mbox = os.path.abspath(self.mktemp())
        argv = ["--host", "127.0.0.1", "--pop3-port", str(port.getHost().port), "--tls", "none",
                "--allow-plaintext", "--user", "a@example.test", "fetch", "--to-mbox", mbox, "--delete"]
        code = yield spawn(self, "main", argv, child, {"MAILNET_PASSWORD": "x"})
        self.assertEqual(code, EXIT_INTERRUPTED, child.output)
        self.assertEqual(child.output[1], b"fetched 1 message into %s before the interruption; nothing was deleted\n"
                         % (mbox.encode(),))
        self.assertEqual(child.output[2], b"mailnet-cli: interrupted\n")
        with open(mbox, "rb") as f:
            self.assertIn(b"Subject: one", f.read())


class StallingSMTP(LineReceiver):
    """Takes the start of a large message, then sends the client SIGINT and stalls."""

    def connectionMade(self) -> None:
        self.received = 0
        self.sendLine(b"220 test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-test\r\n250 AUTH PLAIN")
        elif verb == b"AUTH":
            self.sendLine(b"235 ok")
        elif verb in (b"MAIL", b"RCPT"):
            self.sendLine(b"250 ok")
        elif verb == b"DATA":
            self.sendLine(b"354 go")
            self.setRawMode()
        else:
            self.sendLine(b"500 what")

    def rawDataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > 100000 and not getattr(self, "signalled", False):
            self.signalled = True
            self.factory.child.transport.signalProcess("INT")


class InterruptedSendTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_largeSend(self):
        """
        Ctrl-C in the middle of a large message: "interrupted", not
        "unexpected Exception: Consumer asked us to stop producing".
        """
        factory = protocol.Factory.forProtocol(StallingSMTP)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory.child = child = Child()
        body = os.path.abspath(self.mktemp())
        with open(body, "w") as f:
            f.write("a line of the body\n" * 200000)
        argv = ["--host", "127.0.0.1", "--smtp-port", str(port.getHost().port), "--tls", "none", "--allow-plaintext",
                "--user", "a@example.test", "send", "--to", "b@example.test", "--subject", "big", "--body-file", body]
        code = yield spawn(self, "main", argv, child, {"MAILNET_PASSWORD": "x"})
        self.assertEqual((code, child.output[2], child.output[1]), (EXIT_INTERRUPTED, b"mailnet-cli: interrupted\n", b""))
