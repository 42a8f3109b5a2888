"""
Tests for L{mailnet.imap.server}: transcripts on a StringTransport (client
lines in, server lines out) against the memory account of
L{mailnet.testing}.
"""

import base64
import re
from typing import Dict, List, Optional

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import Limits
from mailnet.errors import MailnetError
from mailnet.imap.server import AUTOLOGOUT, IMAPFactory, IMAPServer, State
from mailnet.interfaces import IMailAccount
from mailnet.testing import MemoryMailAccount

MESSAGE = (
    b"From: Bob <bob@example.test>\n"
    b"To: alice@example.test\n"
    b"Subject: hello\n"
    b"Date: Sat, 05 Dec 2026 12:00:00 +0000\n"
    b"Message-ID: <1@example.test>\n"
    b"\n"
    b"line one\n"
    b"line two\n"
)
WIRE = MESSAGE.replace(b"\n", b"\r\n")


class LoginBusy(MailnetError):
    """Too many logins."""


class AccountAuthenticator:
    """
    Logs in addresses of C{accounts} with password C{secret} at once.
    C{failWith}: an exception to fail every login with.
    """

    def __init__(self, accounts: Dict[str, MemoryMailAccount]) -> None:
        self.accounts = accounts
        self.failWith: Optional[Exception] = None
        self.logins: List[str] = []
        self.logouts = 0
        self.interfaces: List[object] = []

    def login(self, credentials, peerHost: str, interface) -> Deferred:
        self.interfaces.append(interface)
        if self.failWith is not None:
            return fail(self.failWith)
        name = credentials.username
        if name in self.accounts and credentials.checkPassword(b"secret"):
            self.logins.append(name)

            def logout() -> None:
                self.logouts += 1

            return succeed((IMailAccount, self.accounts[name], logout))
        return fail(UnauthorizedLogin())


class TLSStringTransport(StringTransport):
    """A StringTransport that records STARTTLS."""

    tlsStarted = False

    def startTLS(self, options) -> None:
        self.tlsStarted = True


class IMAPTestCase(SynchronousTestCase):
    secure = True
    allowPlaintextAuth = False
    limits = Limits()

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1796000000)
        self.account = MemoryMailAccount(clock=self.clock)
        self.other = MemoryMailAccount("bob@example.test", clock=self.clock)
        self.authenticator = AccountAuthenticator({"alice@example.test": self.account, "bob@example.test": self.other})
        self.factory = IMAPFactory(
            hostname="mail.example.test",
            authenticator=self.authenticator,
            limits=self.limits,
            tlsOptions=object() if not self.secure else None,
            implicitTLS=self.secure,
            allowPlaintextAuth=self.allowPlaintextAuth,
            clock=self.clock,
        )
        self.server, self.transport = self.connect()

    def connect(self):
        server = self.factory.buildProtocol(None)
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        server.makeConnection(transport)
        return server, transport

    def send(self, data: bytes, server: Optional[IMAPServer] = None, transport=None) -> bytes:
        server = server or self.server
        transport = transport or self.transport
        transport.clear()
        server.dataReceived(data)
        return transport.value()

    def lines(self, data: bytes, **kw) -> List[bytes]:
        return self.send(data, **kw).split(b"\r\n")[:-1]

    def login(self) -> None:
        out = self.send(b"L LOGIN alice@example.test secret\r\n")
        self.assertIn(b"L OK", out)

    def select(self, name: bytes = b"INBOX") -> bytes:
        self.login()
        out = self.send(b"S SELECT " + name + b"\r\n")
        self.assertIn(b"S OK [READ-WRITE]", out)
        return out


