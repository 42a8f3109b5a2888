"""
Tests for L{mailnet.smtp._judge}: DKIM signing of submitted mail and the
SPF/DKIM/DMARC verdicts on the MTA port, end to end: a real mailnet on
127.0.0.1 whose [dns] resolvers is a DNS server serving a zone the test
writes, driven by C{smtplib}; relayed mail is caught by a scripted SMTP
server and verified with dkimpy against the record C{mailnet-admin dkim
generate} printed.
"""

import email
import io
import re
import smtplib
import ssl
from typing import Any, Dict, List, Sequence, Tuple

import dkim
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from mailnet.cli.admin import main as admin
from mailnet.config import Limits
from mailnet.dkim import KeyStore
from mailnet.errors import SMTPReply
from mailnet.smtp._judge import SPOOL_IN_MEMORY, MessageJudge
from mailnet.smtp.server import SMTPFactory
from mailnet.store.maildir import ThreadRunner
from mailnet.testing import FakeAuthenticator, FakeDeliveryAgent, RecordingReceiver
from tests.dnszone import ZoneServer, a, mx, txt
from tests.support import startServer
from tests.test_relay import ScriptedFactory
from tests.test_verdicts import testKey


def body(text: str) -> bytes:
    return text.encode("ascii").replace(b"\n", b"\r\n")


def sendAll(
    port: int, messages: List[Tuple[str, bytes]], recipients: Sequence[str] = ("alice@example.test",), helo: str = "client.remote.test"
) -> Dict[int, Any]:
    """Send each (MAIL FROM, message) to C{recipients} on one connection; the failures by index."""
    failures: Dict[int, Any] = {}
    client = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=10)
    try:
        for index, (sender, message) in enumerate(messages):
            try:
                client.sendmail(sender, list(recipients), message)
            except smtplib.SMTPDataError as e:
                failures[index] = (e.smtp_code, e.smtp_error.decode())
    finally:
        client.quit()
    return failures


def fields(stored: bytes, name: bytes) -> List[bytes]:
    """The values of the header fields called C{name} (unfolded)."""
    message = email.message_from_bytes(stored)
    return [re.sub(rb"\s+", b" ", v.encode()) for v in message.get_all(name.decode(), [])]