class GreetingTests(IMAPTestCase):
    def test_greeting(self) -> None:
        server, transport = self.connect()
        greeting = transport.value()
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 "), greeting)
        self.assertTrue(greeting.endswith(b"] mail.example.test IMAP4 mailnet ready\r\n"))

    def test_capability(self) -> None:
        out = self.send(b"a CAPABILITY\r\n")
        caps = out.split(b"\r\n")[0].split()
        for cap in [b"IMAP4rev2", b"AUTH=PLAIN", b"SASL-IR", b"LITERAL+", b"IDLE", b"UIDPLUS", b"MOVE", b"UNSELECT",
                    b"ENABLE", b"ID", b"NAMESPACE", b"SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"CHILDREN",
                    b"ESEARCH", b"STATUS=SIZE", b"CONDSTORE"]:
            self.assertIn(cap, caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertTrue(out.endswith(b"a OK CAPABILITY completed\r\n"))

    def test_unknownCommand(self) -> None:
        self.assertEqual(self.send(b"a FROB\r\n"), b"a BAD Unknown command\r\n")

    def test_untaggedBad(self) -> None:
        self.assertEqual(self.send(b"\x01\r\n"), b"* BAD Missing command tag\r\n")

    def test_stateGuards(self) -> None:
        self.assertEqual(self.send(b"a SELECT INBOX\r\n"), b"a BAD Log in first\r\n")
        self.login()
        self.assertEqual(self.send(b"b FETCH 1 FLAGS\r\n"), b"b BAD Select a folder first\r\n")
        self.assertEqual(self.send(b"c LOGIN a b\r\n"), b"c BAD Command not valid in this state\r\n")

    def test_noop(self) -> None:
        self.assertEqual(self.send(b"a NOOP\r\n"), b"a OK NOOP completed\r\n")

    def test_logout(self) -> None:
        self.login()
        out = self.send(b"a LOGOUT\r\n")
        self.assertEqual(out, b"* BYE mail.example.test IMAP4 mailnet signing off\r\na OK LOGOUT completed\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.server.connectionLost(None)
        self.assertEqual(self.authenticator.logouts, 1)

    def test_id(self) -> None:
        out = self.send(b'a ID ("name" "test")\r\n')
        self.assertEqual(out, b'* ID ("name" "mailnet" "vendor" "mailnet")\r\na OK ID completed\r\n')

    def test_pipelined(self) -> None:
        out = self.send(b"a NOOP\r\nb NOOP\r\nc CAPABILITY\r\n")
        self.assertIn(b"a OK", out)
        self.assertIn(b"b OK", out)
        self.assertIn(b"c OK", out)

    def test_tooManyErrors(self) -> None:
        out = self.send(b"a FROB\r\n" * 25)
        self.assertIn(b"* BYE Too many errors\r\n", out)
        self.assertTrue(self.transport.disconnecting)

    def test_idleTimeoutBeforeLogin(self) -> None:
        self.clock.advance(self.limits.idle_timeout + 1)
        self.assertIn(b"* BYE Autologout", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_autologoutAfterLogin(self) -> None:
        """RFC 9051 §5.4: at least 30 minutes once logged in."""
        self.login()
        self.clock.advance(self.limits.idle_timeout + 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(AUTOLOGOUT)
        self.assertTrue(self.transport.disconnecting)

    def test_shutdown(self) -> None:
        self.login()
        self.transport.clear()
        self.factory.shutdown()
        self.assertEqual(self.transport.value(), b"* BYE Server shutting down\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_tooManyConnections(self) -> None:
        self.factory.connections = self.limits.max_connections
        server, transport = self.connect()
        self.assertEqual(transport.value(), b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n")

    def test_refusalLine(self) -> None:
        """
        What mailnet.limits.LimitingFactory sends to a connection it
        refuses: an untagged BYE with UNAVAILABLE, saying why.
        """
        self.assertEqual(self.factory.refusalLine(True), b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")
        self.assertEqual(self.factory.refusalLine(False), b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n")

    def test_refusedByLimiter(self) -> None:
        """Behind the connection limiter, a client over its limit gets the IMAP refusal line."""
        from mailnet.limits import ConnectionLimiter, LimitingFactory

        limiting = LimitingFactory(ConnectionLimiter(maxConnections=100, maxPerClient=1), self.factory)
        peer = IPv4Address("TCP", "192.0.2.9", 40001)
        first = limiting.buildProtocol(peer)
        first.makeConnection(StringTransport(peerAddress=peer))
        transport = StringTransport(peerAddress=peer)
        limiting.buildProtocol(peer).makeConnection(transport)
        self.assertEqual(transport.value(), b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")

    def test_literalTooBig(self) -> None:
        out = self.send(b"a LOGIN {100000}\r\n")
        self.assertEqual(out, b"a BAD [TOOBIG] Literal too large\r\n")

    def test_pipelinedInputBounded(self) -> None:
        """While a command runs, reading pauses once enough is queued."""
        self.login()
        pending: Deferred = Deferred()
        self.account.status = lambda name: pending  # type: ignore[method-assign]
        self.send(b"a STATUS INBOX (MESSAGES)\r\n")
        self.send(b"b NOOP\r\n" * 40000)
        self.assertEqual(self.transport.producerState, "paused")


class AuthenticationTests(IMAPTestCase):
    def test_login(self) -> None:
        out = self.send(b"a LOGIN alice@example.test secret\r\n")
        self.assertTrue(out.startswith(b"a OK [CAPABILITY IMAP4rev1 IMAP4rev2 "), out)
        self.assertTrue(out.endswith(b"] Logged in\r\n"))
        self.assertNotIn(b"AUTH=PLAIN", out)
        self.assertIs(self.server.state, State.AUTHENTICATED)
        self.assertEqual(self.authenticator.interfaces, [IMailAccount])

    def test_loginQuoted(self) -> None:
        out = self.send(b'a LOGIN "alice@example.test" {6+}\r\nsecret\r\n')
        self.assertIn(b"a OK", out)

    def test_loginFailed(self) -> None:
        out = self.send(b"a LOGIN alice@example.test wrong\r\n")
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_loginBusy(self) -> None:
        """Anything but a refused password: UNAVAILABLE (try later)."""
        self.authenticator.failWith = LoginBusy()
        out = self.send(b"a LOGIN alice@example.test secret\r\n")
        self.assertEqual(out, b"a NO [UNAVAILABLE] Login not possible now, try again later\r\n")

    def test_loginBadName(self) -> None:
        out = self.send(b"a LOGIN ../etc secret\r\n")
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertEqual(self.authenticator.logins, [])

    def test_authenticatePlainInitialResponse(self) -> None:
        """RFC 4959 SASL-IR."""
        response = base64.b64encode(b"\0alice@example.test\0secret")
        out = self.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
        self.assertIn(b"] Logged in\r\n", out)

    def test_authenticatePlainContinuation(self) -> None:
        self.assertEqual(self.send(b"a AUTHENTICATE PLAIN\r\n"), b"+ \r\n")
        out = self.send(base64.b64encode(b"alice@example.test\0alice@example.test\0secret") + b"\r\n")
        self.assertIn(b"a OK", out)

    def test_authenticateCancelled(self) -> None:
        self.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(self.send(b"*\r\n"), b"a BAD Authentication cancelled\r\n")
        self.assertIn(b"b OK", self.send(b"b NOOP\r\n"))

    def test_authenticateOtherIdentity(self) -> None:
        response = base64.b64encode(b"bob@example.test\0alice@example.test\0secret")
        out = self.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
        self.assertEqual(out, b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_authenticateBadBase64(self) -> None:
        self.assertEqual(self.send(b"a AUTHENTICATE PLAIN !!!\r\n"), b"a BAD Invalid base64 in SASL response\r\n")

    def test_authenticateOtherMechanism(self) -> None:
        self.assertEqual(self.send(b"a AUTHENTICATE CRAM-MD5\r\n"), b"a NO [CANNOT] Unsupported authentication mechanism\r\n")


class PlaintextTests(IMAPTestCase):
    """The STARTTLS listener before TLS."""

    secure = False

    def test_capabilities(self) -> None:
        caps = self.send(b"a CAPABILITY\r\n").split(b"\r\n")[0].split()
        self.assertIn(b"STARTTLS", caps)
        self.assertIn(b"LOGINDISABLED", caps)
        self.assertNotIn(b"AUTH=PLAIN", caps)

    def test_loginRefused(self) -> None:
        """RFC 9051 §6.2.3: LOGINDISABLED means LOGIN is refused, password unseen."""
        out = self.send(b"a LOGIN alice@example.test secret\r\n")
        self.assertEqual(out, b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n")
        self.assertEqual(self.authenticator.logins, [])

    def test_authenticateRefused(self) -> None:
        response = base64.b64encode(b"\0alice@example.test\0secret")
        out = self.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
        self.assertEqual(out, b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n")
        self.assertEqual(self.authenticator.interfaces, [])

    def test_starttls(self) -> None:
        out = self.send(b"a STARTTLS\r\n")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertTrue(self.transport.tlsStarted)
        caps = self.send(b"b CAPABILITY\r\n").split(b"\r\n")[0].split()
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertIn(b"c OK", self.send(b"c LOGIN alice@example.test secret\r\n"))

    def test_starttlsInjection(self) -> None:
        """
        CVE-2011-0411: commands pipelined after STARTTLS in the clear are
        discarded, never run after the handshake.
        """
        out = self.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\nc NOOP\r\n")
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(self.authenticator.interfaces, [])
        self.assertEqual(self.send(b"d NOOP\r\n"), b"d OK NOOP completed\r\n")

    def test_starttlsTwice(self) -> None:
        self.send(b"a STARTTLS\r\n")
        self.assertEqual(self.send(b"b STARTTLS\r\n"), b"b BAD TLS is already active\r\n")


class PlaintextAllowedTests(IMAPTestCase):
    secure = False
    allowPlaintextAuth = True

    def test_loginAllowed(self) -> None:
        caps = self.send(b"a CAPABILITY\r\n").split(b"\r\n")[0].split()
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertIn(b"b OK", self.send(b"b LOGIN alice@example.test secret\r\n"))


class FolderTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_listAll(self) -> None:
        out = self.send(b'a LIST "" *\r\n')
        self.assertEqual(
            out,
            b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
            b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"\r\n'
            b'* LIST (\\HasNoChildren \\Junk) "." "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "." "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Trash) "." "Trash"\r\n'
            b"a OK LIST completed\r\n",
        )

    def test_listDelimiter(self) -> None:
        self.assertEqual(self.send(b'a LIST "" ""\r\n'), b'* LIST (\\Noselect) "." ""\r\na OK LIST completed\r\n')

    def test_createHierarchy(self) -> None:
        self.assertEqual(self.send(b"a CREATE Work.Projects\r\n"), b"a OK CREATE completed\r\n")
        out = self.send(b'b LIST "" Work%\r\n')
        self.assertEqual(out, b'* LIST (\\HasChildren) "." "Work"\r\nb OK LIST completed\r\n')
        out = self.send(b'c LIST "Work." %\r\n')
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "." "Work.Projects"\r\nc OK LIST completed\r\n')

    def test_createExists(self) -> None:
        self.assertEqual(self.send(b"a CREATE Sent\r\n"), b"a NO [ALREADYEXISTS] Folder already exists\r\n")
        self.assertEqual(self.send(b"a CREATE inbox\r\n"), b"a NO [ALREADYEXISTS] INBOX always exists\r\n")

    def test_createSpecialUse(self) -> None:
        """RFC 6154 §3."""
        self.assertIn(b"a OK", self.send(b"a CREATE Archive (USE (\\Archive))\r\n"))
        out = self.send(b'b LIST (SPECIAL-USE) "" *\r\n')
        self.assertIn(b'* LIST (\\HasNoChildren \\Archive) "." "Archive"\r\n', out)
        self.assertNotIn(b"INBOX", out)

    def test_renameAndDelete(self) -> None:
        self.send(b"a CREATE Old.Child\r\n")
        self.assertEqual(self.send(b"b RENAME Old New\r\n"), b"b OK RENAME completed\r\n")
        out = self.send(b'c LIST "" New*\r\n')
        self.assertIn(b'"New.Child"', out)
        self.assertEqual(self.send(b"d DELETE New.Child\r\n"), b"d OK DELETE completed\r\n")
        self.assertEqual(self.send(b"e DELETE Nope\r\n"), b"e NO [NONEXISTENT] No such folder\r\n")
        self.assertIn(b"f NO [CANNOT]", self.send(b"f DELETE INBOX\r\n"))

    def test_modifiedUTF7(self) -> None:
        """RFC 3501 §5.1.3: names round-trip as modified UTF-7 for rev1 clients."""
        self.assertIn(b"a OK", self.send(b"a CREATE &ANw-bersicht\r\n"))
        self.assertIn(b'"&ANw-bersicht"', self.send(b'b LIST "" *\r\n'))
        self.assertIn("Übersicht", [f.name for f in self.account.listFolders().result])

    def test_utf8WithRev2(self) -> None:
        self.send(b"a ENABLE IMAP4rev2\r\n")
        self.assertIn(b"b OK", self.send("b CREATE \"Übersicht\"\r\n".encode("utf-8")))
        self.assertIn('"Übersicht"'.encode("utf-8"), self.send(b'c LIST "" *\r\n'))

    def test_deleteKeepsSubscription(self) -> None:
        """RFC 3501 §6.3.6: a deleted folder stays subscribed, shown \\NonExistent."""
        self.send(b"a CREATE Gone\r\nb SUBSCRIBE Gone\r\nc DELETE Gone\r\n")
        self.assertEqual(self.send(b'd LIST "" Gone\r\n'), b"d OK LIST completed\r\n")
        out = self.send(b'e LIST (SUBSCRIBED) "" Gone\r\n')
        self.assertEqual(out, b'* LIST (\\NonExistent \\Subscribed) "." "Gone"\r\ne OK LIST completed\r\n')

    def test_subscriptions(self) -> None:
        self.send(b"a CREATE Lists\r\n")
        self.send(b"b UNSUBSCRIBE Lists\r\n")
        out = self.send(b'c LIST (SUBSCRIBED) "" *\r\n')
        self.assertNotIn(b"Lists", out)
        self.assertIn(b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"', out)
        out = self.send(b'd LSUB "" *\r\n')
        self.assertIn(b'* LSUB () "." "INBOX"', out)
        self.send(b"e SUBSCRIBE Lists\r\n")
        self.assertIn(b"Lists", self.send(b'f LSUB "" *\r\n'))

    def test_listReturn(self) -> None:
        """RFC 5258 return options and RFC 5819 STATUS."""
        self.account.deliver(MESSAGE)
        out = self.send(b'a LIST "" INBOX RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN SIZE))\r\n')
        self.assertEqual(
            out,
            b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"\r\n'
            b'* STATUS "INBOX" (MESSAGES 1 UNSEEN 1 SIZE %d)\r\n'
            b"a OK LIST completed\r\n" % (len(WIRE),),
        )

    def test_listMultiplePatterns(self) -> None:
        out = self.send(b'a LIST "" (Sent Drafts)\r\n')
        self.assertEqual(out.count(b"* LIST"), 2)

    def test_status(self) -> None:
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE, flags=["\\Seen"])
        out = self.send(b"a STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE UIDVALIDITY)\r\n")
        match = re.match(rb"\* STATUS \"INBOX\" \(MESSAGES 2 UIDNEXT 3 UNSEEN 1 SIZE (\d+) UIDVALIDITY \d+\)\r\n", out)
        self.assertIsNotNone(match, out)
        self.assertEqual(int(match.group(1)), 2 * len(WIRE))
        self.assertEqual(self.send(b"b STATUS Nope (MESSAGES)\r\n"), b"b NO [NONEXISTENT] No such folder\r\n")
        self.assertEqual(self.send(b"c STATUS INBOX (FROB)\r\n"), b"c BAD Invalid STATUS item\r\n")

    def test_namespace(self) -> None:
        self.assertEqual(self.send(b"a NAMESPACE\r\n"), b'* NAMESPACE (("" ".")) NIL NIL\r\na OK NAMESPACE completed\r\n')

    def test_enable(self) -> None:
        self.assertEqual(self.send(b"a ENABLE IMAP4rev2 CONDSTORE X-FOO\r\n"), b"* ENABLED IMAP4rev2 CONDSTORE\r\na OK ENABLE completed\r\n")
        self.assertTrue(self.server.rev2)


class AppendTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_appendSynchronising(self) -> None:
        out = self.send(b"a APPEND Drafts (\\Draft) \"05-Dec-2026 10:00:00 +0100\" {%d}\r\n" % (len(WIRE),))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = self.send(WIRE + b"\r\n")
        match = re.match(rb"a OK \[APPENDUID (\d+) 1\] APPEND completed\r\n", out)
        self.assertIsNotNone(match, out)
        status = self.account.status("Drafts").result
        self.assertEqual((status.messages, status.size), (1, len(WIRE)))
        folder = self.account.openFolder("Drafts").result
        [record] = folder.sync().result.messages
        self.assertEqual(record.flags, frozenset(["\\Draft"]))
        self.assertEqual(record.internalDate, 1796461200.0)

    def test_appendNonSynchronising(self) -> None:
        out = self.send(b"a APPEND INBOX {%d+}\r\n%s\r\nb NOOP\r\n" % (len(WIRE), WIRE))
        self.assertRegex(out, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\nb OK NOOP completed\r\n$")

    def test_appendInChunks(self) -> None:
        """The literal goes to the store as it arrives."""
        received: List[bytes] = []
        realAppend = self.account.append

        def append(name, flags, date):
            receiver = realAppend(name, flags, date)
            write = receiver.write
            receiver.write = lambda data: (received.append(data), write(data))  # type: ignore[method-assign]
            return receiver

        self.account.append = append  # type: ignore[method-assign]
        self.send(b"a APPEND INBOX {%d}\r\n" % (len(WIRE),))
        self.send(WIRE[:10])
        self.assertEqual(received, [WIRE[:10]])
        self.send(WIRE[10:] + b"\r\n")
        self.assertEqual(b"".join(received), WIRE)

    def test_appendTooBig(self) -> None:
        """Over max_message_size: NO [TOOBIG] before the client sends it."""
        size = self.limits.max_message_size + 1
        out = self.send(b"a APPEND INBOX {%d}\r\n" % (size,))
        self.assertEqual(out, b"a NO [TOOBIG] Message too large (the limit is %d octets)\r\n" % (self.limits.max_message_size,))
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_appendNoFolder(self) -> None:
        out = self.send(b"a APPEND Nope {3+}\r\nabc\r\n")
        self.assertEqual(out, b"a NO [TRYCREATE] No such folder\r\n")

    def test_appendBadFlag(self) -> None:
        out = self.send(b"a APPEND INBOX (\\Bogus) {3}\r\n")
        self.assertEqual(out, b"a BAD Invalid flag\r\n")
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_appendBeforeLogin(self) -> None:
        server, transport = self.connect()
        out = self.send(b"a APPEND INBOX {3+}\r\nabc\r\nb NOOP\r\n", server=server, transport=transport)
        self.assertEqual(out, b"a BAD Log in first\r\nb OK NOOP completed\r\n")

    def test_appendAbortedByDisconnect(self) -> None:
        aborted = []
        realAppend = self.account.append

        def append(name, flags, date):
            receiver = realAppend(name, flags, date)
            receiver.abort = lambda: aborted.append(True)  # type: ignore[method-assign]
            return receiver

        self.account.append = append  # type: ignore[method-assign]
        self.send(b"a APPEND INBOX {100}\r\nabc")
        self.server.connectionLost(None)
        self.assertEqual(aborted, [True])

    def test_appendSelectedAnnounces(self) -> None:
        self.send(b"s SELECT INBOX\r\n")
        out = self.send(b"a APPEND INBOX {3+}\r\nabc\r\n")
        self.assertIn(b"* 1 EXISTS\r\n", out)


class SelectTests(IMAPTestCase):
    def test_select(self) -> None:
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE, flags=["\\Seen", "$Important"])
        out = self.select()
        lines = out.split(b"\r\n")
        self.assertEqual(lines[0], b"* 2 EXISTS")
        self.assertEqual(lines[1], b"* 2 RECENT")
        self.assertEqual(lines[2], b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important)")
        self.assertEqual(lines[3], b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important \\*)] Flags permitted")
        self.assertRegex(lines[4], rb"^\* OK \[UIDVALIDITY \d+\] UIDs valid$")
        self.assertEqual(lines[5], b"* OK [UIDNEXT 3] Predicted next UID")
        self.assertEqual(lines[6], b"* OK [UNSEEN 1] First unseen")
        self.assertRegex(lines[7], rb"^\* OK \[HIGHESTMODSEQ \d+\] Highest$")
        self.assertEqual(lines[8], b"S OK [READ-WRITE] SELECT completed")

    def test_selectRev2(self) -> None:
        """RFC 9051: no RECENT, no UNSEEN; a LIST line."""
        self.login()
        self.send(b"e ENABLE IMAP4rev2\r\n")
        out = self.send(b"S SELECT inbox\r\n")
        self.assertNotIn(b"RECENT", out)
        self.assertNotIn(b"UNSEEN", out)
        self.assertIn(b'* LIST () "." "INBOX"\r\n', out)

    def test_examine(self) -> None:
        self.login()
        out = self.send(b"a EXAMINE INBOX\r\n")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Flags permitted\r\n", out)
        self.assertTrue(out.endswith(b"a OK [READ-ONLY] EXAMINE completed\r\n"))
        self.assertEqual(self.send(b"b STORE 1 +FLAGS \\Seen\r\n"), b"b NO [CANNOT] The folder is read-only (EXAMINE)\r\n")

    def test_selectMissing(self) -> None:
        self.select()
        self.assertEqual(self.send(b"a SELECT Nope\r\n"), b"a NO [NONEXISTENT] No such folder\r\n")
        self.assertIs(self.server.state, State.AUTHENTICATED)
        self.assertEqual(self.account.openFolders(), [])

    def test_unselect(self) -> None:
        self.select()
        self.assertEqual(self.send(b"a UNSELECT\r\n"), b"a OK UNSELECT completed\r\n")
        self.assertIs(self.server.state, State.AUTHENTICATED)
        self.assertEqual(self.account.openFolders(), [])

    def test_closeExpunges(self) -> None:
        self.account.deliver(MESSAGE, flags=["\\Deleted"])
        self.account.deliver(MESSAGE)
        self.select()
        self.assertEqual(self.send(b"a CLOSE\r\n"), b"a OK CLOSE completed\r\n")
        self.assertEqual(self.account.status("INBOX").result.messages, 1)

    def test_recentOnce(self) -> None:
        """RFC 3501: a message is \\Recent in one session only."""
        self.account.deliver(MESSAGE)
        self.select()
        server, transport = self.connect()
        self.send(b"L LOGIN alice@example.test secret\r\n", server=server, transport=transport)
        out = self.send(b"S SELECT INBOX\r\n", server=server, transport=transport)
        self.assertIn(b"* 0 RECENT", out)


class FetchTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MESSAGE, internalDate=1796472000)
        self.select()

    def test_flagsAndSizes(self) -> None:
        out = self.send(b"a FETCH 1 (FLAGS UID RFC822.SIZE INTERNALDATE)\r\n")
        self.assertEqual(
            out,
            b'* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE %d INTERNALDATE " 5-Dec-2026 12:00:00 +0000")\r\n'
            b"a OK FETCH completed\r\n" % (len(WIRE),),
        )

    def test_bodyPeek(self) -> None:
        out = self.send(b"a FETCH 1 BODY.PEEK[]\r\n")
        self.assertEqual(out, b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\na OK FETCH completed\r\n" % (len(WIRE), WIRE))
        self.assertEqual(self.send(b"b FETCH 1 FLAGS\r\n"), b"* 1 FETCH (FLAGS (\\Recent))\r\nb OK FETCH completed\r\n")

    def test_bodySetsSeen(self) -> None:
        out = self.send(b"a FETCH 1 BODY[TEXT]\r\n")
        self.assertEqual(out, b"* 1 FETCH (BODY[TEXT] {20}\r\nline one\r\nline two\r\n FLAGS (\\Seen \\Recent))\r\na OK FETCH completed\r\n")

    def test_partial(self) -> None:
        """<origin.count>: exactly the octets asked for, of the CRLF form."""
        out = self.send(b"a FETCH 1 (BODY.PEEK[]<5.10> BODY.PEEK[]<%d.10>)\r\n" % (len(WIRE) + 5,))
        self.assertEqual(out, b"* 1 FETCH (BODY[]<5> {10}\r\n%s BODY[]<%d> {0}\r\n)\r\na OK FETCH completed\r\n" % (WIRE[5:15], len(WIRE) + 5))

    def test_headerFields(self) -> None:
        out = self.send(b"a FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject to)]\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[HEADER.FIELDS (Subject to)] {42}\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\n)\r\n"
            b"a OK FETCH completed\r\n",
        )

    def test_rfc822(self) -> None:
        out = self.send(b"a FETCH 1 (RFC822.HEADER RFC822.TEXT)\r\n")
        header, _, text = WIRE.partition(b"\r\n\r\n")
        self.assertIn(b"RFC822.HEADER {%d}\r\n%s\r\n\r\n RFC822.TEXT {%d}\r\n%s" % (len(header) + 4, header, len(text), text), out)

    def test_envelopeAndStructure(self) -> None:
        out = self.send(b"a FETCH 1 (ENVELOPE BODYSTRUCTURE)\r\n")
        self.assertIn(b'ENVELOPE ("Sat, 05 Dec 2026 12:00:00 +0000" "hello" (("Bob" NIL "bob" "example.test"))', out)
        self.assertIn(b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2', out)

    def test_macros(self) -> None:
        out = self.send(b"a FETCH 1 FAST\r\n")
        self.assertIn(b"FLAGS (\\Recent) INTERNALDATE", out)
        self.assertIn(b"RFC822.SIZE", out)

    def test_uidFetch(self) -> None:
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE)
        self.send(b"n NOOP\r\n")
        out = self.send(b"a UID FETCH 2:* FLAGS\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n* 3 FETCH (UID 3 FLAGS (\\Recent))\r\na OK UID FETCH completed\r\n")
        self.assertEqual(self.send(b"b UID FETCH 99 FLAGS\r\n"), b"b OK UID FETCH completed\r\n")

    def test_badSequence(self) -> None:
        self.assertEqual(self.send(b"a FETCH 5 FLAGS\r\n"), b"a BAD Invalid message sequence number 5\r\n")
        self.assertEqual(self.send(b"a FETCH x FLAGS\r\n"), b"a BAD Invalid number in sequence set\r\n")
        self.assertEqual(self.send(b"a FETCH 1 (FROB)\r\n"), b"a BAD Invalid FETCH attribute\r\n")

    def test_largeBodyStreamed(self) -> None:
        """A body over the chunk size goes through a producer, piece by piece."""
        big = b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 2000
        self.account.deliver(big)
        self.send(b"n NOOP\r\n")
        out = self.send(b"a FETCH 2 BODY.PEEK[]\r\n")
        wire = big.replace(b"\n", b"\r\n")
        self.assertEqual(out, b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\na OK FETCH completed\r\n" % (len(wire), wire))
        self.assertIsNone(self.transport.producer)

    def test_streamWaitsForTransport(self) -> None:
        """While the transport is full, no more is read."""
        big = b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 2000
        self.account.deliver(big)
        self.send(b"n NOOP\r\n")
        self.transport.clear()
        self.server.dataReceived(b"a FETCH 2 BODY.PEEK[]\r\n")
        # StringTransport does not pause by itself: pause, then check.
        gate = self.transport.producer
        self.assertIsNone(gate)  # finished at once with a fast store
        self.assertIn(b"a OK FETCH completed", self.transport.value())

    def test_changedSince(self) -> None:
        """RFC 7162 CHANGEDSINCE: only messages changed after the mod-sequence, with MODSEQ."""
        self.account.deliver(MESSAGE)
        self.send(b"n NOOP\r\n")
        self.send(b"s STORE 2 +FLAGS.SILENT (\\Flagged)\r\n")
        modseq = self.account.status("INBOX").result.highestModSeq
        out = self.send(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE %d)\r\n" % (modseq - 1,))
        self.assertEqual(
            out,
            b"* OK [HIGHESTMODSEQ %d] Highest\r\n"
            b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\na OK FETCH completed\r\n" % (modseq, modseq),
        )


class StoreTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE)
        self.select()

    def test_store(self) -> None:
        out = self.send(b"a STORE 1:2 +FLAGS (\\Seen $Label)\r\n")
        self.assertEqual(
            out,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] Flags permitted\r\n"
            b"* 1 FETCH (FLAGS (\\Seen $Label \\Recent))\r\n"
            b"* 2 FETCH (FLAGS (\\Seen $Label \\Recent))\r\n"
            b"a OK STORE completed\r\n",
        )
        self.assertEqual(self.send(b"b NOOP\r\n"), b"b OK NOOP completed\r\n")

    def test_storeSilent(self) -> None:
        self.assertEqual(self.send(b"a STORE 1 +FLAGS.SILENT \\Flagged\r\n"), b"a OK STORE completed\r\n")
        self.assertEqual(self.send(b"b STORE 1 -FLAGS (\\Flagged)\r\n"), b"* 1 FETCH (FLAGS (\\Recent))\r\nb OK STORE completed\r\n")

    def test_uidStoreReplace(self) -> None:
        out = self.send(b"a UID STORE 2 FLAGS (\\Answered)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent))\r\na OK UID STORE completed\r\n")

    def test_unchangedSince(self) -> None:
        """RFC 7162 §3.2: a message changed meanwhile is left alone, MODIFIED."""
        modseq = self.account.status("INBOX").result.highestModSeq
        self.send(b"a STORE 1 +FLAGS.SILENT (\\Flagged)\r\n")
        out = self.send(b"b STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Seen)\r\n" % (modseq,))
        # RFC 7162 §3.1: HIGHESTMODSEQ once CONDSTORE starts; UID and MODSEQ in the FETCH.
        self.assertRegex(
            out,
            rb"^\* OK \[HIGHESTMODSEQ \d+\] Highest\r\n"
            rb"\* 2 FETCH \(UID 2 FLAGS \(\\Seen \\Recent\) MODSEQ \(\d+\)\)\r\nb OK \[MODIFIED 1\] ",
        )

    def test_badFlag(self) -> None:
        self.assertEqual(self.send(b"a STORE 1 +FLAGS (\\Frob)\r\n"), b"a BAD Invalid flag\r\n")

    def test_expunge(self) -> None:
        self.send(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(self.send(b"b EXPUNGE\r\n"), b"* 1 EXPUNGE\r\nb OK EXPUNGE completed\r\n")
        self.assertEqual(self.send(b"c FETCH 1 UID\r\n"), b"* 1 FETCH (UID 2)\r\nc OK FETCH completed\r\n")

    def test_uidExpunge(self) -> None:
        """RFC 4315: only the UIDs named."""
        self.send(b"a STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(self.send(b"b UID EXPUNGE 2\r\n"), b"* 2 EXPUNGE\r\nb OK UID EXPUNGE completed\r\n")

    def test_copy(self) -> None:
        out = self.send(b"a COPY 1:2 Trash\r\n")
        self.assertRegex(out, rb"^a OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n$")
        self.assertEqual(self.account.status("Trash").result.messages, 2)
        self.assertEqual(self.send(b"b COPY 1 Nope\r\n"), b"b NO [TRYCREATE] No such folder\r\n")

    def test_move(self) -> None:
        """RFC 6851: COPYUID untagged, then EXPUNGEs."""
        out = self.send(b"a UID MOVE 2 Trash\r\n")
        self.assertRegex(out, rb"^\* OK \[COPYUID \d+ 2 1\] Moved\r\n\* 2 EXPUNGE\r\na OK MOVE completed\r\n$")
        self.assertEqual(self.account.status("INBOX").result.messages, 1)


class UpdateTests(IMAPTestCase):
    """What other sessions do is announced (RFC 9051 §7.5.1 rules)."""

    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE)
        self.select()
        self.server2, self.transport2 = self.connect()
        self.send(b"L LOGIN alice@example.test secret\r\nS SELECT INBOX\r\n", server=self.server2, transport=self.transport2)

    def second(self, data: bytes) -> bytes:
        return self.send(data, server=self.server2, transport=self.transport2)

    def test_newMail(self) -> None:
        self.account.deliver(MESSAGE)
        # Messages 1 and 2 are still recent for this session.
        self.assertEqual(self.send(b"a NOOP\r\n"), b"* 3 EXISTS\r\n* 3 RECENT\r\na OK NOOP completed\r\n")

    def test_slowRefreshThenPipelinedLogout(self) -> None:
        """
        NOOP's announcements come from a folder sync that takes time; a
        LOGOUT pipelined behind it waits, so NOOP's tagged OK is not lost.
        """
        folder = self.server.view.folder
        pending: List[Deferred] = []
        realSync = folder.sync

        def slowSync():
            d: Deferred = Deferred()
            pending.append(d)
            return d

        folder.sync = slowSync
        self.account.deliver(MESSAGE)
        out = self.send(b"a NOOP\r\nb LOGOUT\r\n")
        self.assertNotIn(b"BYE", out)
        folder.sync = realSync
        self.transport.clear()
        realSync().chainDeferred(pending[0])
        out = self.transport.value()
        self.assertIn(b"a OK NOOP completed\r\n* BYE", out)
        self.assertTrue(out.endswith(b"b OK LOGOUT completed\r\n"), out)

    def test_selectedFolderDeleted(self) -> None:
        """
        Another session deletes the selected folder: the next command
        learns it with a BYE (as from Dovecot) and the connection closes;
        nothing is logged as a failure.
        """
        self.send(b"c CREATE Work\r\nd SELECT Work\r\n")
        self.assertIn(b"OK", self.second(b"e DELETE Work\r\n"))
        out = self.send(b"f NOOP\r\n")
        self.assertEqual(out, b"* BYE Selected mailbox was deleted, have to disconnect\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_selectedFolderDeletedWhileIdle(self) -> None:
        """The same in IDLE, as soon as the store tells of the change."""
        self.send(b"c CREATE Work\r\nd SELECT Work\r\ne IDLE\r\n")
        self.transport.clear()
        self.second(b"e DELETE Work\r\n")
        self.assertIn(b"* BYE Selected mailbox was deleted, have to disconnect\r\n", self.transport.value())
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_otherStore(self) -> None:
        self.second(b"a STORE 1 +FLAGS.SILENT (\\Flagged)\r\n")
        self.assertEqual(self.send(b"b NOOP\r\n"), b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\nb OK NOOP completed\r\n")

    def test_noExpungeDuringFetch(self) -> None:
        """RFC 9051 §7.5.1: not during FETCH, STORE, SEARCH; at the next NOOP."""
        self.second(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\nb EXPUNGE\r\n")
        out = self.send(b"c FETCH 2 UID\r\n")
        self.assertNotIn(b"EXPUNGE", out)
        self.assertIn(b"* 2 FETCH (UID 2)", out)
        self.assertEqual(self.send(b"d STORE 2 +FLAGS.SILENT (\\Seen)\r\n").count(b"EXPUNGE"), 0)
        self.assertIn(b"* 1 EXPUNGE\r\n", self.send(b"e NOOP\r\n"))
        self.assertEqual(self.send(b"f FETCH 1 UID\r\n"), b"* 1 FETCH (UID 2)\r\nf OK FETCH completed\r\n")

    def test_expungeDuringUidFetch(self) -> None:
        self.second(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\nb EXPUNGE\r\n")
        self.assertIn(b"* 1 EXPUNGE\r\n", self.send(b"c UID FETCH 2 FLAGS\r\n"))

    def test_idle(self) -> None:
        """RFC 2177: a delivery is reported during IDLE at once; DONE ends it."""
        self.assertEqual(self.send(b"a IDLE\r\n"), b"+ idling\r\n")
        self.transport.clear()
        self.account.deliver(MESSAGE)
        self.assertEqual(self.transport.value(), b"* 3 EXISTS\r\n* 3 RECENT\r\n")
        self.second(b"x STORE 1 +FLAGS.SILENT (\\Deleted)\r\ny EXPUNGE\r\n")
        self.assertIn(b"* 1 EXPUNGE\r\n", self.transport.value())
        self.assertEqual(self.send(b"DONE\r\n"), b"a OK IDLE completed\r\n")

    def test_idleBadEnd(self) -> None:
        self.send(b"a IDLE\r\n")
        self.assertEqual(self.send(b"STOP\r\n"), b"a BAD Expected DONE\r\n")

    def test_idleAutologout(self) -> None:
        self.send(b"a IDLE\r\n")
        self.clock.advance(AUTOLOGOUT + 1)
        self.assertIn(b"* BYE Autologout", self.transport.value())

    def test_rev2NoRecent(self) -> None:
        self.send(b"e ENABLE IMAP4rev2\r\n")
        self.account.deliver(MESSAGE)
        self.assertEqual(self.send(b"a NOOP\r\n"), b"* 3 EXISTS\r\na OK NOOP completed\r\n")

    def test_overlappingRefreshes(self) -> None:
        """
        IDLE's refresh and the one before DONE's OK run one after the
        other: new messages are announced once.
        """
        folder = self.server.view.folder
        realClaim = folder.claimRecent
        pending: List[Deferred] = []

        def slowClaim() -> Deferred:
            d: Deferred = Deferred()
            pending.append(d)
            return d

        folder.claimRecent = slowClaim  # type: ignore[method-assign]
        self.send(b"a IDLE\r\n")
        self.transport.clear()
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE)
        self.server.dataReceived(b"DONE\r\n")
        while pending:
            pending.pop(0).callback(realClaim().result)
        out = self.transport.value()
        self.assertEqual(re.findall(rb"\* (\d+) EXISTS", out), [b"3", b"4"], out)
        self.assertEqual(len(self.server.view.uids), 4)
        self.assertTrue(out.endswith(b"a OK IDLE completed\r\n"), out)

    def test_keywordFromOtherSessionAnnouncedBeforeFetch(self) -> None:
        """
        RFC 9051 §7.3.5 (imaptest stress found it): a STORE's answer may show
        a keyword another session added; FLAGS comes first.
        """
        self.second(b"a STORE 1 +FLAGS.SILENT ($Other)\r\n")
        out = self.send(b"b STORE 1 +FLAGS (\\Seen)\r\n")
        flags = out.find(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Other)\r\n")
        fetch = out.find(b"* 1 FETCH (FLAGS (\\Seen $Other \\Recent))\r\n")
        self.assertTrue(0 <= flags < fetch, out)

    def test_keywordFromOtherSessionBeforeImplicitSeen(self) -> None:
        self.second(b"a STORE 2 +FLAGS.SILENT ($Other)\r\n")
        out = self.send(b"b FETCH 2 BODY[TEXT]\r\n")
        flags = out.find(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Other)\r\n")
        fetch = out.find(b"* 2 FETCH (")
        self.assertTrue(0 <= flags < fetch, out)


class LargeFolderTests(IMAPTestCase):
    def test_fetchYieldsBetweenBatches(self) -> None:
        """A FETCH of thousands of messages lets the reactor run between batches."""
        for _ in range(5000):
            self.account.deliver(b"Subject: x\n\nx\n")
        self.select()
        out = self.send(b"a FETCH 1:* UID\r\n")
        self.assertNotIn(b"a OK", out)
        self.assertIn(b"* 4096 FETCH (UID 4096)\r\n", out)
        self.transport.clear()
        self.clock.advance(0)
        out = self.transport.value()
        self.assertTrue(out.endswith(b"* 5000 FETCH (UID 5000)\r\na OK FETCH completed\r\n"), out[-100:])


    def test_fetchFlagsFastPath(self) -> None:
        """
        FETCH of FLAGS (with or without UID, in either order) of many
        messages: the same responses as the general FETCH gives, batches
        with reactor turns between them included.
        """
        for _ in range(5000):
            self.account.deliver(b"Subject: x\n\nx\n")
        self.select()
        self.send(b"s STORE 2:4999 +FLAGS.SILENT (\\Seen $Work)\r\n")

        def run(command: bytes) -> List[bytes]:
            out = self.send(command)
            self.transport.clear()
            while b"a OK" not in out:
                self.clock.advance(0)
                out += self.transport.value()
                self.transport.clear()
            return out.split(b"\r\n")

        general = run(b"a FETCH 1:* (FLAGS UID INTERNALDATE)\r\n")
        flagsUid = run(b"a FETCH 1:* (FLAGS UID)\r\n")
        uidFlags = run(b"a UID FETCH 1:* FLAGS\r\n")
        flagsOnly = run(b"a FETCH 1:* FLAGS\r\n")
        self.assertEqual(len(flagsOnly), 5002)
        self.assertEqual(flagsOnly[1], b"* 2 FETCH (FLAGS (\\Seen $Work \\Recent))")
        for i in (0, 1, 4998, 4999):
            line = general[i]
            self.assertTrue(line.startswith(b"* %d FETCH (FLAGS (" % (i + 1,)), line)
            flags = line[line.index(b"FLAGS") : line.index(b")") + 1]
            self.assertEqual(flagsUid[i], b"* %d FETCH (%s UID %d)" % (i + 1, flags, i + 1))
            self.assertEqual(uidFlags[i], b"* %d FETCH (UID %d %s)" % (i + 1, i + 1, flags))
            self.assertEqual(flagsOnly[i], b"* %d FETCH (%s)" % (i + 1, flags))


class SearchTests(IMAPTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MESSAGE)
        self.account.deliver(MESSAGE.replace(b"hello", b"other"), flags=["\\Seen"])
        self.account.deliver(MESSAGE)
        self.select()

    def test_rev1(self) -> None:
        self.assertEqual(self.send(b"a SEARCH SUBJECT hello\r\n"), b"* SEARCH 1 3\r\na OK SEARCH completed\r\n")
        self.assertEqual(self.send(b"b UID SEARCH UNSEEN\r\n"), b"* SEARCH 1 3\r\nb OK UID SEARCH completed\r\n")

    def test_emptyResult(self) -> None:
        """RFC 9051 §6.4.4: the untagged reply is sent even when nothing matches."""
        self.assertEqual(self.send(b"a SEARCH SUBJECT nowhere\r\n"), b"* SEARCH\r\na OK SEARCH completed\r\n")

    def test_esearch(self) -> None:
        """RFC 4731."""
        out = self.send(b"a UID SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT hello\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "a") UID MIN 1 MAX 3 ALL 1,3 COUNT 2\r\na OK UID SEARCH completed\r\n')

    def test_rev2(self) -> None:
        """IMAP4rev2: ESEARCH without RETURN."""
        self.send(b"e ENABLE IMAP4rev2\r\n")
        self.assertEqual(self.send(b"a SEARCH SEEN\r\n"), b'* ESEARCH (TAG "a") ALL 2\r\na OK SEARCH completed\r\n')

    def test_body(self) -> None:
        self.assertEqual(self.send(b"a SEARCH CHARSET UTF-8 BODY \"LINE TWO\"\r\n"), b"* SEARCH 1 2 3\r\na OK SEARCH completed\r\n")

    def test_badCharset(self) -> None:
        out = self.send(b"a SEARCH CHARSET KOI8-R ALL\r\n")
        self.assertEqual(out, b"a NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")

    def test_badCriteria(self) -> None:
        self.assertTrue(self.send(b"a SEARCH FROB\r\n").startswith(b"a BAD "))

    def test_saveAndUse(self) -> None:
        """RFC 5182 SEARCHRES: $ names the saved result, in FETCH too."""
        self.assertEqual(self.send(b"a SEARCH RETURN (SAVE) SUBJECT other\r\n"), b"a OK SEARCH completed\r\n")
        self.assertEqual(self.send(b"b FETCH $ UID\r\n"), b"* 2 FETCH (UID 2)\r\nb OK FETCH completed\r\n")
        self.assertTrue(self.send(b"c SEARCH RETURN (SAVE) FROB\r\n").startswith(b"c BAD "))
        self.assertEqual(self.send(b"d FETCH $ UID\r\n"), b"d OK FETCH completed\r\n")


MULTIPART = (
    b"From: a@example.test\nSubject: att\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="B"\n\n'
    b"--B\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
    b"h=C3=A9llo=\nworld\nline2\n"
    b"--B\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAECAwQ=\n"
    b"--B\nContent-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n"
    b"--B--\n"
)


class BinaryTests(IMAPTestCase):
    """RFC 3516 BINARY (required by IMAP4rev2)."""

    def setUp(self) -> None:
        super().setUp()
        self.account.deliver(MULTIPART)
        self.select()

    def test_decoded(self) -> None:
        out = self.send(b"a FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2])\r\n")
        self.assertEqual(
            out,
            "* 1 FETCH (BINARY[1] {18}\r\nhélloworld\r\nline2 BINARY.SIZE[2] 5 ".encode("utf-8")
            + b"BINARY[2] ~{5}\r\n\x00\x01\x02\x03\x04)\r\na OK FETCH completed\r\n",
        )

    def test_partialAndSeen(self) -> None:
        out = self.send(b"a FETCH 1 BINARY[1]<1.3>\r\n")
        self.assertEqual(out, "* 1 FETCH (BINARY[1]<1> {3}\r\nél FLAGS (\\Seen \\Recent))\r\na OK FETCH completed\r\n".encode("utf-8"))

    def test_unknownEncoding(self) -> None:
        self.assertEqual(self.send(b"a FETCH 1 BINARY[3]\r\n"), b"a NO [UNKNOWN-CTE] Cannot decode that part for BINARY\r\n")

    def test_binaryEncodingAsStored(self) -> None:
        """A binary part comes back octet for octet (NUL included, no CRLF added)."""
        self.account.deliver(b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n\0a\nb")
        self.send(b"n NOOP\r\n")
        out = self.send(b"a FETCH 2 (BINARY.PEEK[1] BODY.PEEK[1])\r\n")
        self.assertEqual(out, b"* 2 FETCH (BINARY[1] ~{4}\r\n\0a\nb BODY[1] {5}\r\n a\r\nb)\r\na OK FETCH completed\r\n")

    def test_onlyPartNumbers(self) -> None:
        self.assertEqual(self.send(b"a FETCH 1 BINARY[1.MIME]\r\n"), b"a BAD BINARY takes part numbers only\r\n")


class SearchBodyReaderTests(SynchronousTestCase):
    """
    SEARCH BODY on a store that opens files in the searching thread
    (C{openMessageBlocking}): each file is opened when a key needs its
    text, read and closed at once; a message gone meanwhile has no text.
    """

    def setUp(self) -> None:
        from mailnet import mime

        self.parsed = mime.parseBytes(b"Subject: x\n\nneedle in the body\n")

    def test_readAndClosed(self) -> None:
        import io

        from mailnet.imap import search
        from mailnet.imap.server import _bodyGetter

        opened: List[io.BytesIO] = []

        def opener() -> io.BytesIO:
            opened.append(io.BytesIO(b"Subject: x\n\nneedle in the body\n"))
            return opened[-1]

        body = _bodyGetter(search, None, self.parsed, opener)
        self.assertEqual(opened, [])
        self.assertIn("needle in the body", body())
        self.assertIn("needle in the body", body())
        self.assertEqual(len(opened), 1)
        self.assertTrue(opened[0].closed)

    def test_gone(self) -> None:
        from mailnet.errors import MessageGone
        from mailnet.imap import search
        from mailnet.imap.server import _bodyGetter

        def opener():
            raise MessageGone(uid="1")

        self.assertEqual(_bodyGetter(search, None, self.parsed, opener)(), "")


class FakeQuotas:
    """What the IMAP server asks of L{mailnet.quota.Quotas}: one user's limit and usage."""

    def __init__(self, octets: int, used: int, messages=None) -> None:
        from mailnet.quota import Limit

        self.limit = Limit(octets=octets, messages=messages)
        self.used = used
        self.counting = None

    def limitFor(self, address: str):
        return self.limit if address == "alice@example.test" else None

    def count(self, address: str):
        return self.counting

    def usage(self, address: str):
        return self.used, 3


class QuotaTests(IMAPTestCase):
    """RFC 9208: QUOTA with one root, "", and APPEND refused past the quota."""

    def setUp(self) -> None:
        super().setUp()
        self.factory.quotas = FakeQuotas(octets=10 * 1024, used=9 * 1024)

    def test_capability(self) -> None:
        self.login()
        self.assertIn(b" QUOTA ", self.send(b"C CAPABILITY\r\n"))

    def test_getQuotaRoot(self) -> None:
        self.login()
        out = self.lines(b"Q GETQUOTAROOT INBOX\r\n")
        self.assertEqual(out, [b'* QUOTAROOT "INBOX" ""', b'* QUOTA "" (STORAGE 9 10)', b"Q OK GETQUOTAROOT completed"])

    def test_getQuotaUnknownRoot(self) -> None:
        self.login()
        self.assertIn(b"Q NO [NONEXISTENT]", self.send(b'Q GETQUOTA "other"\r\n'))
        self.assertIn(b"S NO [NOPERM]", self.send(b'S SETQUOTA "" (STORAGE 1)\r\n'))

    def test_appendOverQuota(self) -> None:
        """Refused before the literal is read: no continuation, nothing stored."""
        self.login()
        out = self.send(b"A APPEND INBOX {2048}\r\n")
        self.assertTrue(out.startswith(b"A NO [OVERQUOTA]"), out)
        self.assertNotIn(b"+ ", out)
        out = self.send(b"B APPEND INBOX {100}\r\n")
        self.assertTrue(out.startswith(b"+ "), out)

    def copyInto(self, command: bytes, sizes=(600, 500)) -> bytes:
        for size in sizes:
            self.account.deliver(b"Subject: x\r\n\r\n" + b"x" * (size - 15) + b"\r\n")
        self.select()
        return self.send(command)

    def test_copyOverQuota(self) -> None:
        """RFC 9208 §4.3: a COPY past the quota is NO [OVERQUOTA], and nothing is copied."""
        out = self.copyInto(b"a COPY 1:2 Trash\r\n")
        self.assertEqual(out, b"a NO [OVERQUOTA] The mailbox is full\r\n")
        self.assertEqual(self.account.status("Trash").result.messages, 0)
        out = self.send(b"b UID COPY 2 Trash\r\n")
        self.assertRegex(out, rb"^b OK \[COPYUID \d+ 2 1\] COPY completed\r\n$")

    def test_copyMessageLimit(self) -> None:
        self.factory.quotas = FakeQuotas(octets=10**6, used=0, messages=4)
        self.assertTrue(self.copyInto(b"a COPY 1:2 Trash\r\n").startswith(b"a NO [OVERQUOTA]"))
        self.assertIn(b"b OK [COPYUID", self.send(b"b COPY 1 Trash\r\n"))

    def test_moveAtQuota(self) -> None:
        """A MOVE stays within the account's quota root: allowed however full it is."""
        self.factory.quotas = FakeQuotas(octets=10 * 1024, used=10 * 1024)
        out = self.copyInto(b"a MOVE 1:2 Trash\r\n")
        self.assertTrue(out.endswith(b"a OK MOVE completed\r\n"), out)
        self.assertEqual(self.account.status("Trash").result.messages, 2)

    def test_copyWaitsForCount(self) -> None:
        """A Maildir not counted yet is counted (in a thread) before the check; the COPY waits."""
        from twisted.internet.defer import Deferred

        self.factory.quotas.counting = Deferred()
        out = self.copyInto(b"a COPY 1:2 Trash\r\n")
        self.assertEqual(out, b"")
        self.transport.clear()
        self.factory.quotas.counting.callback(None)
        self.assertEqual(self.transport.value(), b"a NO [OVERQUOTA] The mailbox is full\r\n")

    def test_noQuotaNotOffered(self) -> None:
        self.factory.quotas = None
        self.login()
        self.assertNotIn(b"QUOTA", self.send(b"C CAPABILITY\r\n"))
        self.assertIn(b"Q BAD", self.send(b"Q GETQUOTAROOT INBOX\r\n"))