class InboundTests(unittest.TestCase):
    """
    Mail from a remote client on the MTA port gets one Authentication-Results
    field, or the policy's refusal.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        key = testKey("signer.test", "rsa")
        self.key = key
        self.zone = ZoneServer(
            self,
            {
                "pass.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
                "fail.test": [txt("v=spf1 ip4:192.0.2.1 -all")],
                "soft.test": [txt("v=spf1 ip4:192.0.2.1 ~all")],
                "s1._domainkey.signer.test": [txt(key.record())],
                "_dmarc.parent.test": [txt("v=DMARC1; p=reject")],
                "_dmarc.bank.test": [txt("v=DMARC1; p=reject")],
                "_dmarc.shop.test": [txt("v=DMARC1; p=quarantine")],
                "parent.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
                "mx.test": [txt("v=spf1 mx a:a.mx.test -all"), mx(10, "mail.mx.test")],
                "mail.mx.test": [a("127.0.0.1")],
            },
        )
        self.server = yield startServer(
            self, **{"dns.resolvers": (self.zone.address,), "auth.trusted_networks": (), "server.hostname": "mx.example.test"}
        )
        self.server.addUser("alice@example.test", "alice-secret")

    def delivered(self) -> List[bytes]:
        out = []
        for path in self.server.newFiles("alice@example.test"):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def results(self) -> List[bytes]:
        return [fields(stored, b"Authentication-Results")[0] for stored in self.delivered()]

    @defer.inlineCallbacks
    def test_spf(self) -> Any:
        """
        SPF pass, fail, softfail and none for the MAIL FROM domain (and pass
        by an mx mechanism: MX and A answers of the real DNS server); none of
        them refused by default.
        """
        message = body("From: bob@other.test\nSubject: spf\n\nhi\n")
        senders = ["bob@pass.test", "bob@fail.test", "bob@soft.test", "bob@none.test", "bob@mx.test"]
        failures = yield deferToThread(sendAll, self.server.ports["smtp"], [(s, message) for s in senders])
        self.assertEqual(failures, {})
        found = self.results()
        self.assertEqual(len(found), 5)
        for result, (expected, sender) in zip(found, zip(["pass", "fail", "softfail", "none", "pass"], senders)):
            self.assertTrue(
                result.startswith(b"mx.example.test; spf=%s smtp.mailfrom=%s;" % (expected.encode(), sender.encode())), result
            )
            self.assertIn(b"dkim=none;", result)

    @defer.inlineCallbacks
    def test_dkim(self) -> Any:
        """DKIM pass, fail when the body was altered on the way, none when unsigned."""
        from mailnet.dkim import sign

        original = body("From: bob@signer.test\nTo: alice@example.test\nSubject: dkim\n\nsigned text\n")
        signed = sign(original, [self.key]) + original
        altered = signed.replace(b"signed text", b"forged text")
        messages = [("bob@signer.test", m) for m in (signed, altered, original)]
        failures = yield deferToThread(sendAll, self.server.ports["smtp"], messages)
        self.assertEqual(failures, {})
        found = self.results()
        self.assertIn(b"dkim=pass header.d=signer.test header.s=s1 header.a=rsa-sha256", found[0])
        self.assertIn(b"dkim=fail header.d=signer.test header.s=s1", found[1])
        self.assertIn(b"dkim=none", found[2])

    @defer.inlineCallbacks
    def test_dmarc(self) -> Any:
        """
        A sub-domain's mail passes DMARC by its parent's policy (aligned SPF
        pass); a forged From of a p=reject domain is refused with 550 5.7.1
        and not delivered.
        """
        good = body("From: news@mail.parent.test\nSubject: dmarc\n\nok\n")
        forged = body("From: ceo@bank.test\nSubject: pay now\n\nsend money\n")
        failures = yield deferToThread(
            sendAll, self.server.ports["smtp"], [("news@parent.test", good), ("x@pass.test", forged)]
        )
        self.assertEqual(list(failures), [1])
        code, text = failures[1]
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith("5.7.1 "), text)
        [result] = self.results()
        self.assertIn(b"dmarc=pass (p=reject) header.from=mail.parent.test", result)

    @defer.inlineCallbacks
    def test_quarantineFiledIntoJunk(self) -> Any:
        """
        A DMARC failure of a p=quarantine domain is delivered with its
        verdict, into the Junk folder of a recipient who has one (an IMAP
        user) and into the inbox of one who has not (POP3 only).
        """
        import os

        self.server.addUser("bob@example.test", "bob-secret")
        alice = self.server.service.mailStore.pathFor("alice@example.test")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(alice, ".Junk", sub), exist_ok=True)
        forged = body("From: offers@shop.test\nSubject: deal\n\nbuy now\n")
        failures = yield deferToThread(
            sendAll, self.server.ports["smtp"], [("x@pass.test", forged)], ["alice@example.test", "bob@example.test"]
        )
        self.assertEqual(failures, {})
        self.assertEqual(self.server.newFiles("alice@example.test"), [])
        junk = os.listdir(os.path.join(alice, ".Junk", "new"))
        self.assertEqual(len(junk), 1)
        with open(os.path.join(alice, ".Junk", "new", junk[0]), "rb") as f:
            self.assertIn(b"dmarc=fail (p=quarantine) header.from=shop.test", f.read())
        self.assertEqual(len(self.server.newFiles("bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_tooLargeToVerify(self) -> Any:
        """
        A signed message above DKIM_MAX_SIZE: its signature is
        C{dkim=policy (message too large to verify)}, SPF still counts, and
        it is stored whole.
        """
        from mailnet.dkim import sign
        from mailnet.smtp._judge import DKIM_MAX_SIZE

        line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
        original = body("From: bob@signer.test\nSubject: big\n\n") + line * (DKIM_MAX_SIZE // len(line) + 1000)
        signed = sign(original[:200] + b"\r\n", [self.key]) + original
        failures = yield deferToThread(sendAll, self.server.ports["smtp"], [("bob@pass.test", signed)])
        self.assertEqual(failures, {})
        [stored] = self.delivered()
        [result] = fields(stored, b"Authentication-Results")
        self.assertIn(b"spf=pass smtp.mailfrom=bob@pass.test;", result)
        self.assertIn(b"dkim=policy (message too large to verify) header.d=signer.test header.s=s1", result)
        self.assertTrue(stored.replace(b"\n", b"\r\n").endswith(original[original.index(b"\r\n\r\n") :]))

    @defer.inlineCallbacks
    def test_forgedResultsRemoved(self) -> Any:
        """Authentication-Results claiming our host name go; another host's stay; ours is on top."""
        message = body(
            "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\n"
            "Authentication-Results: elsewhere.test; spf=pass\n"
            "From: bob@pass.test\nSubject: forged\n\nhi\n"
        )
        failures = yield deferToThread(sendAll, self.server.ports["smtp"], [("bob@pass.test", message)])
        self.assertEqual(failures, {})
        [stored] = self.delivered()
        found = fields(stored, b"Authentication-Results")
        self.assertEqual(len(found), 2)
        self.assertTrue(found[0].startswith(b"mx.example.test; spf=pass"), found)
        self.assertEqual(found[1], b"elsewhere.test; spf=pass")
        self.assertNotIn(b"header.d=bank.test", stored)


class OutboundTests(unittest.TestCase):
    """
    alice submits; the relay delivers to a capture server; the message
    verifies with dkimpy against the record mailnet-admin printed.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        # RSA 2048 takes seconds to make on a busy machine; its size is tested in test_admin_dkim.
        import mailnet.dkim

        self.patch(mailnet.dkim, "RSA_BITS", 1024)
        self.capture = ScriptedFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.capture)
        self.addCleanup(port.stopListening)
        self.server = yield startServer(self, routes={"b.test": ("127.0.0.1", port.getHost().port)})
        self.server.addUser("alice@example.test", "alice-secret")

    def generate(self, *options: str) -> Tuple[str, bytes]:
        out = io.StringIO()
        status = admin(["--data-dir", self.server.dataDir, "dkim", "generate", "example.test", *options], stdout=out, stderr=out)
        self.assertEqual(status, 0, out.getvalue())
        [line] = [line for line in out.getvalue().splitlines() if "._domainkey." in line]
        name, kind, value = line.split(" ", 2)
        self.assertEqual(kind, "TXT")
        return name, "".join(re.findall(r'"([^"]*)"', value)).encode("ascii")

    def submit(self, message: bytes) -> None:
        context = ssl.create_default_context(cafile=self.server.certPath)
        client = smtplib.SMTP("localhost", self.server.ports["submission"], timeout=10)
        try:
            client.starttls(context=context)
            client.login("alice@example.test", "alice-secret")
            client.sendmail("alice@example.test", ["bob@b.test"], message)
        finally:
            client.quit()

    @defer.inlineCallbacks
    def relayed(self) -> Any:
        # The data, once the relay's connection is closed too (it may stay
        # open a moment for more messages, then QUIT): the test ends clean.
        for _ in range(400):
            if self.capture.transactions and not self.capture.open:
                return self.capture.transactions[0]["data"]
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("nothing relayed, or the connection stayed open")

    @defer.inlineCallbacks
    def test_signedRSAAndEd25519(self) -> Any:
        """
        With an RSA and an Ed25519 key both signatures verify (RFC 8463),
        with the records as printed; Date and Message-ID were added first;
        From, To and Subject are oversigned.
        """
        records = dict([self.generate(), self.generate("--type", "ed25519", "--selector", "e1")])
        message = body("From: Alice <alice@example.test>\nTo: bob@b.test\nSubject: signed\n\nHello Bob\n")
        yield deferToThread(self.submit, message)
        relayed = yield self.relayed()
        asked: List[bytes] = []

        def dnsfunc(name: bytes, timeout: Any = 5) -> Any:
            asked.append(name)
            return records.get(name.decode("ascii"))

        verifier = dkim.DKIM(relayed)
        self.assertTrue(verifier.verify(0, dnsfunc=dnsfunc))
        self.assertEqual(verifier.signature_fields[b"a"], b"rsa-sha256")
        self.assertEqual(verifier.signature_fields[b"c"], b"relaxed/relaxed")
        self.assertNotIn(b"l", verifier.signature_fields)
        signedNames = re.sub(rb"\s+", b"", verifier.signature_fields[b"h"]).split(b":")
        for name in (b"from", b"to", b"subject"):
            self.assertEqual(signedNames.count(name), 2)
        self.assertIn(b"date", signedNames)
        self.assertIn(b"message-id", signedNames)
        self.assertTrue(verifier.verify(1, dnsfunc=dnsfunc))
        self.assertEqual(verifier.signature_fields[b"a"], b"ed25519-sha256")
        self.assertEqual(asked, [b"s1._domainkey.example.test.", b"e1._domainkey.example.test."])
        self.assertEqual(len(fields(relayed, b"Date")), 1)
        # Added at the end of the header section, below the trace fields.
        self.assertLess(relayed.index(b"\r\nReceived:"), relayed.index(b"\r\nDate:"))
        self.assertRegex(fields(relayed, b"Message-ID")[0].decode(), r"^<[0-9a-f]{24}@localhost>$")
        # Tampering shows.
        self.assertFalse(dkim.verify(relayed.replace(b"Hello Bob", b"Hello Eve"), dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_eightBitConvertedBeforeSigning(self) -> Any:
        """RFC 6376 §5.3: an 8-bit body is made quoted-printable before signing, so no relay breaks the signature."""
        records = dict([self.generate("--type", "ed25519")])
        message = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9\r\n"
        yield deferToThread(self.submit, message)
        relayed = yield self.relayed()
        self.assertTrue(relayed.isascii())
        self.assertIn(b"caf=C3=A9", relayed)
        self.assertTrue(dkim.verify(relayed, dnsfunc=lambda name, timeout=5: records.get(name.decode())))
        self.assertFalse(self.capture.transactions[0]["from"].endswith("BODY=8BITMIME"))

    @defer.inlineCallbacks
    def test_receivedLogNamesTLS(self) -> Any:
        """The log line of each received message names the TLS version and cipher."""
        from twisted.logger import globalLogPublisher

        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield deferToThread(self.submit, body("From: alice@example.test\nSubject: s\n\nhi\n"))
        [line] = [e for e in events if "SMTP accepted message" in e.get("log_format", "")]
        self.assertRegex(line["tls"], r"^TLSv1\.[23] [A-Z0-9_-]+$")
        yield self.relayed()  # not stopped half-way through relaying

    @defer.inlineCallbacks
    def test_clientDateKept(self) -> Any:
        """A client's own Date and Message-ID are not replaced; without keys nothing is signed."""
        message = body("From: alice@example.test\nTo: bob@b.test\nDate: Sat, 5 Dec 2026 12:00:00 +0000\nMessage-ID: <x@y>\nSubject: s\n\nhi\n")
        yield deferToThread(self.submit, message)
        relayed = yield self.relayed()
        self.assertEqual(fields(relayed, b"Date"), [b"Sat, 5 Dec 2026 12:00:00 +0000"])
        self.assertEqual(fields(relayed, b"Message-ID"), [b"<x@y>"])
        self.assertEqual(fields(relayed, b"DKIM-Signature"), [])


class ReceiverTests(unittest.TestCase):
    """L{JudgingReceiver} on its own."""

    def judge(self, **kwargs: Any) -> MessageJudge:
        settings: Dict[str, Any] = dict(
            hostname="mx.example.test", dns=None, keys=KeyStore(self.mktemp()), run=ThreadRunner(reactor),
            spoolDir=self.mktemp(), maxMessageSize=10 * 1024 * 1024, now=lambda: 1796500000.0,
        )
        settings.update(kwargs)
        return MessageJudge(**settings)

    @defer.inlineCallbacks
    def test_largeMessageSpooledToFile(self) -> Any:
        """Past 64 KiB the message goes to a file in the spool directory, and comes out whole."""
        import os

        judge = self.judge()
        inner = RecordingReceiver()
        receiver = judge.wrap(inner, peer="127.0.0.1", helo="c.test", mailFrom="a@example.test", authenticated=True, role="submission")
        message = b"From: a@example.test\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n" + b"0123456789abcde\r\n" * 10000
        for start in range(0, len(message), 4096):
            receiver.write(message[start : start + 4096])
        self.assertGreater(len(message), SPOOL_IN_MEMORY)
        self.assertEqual(len(os.listdir(judge.spoolDir)), 0)  # anonymous temporary file
        self.assertEqual(inner.data, b"")
        yield receiver.finish()
        self.assertEqual(inner.data, message)

    @defer.inlineCallbacks
    def test_largeEightBitConvertedAndSigned(self) -> Any:
        """
        Below DKIM_MAX_SIZE a submitted 8-bit message spooled to a file is
        still made 7-bit (its new body from a spool of its own) and signed;
        it reaches the inner receiver in pieces and verifies.
        """
        from mailnet.smtp._judge import WRITE_CHUNK

        keys = KeyStore(self.mktemp())
        key = keys.generate("example.test", "s1", "ed25519")
        judge = self.judge(keys=keys)
        inner = RecordingReceiver()
        receiver = judge.wrap(inner, peer="127.0.0.1", helo="c.test", mailFrom="a@example.test", authenticated=True, role="submission")
        message = (
            b"From: a@example.test\r\nDate: x\r\nMessage-ID: <1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + b"caf\xc3\xa9 au lait\r\n" * 20000
        )
        receiver.write(message)
        yield receiver.finish()
        self.assertTrue(inner.data.isascii())
        self.assertIn(b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 au lait\r\n", inner.data)
        self.assertTrue(dkim.verify(inner.data, dnsfunc=lambda name, timeout=5: key.record().encode()))
        self.assertGreater(len(inner.chunks), 5)
        self.assertLessEqual(max(len(c) for c in inner.chunks[1:]), WRITE_CHUNK)

    @defer.inlineCallbacks
    def test_trustedNetworkNotJudged(self) -> Any:
        """No verdict (and no DNS) for a trusted network; forged results still go."""
        import ipaddress

        judge = self.judge(trustedNetworks=[ipaddress.ip_network("192.0.2.0/24")])
        inner = RecordingReceiver()
        receiver = judge.wrap(inner, peer="::ffff:192.0.2.7", helo="c.test", mailFrom="a@b.test", authenticated=False, role="mta")
        receiver.write(b"Authentication-Results: mx.example.test; spf=pass\r\nFrom: a@b.test\r\n\r\nhi\r\n")
        yield receiver.finish()
        self.assertEqual(inner.data, b"From: a@b.test\r\n\r\nhi\r\n")

    def passThrough(self) -> Tuple[Any, RecordingReceiver]:
        """A receiver for a message that needs only the header filter: plain MTA mail from 127.0.0.1."""
        import ipaddress

        judge = self.judge(trustedNetworks=[ipaddress.ip_network("127.0.0.0/8")])
        inner = RecordingReceiver()
        return judge.wrap(inner, peer="127.0.0.1", helo="c.test", mailFrom="a@b.test", authenticated=False, role="mta"), inner

    @defer.inlineCallbacks
    def test_passedOnAsItComes(self) -> Any:
        """
        Issue 14: a message that needs only the header filter reaches the
        inner receiver as it comes once its header section is in (the
        blank line split across writes), not spooled and copied at the end;
        forged results still go, and are logged.
        """
        from twisted.logger import globalLogPublisher

        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        receiver, inner = self.passThrough()
        receiver.write(b"Received: x\r\n")
        self.assertEqual(inner.data, b"")
        receiver.write(b"Authentication-Results: mx.example.test; spf=pass\r\nFrom: a@b.test\r\n\r")
        self.assertEqual(inner.data, b"")
        receiver.write(b"\nhi\r\n")
        self.assertEqual(inner.data, b"Received: x\r\nFrom: a@b.test\r\n\r\nhi\r\n")
        body = b"0123456789abcde\r\n" * 10000
        receiver.write(body)
        self.assertTrue(inner.data.endswith(body))
        self.assertFalse(inner.finished)
        yield receiver.finish()
        self.assertTrue(inner.finished)
        self.assertEqual(inner.data, b"Received: x\r\nFrom: a@b.test\r\n\r\nhi\r\n" + body)
        self.assertEqual([e["summary"] for e in events if "summary" in e], ["removed 1 forged Authentication-Results"])

    @defer.inlineCallbacks
    def test_passThroughShapes(self) -> Any:
        """
        No blank line at all, an empty header section, and a header section
        larger than the memory spool: delivered as the spooling path does.
        """
        for message in (
            b"Subject: no body\r\nX: y\r\n",
            b"\r\nbody only\r\n",
            b"X-Big: " + b"y" * (SPOOL_IN_MEMORY + 10) + b"\r\nAuthentication-Results: mx.example.test; x\r\n\r\nbody\r\n",
        ):
            receiver, inner = self.passThrough()
            for start in range(0, len(message), 1000):
                receiver.write(message[start : start + 1000])
            yield receiver.finish()
            self.assertEqual(inner.data, message.replace(b"Authentication-Results: mx.example.test; x\r\n", b""))

    @defer.inlineCallbacks
    def test_passThroughLargeWrite(self) -> Any:
        """A header section that comes with more than the memory spool's worth of body in one write is passed on at once."""
        receiver, inner = self.passThrough()
        receiver.write(b"Received: x\r\n")
        body = b"0123456789abcde\r\n" * 10000
        receiver.write(b"Authentication-Results: mx.example.test; x\r\nSubject: s\r\n\r\n" + body)
        self.assertEqual(inner.data, b"Received: x\r\nSubject: s\r\n\r\n" + body)
        yield receiver.finish()
        self.assertEqual(inner.data, b"Received: x\r\nSubject: s\r\n\r\n" + body)

    @defer.inlineCallbacks
    def test_passThroughEveryPieceSize(self) -> Any:
        """Whatever the pieces, the same bytes come out."""
        message = b"Received: x\r\nAuthentication-Results: mx.example.test; x\r\nA: b\r\n\r\n\r\nbody\r\n.\r\n"
        for size in range(1, len(message) + 1):
            receiver, inner = self.passThrough()
            for start in range(0, len(message), size):
                receiver.write(message[start : start + size])
            yield receiver.finish()
            self.assertEqual(inner.data, message.replace(b"Authentication-Results: mx.example.test; x\r\n", b""))

    @defer.inlineCallbacks
    def test_passThroughAbort(self) -> Any:
        """A message passed on and then refused by the server is aborted in the inner receiver."""
        receiver, inner = self.passThrough()
        receiver.write(b"From: a@b.test\r\n\r\nhi\r\n")
        receiver.abort()
        self.assertTrue(inner.aborted)
        yield None

    @defer.inlineCallbacks
    def test_judgedNotPassedOn(self) -> Any:
        """Mail to be judged (an MTA client outside the trusted networks) waits for its verdict."""
        judge = self.judge()
        inner = RecordingReceiver()
        receiver = judge.wrap(inner, peer="192.0.2.7", helo="c.test", mailFrom="", authenticated=False, role="mta")
        receiver.write(b"From: a@b.test\r\n\r\nhi\r\n")
        self.assertEqual(inner.data, b"")
        receiver.abort()
        yield None

    @defer.inlineCallbacks
    def test_refusalAbortsInner(self) -> Any:
        """A refusal is the SMTPReply finish() fails with; nothing is stored."""
        from mailnet import verdicts

        class Refusing(MessageJudge):
            def process(self, spool: Any, envelope: Any) -> Any:
                from mailnet.smtp._judge import Outcome

                return Outcome(refusal=verdicts.Refusal(550, "5.7.1 no"), summary="dmarc=fail")

        judge = self.judge()
        judge.__class__ = Refusing
        inner = RecordingReceiver()
        receiver = judge.wrap(inner, peer="192.0.2.7", helo="c.test", mailFrom="a@b.test", authenticated=False, role="mta")
        receiver.write(b"From: a@b.test\r\n\r\nhi\r\n")
        failure = yield self.assertFailure(receiver.finish(), SMTPReply)
        self.assertEqual((failure.code, failure.text), (550, "5.7.1 no"))
        self.assertTrue(inner.aborted)


class ServerReplyTests(unittest.SynchronousTestCase):
    """The SMTP server sends an SMTPReply failure of finish() as the answer to the end of data."""

    def test_refusalSentAsIs(self) -> None:
        class Judge:
            def wrap(self, receiver: Any, **context: Any) -> Any:
                self.context = context
                return Refusing()

        class Refusing(RecordingReceiver):
            def finish(self) -> defer.Deferred:
                return defer.fail(SMTPReply(550, "5.7.1 Message refused: DMARC policy of bank.test"))

        judge = Judge()
        factory = SMTPFactory(
            hostname="mx.example.test", role="mta", delivery=FakeDeliveryAgent(), authenticator=FakeAuthenticator({}),
            limits=Limits(), clock=task.Clock(), judge=judge,
        )
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"EHLO c.test\r\nMAIL FROM:<x@bank.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            b"From: ceo@bank.test\r\n\r\nhi\r\n.\r\nNOOP\r\n"
        )
        lines = transport.value().decode().splitlines()
        self.assertEqual(lines[-2], "550 5.7.1 Message refused: DMARC policy of bank.test")
        self.assertEqual(lines[-1], "250 2.0.0 Ok")
        self.assertEqual(
            judge.context, {"peer": "192.168.1.1", "helo": "c.test", "mailFrom": "x@bank.test", "authenticated": False, "role": "mta"}
        )


class WorkerPoolTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_stopWhileWaitingForDNS(self) -> Any:
        """
        Stopping the verdicts' pool while a worker waits for a DNS answer
        does not hang: the reactor keeps running while the pool is joined.
        """
        import threading

        from twisted.python.threadpool import ThreadPool

        from mailnet.dns import DNSClient
        from mailnet.smtp._judge import WorkerPoolService

        class Slow:
            def query(self, q: Any) -> defer.Deferred:
                return task.deferLater(reactor, 0.05, lambda: ([], [], []))

        pool = ThreadPool(0, 2, "test-verdicts")
        service = WorkerPoolService(pool, reactor)
        service.startService()
        blocking = DNSClient(reactor, resolver=Slow()).blocking()
        started = threading.Event()

        def work() -> Any:
            started.set()
            return blocking.txt("x.test")

        d = ThreadRunner(reactor, pool)(work)
        yield deferToThread(started.wait, 5)
        yield service.stopService()
        self.assertEqual((yield d), [])


class HashingReceiver:
    """
    An inner receiver that keeps only the first write (the header section),
    a hash of the rest and the size of every write: a large message does
    not sit in the test's memory.
    """

    def __init__(self) -> None:
        import hashlib

        self.first = b""
        self.rest = hashlib.sha256()
        self.sizes: List[int] = []
        self.finished = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not (self.finished or self.aborted)
        if not self.sizes:
            self.first = data
        else:
            self.rest.update(data)
        self.sizes.append(len(data))

    def finish(self) -> defer.Deferred:
        self.finished = True
        return defer.succeed("test-id")

    def abort(self) -> None:
        self.aborted = True


class OneDNS:
    """A L{mailnet.dns.DNSClient} stand-in whose blocking resolver answers from a dict."""

    def __init__(self, records: Dict[str, List[Tuple[str, Any]]]) -> None:
        from tests.test_verdicts import FakeDNS

        self.fake = FakeDNS(records)

    def blocking(self) -> Any:
        return self.fake


class LargeMessageTests(unittest.SynchronousTestCase):
    """
    A message larger than DKIM_MAX_SIZE is never read whole: the worker
    reads its header section, and the body goes from the spool file into
    the inner receiver a piece per cooperator iteration.
    """

    #: 12 MiB of body, in 64 KiB lines-of-text blocks.
    BLOCK = (b"x" * 78 + b"\r\n") * (64 * 1024 // 80)
    BLOCKS = 12 * 1024 * 1024 // len(BLOCK) + 1

    def setUp(self) -> None:
        from mailnet.smtp import _judge
        from mailnet.store.maildir import runSynchronously

        self.clock = task.Clock()
        self.ticks = 0

        def schedule(work: Any) -> Any:
            self.ticks += 1
            return self.clock.callLater(0, work)

        # One iteration per turn of the (fake) reactor.
        self.cooperator = task.Cooperator(scheduler=schedule, terminationPredicateFactory=lambda: lambda: True)
        self.keys = KeyStore(self.mktemp())
        self.judge = MessageJudge(
            hostname="mx.example.test", dns=OneDNS({"pass.test": [("TXT", "v=spf1 ip4:192.0.2.7 -all")]}), keys=self.keys,
            run=runSynchronously, spoolDir=self.mktemp(), maxMessageSize=25 * 1024 * 1024, now=lambda: 1796500000.0,
            cooperator=self.cooperator,
        )

        def wholeRead(spool: Any, start: int = 0) -> bytes:
            self.fail("the whole message was read")

        self.patch(_judge._Spool, "read", wholeRead)
        # Loaded once per process (the Public Suffix List, pyspf, dkimpy): not the message's memory.
        import dkim  # noqa: F401
        import spf  # noqa: F401

        from mailnet import verdicts

        verdicts.organizationalDomain("warm.test")
        self.assertGreater(len(self.BLOCK) * self.BLOCKS, _judge.DKIM_MAX_SIZE)

    def send(self, receiver: Any, headers: bytes) -> Tuple[Any, int]:
        """Spool C{headers} and the body; the result of finish(), and the tracemalloc peak."""
        import tracemalloc

        tracemalloc.start()
        try:
            receiver.write(headers + b"\r\n")
            for _ in range(self.BLOCKS):
                receiver.write(self.BLOCK)
            d = receiver.finish()
            result: List[Any] = []
            d.addBoth(result.append)
            self.clock.advance(0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return result[0], peak

    def expectedBody(self) -> bytes:
        import hashlib

        digest = hashlib.sha256()
        digest.update(b"\r\n")
        for _ in range(self.BLOCKS):
            digest.update(self.BLOCK)
        return digest.digest()

    def test_judgedInPieces(self) -> None:
        """
        On the MTA port: delivered byte for byte with our
        Authentication-Results on top and the forged one gone, in pieces of
        at most 64 KiB, one per reactor turn; its DKIM signature is
        C{policy} (not verified), DMARC rests on SPF; the process never
        held more than a few MiB.
        """
        from mailnet.smtp._judge import WRITE_CHUNK

        inner = HashingReceiver()
        receiver = self.judge.wrap(inner, peer="192.0.2.7", helo="c.test", mailFrom="a@pass.test", authenticated=False, role="mta")
        headers = (
            b"Received: from c.test\r\n"
            b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
            b"DKIM-Signature: v=1; a=rsa-sha256; d=pass.test; s=s1; c=relaxed/relaxed;\r\n"
            b"\th=from; bh=AAAA; b=QUJDREVGR0hJSg==\r\n"
            b"From: a@pass.test\r\nSubject: big\r\n"
        )
        result, peak = self.send(receiver, headers)
        self.assertEqual(result, "test-id")
        self.assertTrue(inner.finished)
        self.assertEqual(
            inner.first,
            b"Authentication-Results: mx.example.test;\r\n"
            b"\tspf=pass smtp.mailfrom=a@pass.test;\r\n"
            b"\tdkim=policy (message too large to verify) header.d=pass.test header.s=s1 header.a=rsa-sha256 header.b=QUJDREVG;\r\n"
            b"\tdmarc=none header.from=pass.test\r\n"
            + headers.replace(b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n", b""),
        )
        self.assertEqual(inner.rest.digest(), self.expectedBody())
        self.assertLessEqual(max(inner.sizes[1:]), WRITE_CHUNK)
        self.assertGreater(len(inner.sizes), 12 * 16)
        self.assertGreater(self.ticks, 12 * 16)
        self.assertLess(peak, 1024 * 1024)

    def test_notSigned(self) -> None:
        """
        Submitted: Date and Message-ID are added, but it is not signed
        (one warning in the log), and it is delivered in pieces.
        """
        from twisted.logger import LogLevel, globalLogPublisher

        self.keys.generate("example.test", "s1", "ed25519")
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        inner = HashingReceiver()
        receiver = self.judge.wrap(inner, peer="192.0.2.7", helo="c.test", mailFrom="a@example.test", authenticated=True, role="submission")
        headers = b"Received: from c.test\r\nFrom: a@example.test\r\nSubject: big\r\n"
        result, peak = self.send(receiver, headers)
        self.assertEqual(result, "test-id")
        self.assertTrue(inner.first.startswith(headers + b"Date: Sat, 05 Dec 2026 19:46:40 +0000\r\n"), inner.first)
        self.assertRegex(inner.first.split(b"\r\n")[-2], rb"^Message-ID: <[0-9a-f]{24}@mx.example.test>$")
        self.assertNotIn(b"DKIM-Signature", inner.first)
        self.assertEqual(inner.rest.digest(), self.expectedBody())
        self.assertLess(peak, 1024 * 1024)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and "not DKIM-signed" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)

    def test_headerSectionBounded(self) -> None:
        """Above DKIM_MAX_SIZE, a header section of more than 1 MiB is refused (552 5.3.4), not read into memory."""
        inner = HashingReceiver()
        receiver = self.judge.wrap(inner, peer="192.0.2.7", helo="c.test", mailFrom="a@pass.test", authenticated=False, role="mta")
        field = b"X-Filler: " + b"y" * 900 + b"\r\n"
        receiver.write(b"From: a@pass.test\r\n")
        for _ in range(11 * 1024 * 1024 // len(field) + 1):
            receiver.write(field)
        d = receiver.finish()
        failure = self.failureResultOf(d, SMTPReply)
        self.assertEqual((failure.value.code, failure.value.text), (552, "5.3.4 Header section too large"))
        self.assertTrue(inner.aborted)
        self.assertEqual(inner.sizes, [])


class SpoolTests(unittest.SynchronousTestCase):
    """The spool finds the header section a piece at a time."""

    def spool(self, data: bytes) -> Any:
        from mailnet.smtp._judge import _Spool

        spool = _Spool(self.mktemp(), len(data))
        spool.write(data)
        self.addCleanup(spool.close)
        return spool

    def test_blankLineAcrossPieces(self) -> None:
        """The blank line is found wherever it falls, also across the 64 KiB reads; the rest comes out from there."""
        from mailnet.smtp._judge import WRITE_CHUNK

        for end in range(WRITE_CHUNK - 4, WRITE_CHUNK + 2):
            headers = b"X: " + b"a" * (end - 3) + b"\r\n"
            message = headers + b"\r\nbody\r\n" * 20000
            spool = self.spool(message)
            self.assertFalse(spool.inMemory)
            self.assertEqual(spool.headerSection(10 * WRITE_CHUNK), (headers, len(headers)))
            self.assertEqual(b"".join(spool.pieces(len(headers))), message[len(headers) :])

    def test_oddShapes(self) -> None:
        """No header section, no blank line (in memory and in a file), and too many octets before it."""
        from mailnet.smtp._judge import HeaderSectionTooLarge

        self.assertEqual(self.spool(b"\r\nbody\r\n").headerSection(100), (b"", 0))
        self.assertEqual(self.spool(b"A: b\r\n").headerSection(100), (b"A: b\r\n", 6))
        long = b"A: b\r\n" * 30000
        self.assertEqual(self.spool(long).headerSection(len(long)), (long, len(long)))
        self.assertRaises(HeaderSectionTooLarge, self.spool(long + b"\r\nbody").headerSection, 100000)


class WholeMessageTests(unittest.SynchronousTestCase):
    """Messages above LARGE_DKIM are read whole by few threads at a time; others do not wait."""

    def test_fewAtOnce(self) -> None:
        from mailnet.smtp._judge import LARGE_DKIM, LARGE_DKIM_AT_ONCE
        from mailnet.store.maildir import runSynchronously

        class Counting:
            entered = 0

            def __enter__(self) -> None:
                self.entered += 1

            def __exit__(self, *exc: Any) -> None:
                pass

        keys = KeyStore(self.mktemp())
        keys.generate("example.test", "s1", "ed25519")
        clock = task.Clock()
        judge = MessageJudge(
            hostname="mx.example.test", dns=OneDNS({}), keys=keys, run=runSynchronously,
            spoolDir=self.mktemp(), maxMessageSize=25 * 1024 * 1024,
            cooperator=task.Cooperator(scheduler=lambda work: clock.callLater(0, work)),
        )
        self.assertEqual(judge._largeDKIM._value, LARGE_DKIM_AT_ONCE)  # type: ignore[attr-defined]
        counting = judge._largeDKIM = Counting()  # type: ignore[assignment]
        large = b"\r\n" + (b"z" * 998 + b"\r\n") * (LARGE_DKIM // 1000 + 1)
        signature = b"DKIM-Signature: v=1; a=rsa-sha256; d=b.test; s=s1; h=from; bh=AAAA; b=AAAA\r\n"
        cases = [
            # (authenticated, header section, body, read whole?)
            (True, b"From: a@example.test\r\n", large, True),
            (True, b"From: a@example.test\r\n", b"\r\nhi\r\n", False),
            (True, b"From: a@elsewhere.test\r\n", large, False),  # no key: not signed
            (False, signature + b"From: a@b.test\r\n", large, True),
            (False, b"From: a@b.test\r\n", large, False),  # unsigned: not verified
        ]
        for authenticated, headers, body, whole in cases:
            before = counting.entered
            inner = RecordingReceiver()
            receiver = judge.wrap(
                inner, peer="192.0.2.7", helo="c.test", mailFrom="a@b.test", authenticated=authenticated,
                role="submission" if authenticated else "mta",
            )
            receiver.write(b"Received: from c.test\r\n" + headers + body)
            d = receiver.finish()
            clock.advance(0)
            self.successResultOf(d)
            self.assertTrue(inner.data.endswith(body))
            self.assertIn(headers, inner.data)
            self.assertEqual(counting.entered - before, 1 if whole else 0, (authenticated, headers))


class CopyingCooperatorTests(unittest.SynchronousTestCase):
    def test_paced(self) -> None:
        """
        The service's copying: 16 pieces per reactor turn, then a 2 ms
        pause, so the thread creating the Maildir file gets the CPU.
        """
        from mailnet.smtp._judge import COPY_PAUSE, COPY_PIECES_PER_TURN, copyingCooperator

        clock = task.Clock()
        done: List[int] = []

        def pieces() -> Any:
            for i in range(40):
                done.append(i)
                yield None

        copyingCooperator(clock).cooperate(pieces())
        self.assertEqual((COPY_PIECES_PER_TURN, COPY_PAUSE), (16, 0.002))
        clock.advance(0.001)
        self.assertEqual(len(done), 0)
        counts = []
        for _ in range(3):
            clock.advance(COPY_PAUSE)
            counts.append(len(done))
        self.assertEqual(counts, [16, 32, 40])


class LightCanonicalizationTests(unittest.SynchronousTestCase):
    """
    dkimpy's parsing and whitespace canonicalization, made to hold little
    memory (L{mailnet.dkim.useLightCanonicalization}), give what dkimpy's
    own give, also where blocks split.
    """

    def test_sameResults(self) -> None:
        import random

        import dkim as dkimpy
        import dkim.canonicalization as canonicalization

        from mailnet.dkim import _CANONICAL_BLOCK, useLightCanonicalization

        useLightCanonicalization()
        randomness = random.Random(13)
        pieces = [b" ", b"\t", b"  \t ", b"\r\n", b" \r\n", b"\t\r\n", b"word", b"x", b"\r\n\r\n", b"\r"]
        for _ in range(30):
            body = b"".join(randomness.choice(pieces) for _ in range(randomness.randrange(1, 3 * _CANONICAL_BLOCK // 3)))
            for name in ("strip_trailing_whitespace", "compress_whitespace"):
                light = getattr(canonicalization, name)
                self.assertEqual(light(body), light.original(body))
            for message in (b"From: a\r\nSubject:  x \r\n\r\n" + body, b"\r\n" + body, b"From: a\r\n", b"From: a\n\nbare LF\n" + body):
                self.assertEqual(dkimpy.rfc822_parse(message), dkimpy.rfc822_parse.original(message))

    def test_proseVerifiedInLittleMemory(self) -> None:
        """2 MB of prose: dkimpy's own way took some 85 MB to verify; now under 20 MB."""
        import tracemalloc

        from mailnet.dkim import sign
        from tests.test_verdicts import testKey

        key = testKey("example.test", "ed25519")
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        message = b"From: a@example.test\r\nSubject: prose\r\n\r\n" + line * (2 * 1024 * 1024 // len(line))
        message = sign(message, [key]) + message
        tracemalloc.start()
        try:
            self.assertTrue(dkim.verify(message, dnsfunc=lambda name, timeout=5: key.record().encode()))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 20 * 1024 * 1024)
