"""
End to end: mailnet-cli against a real mailnet server on 127.0.0.1
(submission with STARTTLS, smtps, POP3 with STLS, pop3s), certificates
verified against the server's own (generated) certificate.
"""

import email
import email.policy
import io
import json
import os
from typing import Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailnet import passwords
from mailnet.cli import main as cli
from tests.support import startServer


class CLIMixin:
    """Runs mailnet-cli against C{self.server} as Alice or Bob."""

    @defer.inlineCallbacks
    def startWithUsers(self, **kw):
        # Cheap Argon2 parameters: every CLI run logs in once.
        self.patch(passwords, "DEFAULT_HASHER", passwords.lowCostHasher())
        self.server = yield startServer(self, **kw)
        self.server.addUser("alice@example.test", "alice-secret")
        self.server.addUser("bob@example.test", "bob-secret")
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)

    @defer.inlineCallbacks
    def cli(self, user: str, *argv: str, implicit: bool = False, password: Optional[str] = None, cafile: bool = True, stdin: str = ""):
        ports = self.server.ports
        options = [
            "--host", "localhost",
            "--user", user,
            "--smtp-port", str(ports["smtps" if implicit else "submission"]),
            "--pop3-port", str(ports["pop3s" if implicit else "pop3"]),
            "--tls", "implicit" if implicit else "starttls",
        ]
        if cafile:
            options += ["--cafile", self.server.certPath]
        if password is None:
            password = user.split("@")[0] + "-secret"
        stdout, stderr = io.StringIO(), io.StringIO()
        status = yield cli.run(
            reactor,
            options + list(argv),
            stdin=io.StringIO(stdin),
            stdout=stdout,
            stderr=stderr,
            environ={"HOME": self.home, "MAILNET_PASSWORD": password},
        )
        return status, stdout.getvalue(), stderr.getvalue()


class CLIEndToEndTests(CLIMixin, unittest.TestCase):
    def setUp(self):
        return self.startWithUsers()

    @defer.inlineCallbacks
    def test_sendListReadFetch(self):
        """
        Alice sends to Bob (Bcc to herself) over STARTTLS; Bob lists and
        reads it over STLS, then fetches it into a Maildir and deletes it.
        """
        attachment = os.path.join(self.home, "plan ü.txt")
        with open(attachment, "wb") as f:
            f.write(b"step 1\nstep 2\n")
        status, out, err = yield self.cli(
            "alice@example.test", "send", "--to", "bob@example.test", "--bcc", "alice@example.test",
            "--subject", "Grüße, Bob", "--body", "Hello Bob,\n.see the plan.\nFrom Alice\n", "--attach", attachment,
        )
        self.assertEqual(status, 0, err)
        self.assertIn("accepted  bob@example.test", out)
        self.assertIn("accepted  alice@example.test", out)

        status, out, err = yield self.cli("bob@example.test", "list", "--json")
        self.assertEqual(status, 0, err)
        [entry] = json.loads(out)["messages"]
        self.assertEqual((entry["number"], entry["from"], entry["subject"]), (1, "alice@example.test", "Grüße, Bob"))

        status, out, err = yield self.cli("bob@example.test", "read", "1")
        self.assertEqual(status, 0, err)
        self.assertIn("Subject: Grüße, Bob\n", out)
        self.assertIn("Hello Bob,\n.see the plan.\nFrom Alice\n", out)
        self.assertIn("plan ü.txt", out)
        self.assertNotIn("Bcc", out)

        status, out, err = yield self.cli("bob@example.test", "read", "1", "--raw")
        self.assertNotIn("alice@example.test>\nBcc", out)
        self.assertNotIn("Bcc:", out)

        target = os.path.join(self.home, "att")
        status, out, err = yield self.cli("bob@example.test", "save", "1", "--attachments", target)
        self.assertEqual(status, 0, err)
        with open(os.path.join(target, "plan ü.txt"), "rb") as f:
            self.assertEqual(f.read(), b"step 1\nstep 2\n")

        maildir = os.path.join(self.home, "Mail")
        status, out, err = yield self.cli("bob@example.test", "fetch", "--to-maildir", maildir, "--delete")
        self.assertEqual(status, 0, err)
        [name] = os.listdir(os.path.join(maildir, "new"))
        with open(os.path.join(maildir, "new", name), "rb") as f:
            message = email.message_from_bytes(f.read(), policy=email.policy.default)
        self.assertEqual(message["Subject"], "Grüße, Bob")
        self.assertEqual(self.server.newFiles("bob@example.test"), [])
        status, out, err = yield self.cli("bob@example.test", "list")
        self.assertEqual((status, out), (0, "no messages\n"))

        # The Bcc copy reached Alice.
        status, out, err = yield self.cli("alice@example.test", "list", "--json")
        self.assertEqual(len(json.loads(out)["messages"]), 1)

    @defer.inlineCallbacks
    def test_implicitTLSAndDelete(self):
        for i in range(3):
            status, out, err = yield self.cli("alice@example.test", "send", "--to", "bob@example.test", "--subject", "n%d" % (i,),
                                              "--body", "x", implicit=True)
            self.assertEqual(status, 0, err)
        status, out, err = yield self.cli("bob@example.test", "delete", "1", "3", implicit=True)
        self.assertEqual(status, 0, err)
        status, out, err = yield self.cli("bob@example.test", "list", "--json", implicit=True)
        self.assertEqual([m["subject"] for m in json.loads(out)["messages"]], ["n1"])
        mbox = os.path.join(self.home, "mbox")
        status, out, err = yield self.cli("bob@example.test", "fetch", "--to-mbox", mbox, implicit=True)
        self.assertEqual(status, 0, err)
        import mailbox

        [message] = list(mailbox.mbox(mbox))
        self.assertEqual(message["Subject"], "n1")
        self.assertEqual(message.get_from().split()[0], "alice@example.test")

    @defer.inlineCallbacks
    def test_authFailure(self):
        status, out, err = yield self.cli("bob@example.test", "list", password="wrong")
        self.assertEqual(status, cli.EXIT_AUTH)
        self.assertTrue(err.startswith("mailnet-cli: error: localhost refused the login of bob@example.test"), err)
        status, out, err = yield self.cli("bob@example.test", "send", "--to", "alice@example.test", "--subject", "s", "--body", "b",
                                          password="wrong")
        self.assertEqual(status, cli.EXIT_AUTH, err)

    @defer.inlineCallbacks
    def test_unknownRecipient(self):
        """One unknown local recipient: the other still gets it; exit 6 with the server's reply."""
        status, out, err = yield self.cli("alice@example.test", "send", "--to", "bob@example.test", "--to", "nobody@example.test",
                                          "--subject", "s", "--body", "b")
        self.assertEqual(status, cli.EXIT_RECIPIENT, err)
        self.assertIn("refused   nobody@example.test  (550 ", out)
        self.assertIn("accepted  bob@example.test", out)
        self.assertEqual(len(self.server.newFiles("bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_untrustedCertificate(self):
        """Without --cafile the self-signed certificate is not trusted: exit 4, no login."""
        status, out, err = yield self.cli("bob@example.test", "list", cafile=False)
        self.assertEqual(status, cli.EXIT_TLS, err)
        self.assertIn("cannot verify the certificate for localhost", err)
        self.assertEqual(len(err.splitlines()), 1)

    @defer.inlineCallbacks
    def test_debugTranscriptMasked(self):
        """--debug shows both conversations, without the password."""
        status, out, err = yield self.cli("alice@example.test", "--debug", "send", "--to", "bob@example.test", "--subject", "s",
                                          "--body", "b")
        self.assertEqual(status, 0, err)
        self.assertIn("C: STARTTLS", err)
        self.assertIn("C: AUTH PLAIN ****", err)
        status, out, err2 = yield self.cli("bob@example.test", "--debug", "list")
        self.assertEqual(status, 0, err2)
        self.assertIn("C: STLS", err2)
        self.assertIn("C: PASS ****", err2)
        for secret in ("alice-secret", "bob-secret"):
            self.assertNotIn(secret, err + err2)
        import base64

        self.assertNotIn(base64.b64encode(b"\0alice@example.test\0alice-secret").decode(), err)

    @defer.inlineCallbacks
    def test_noSuchMessage(self):
        status, out, err = yield self.cli("bob@example.test", "read", "1")
        self.assertEqual(status, cli.EXIT_NO_MESSAGE, err)


class TooLargeEndToEndTests(CLIMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_messageTooLarge(self):
        """Over the server's SIZE: exit 7, nothing sent."""
        yield self.startWithUsers(limits={"max_message_size": 2000})
        status, out, err = yield self.cli("alice@example.test", "send", "--to", "bob@example.test",
                                                      "--subject", "big", "--body", "x" * 5000)
        self.assertEqual(status, cli.EXIT_TOO_LARGE, err)
        self.assertIn("too large", err)
        # Sizes for a person, and why an attachment may not fit (issue 15 item 10).
        self.assertRegex(err, r"\(5\.\d KiB\)")
        self.assertIn("at most 2.0 KiB", err)
        self.assertIn("attachments grow by a third", err)
        self.assertEqual(self.server.newFiles("bob@example.test"), [])

    @defer.inlineCallbacks
    def test_textAttachmentKeepsTypeAndBytes(self):
        """A text attachment stays text/* and byte-exact, through the server and back (item 10)."""
        yield self.startWithUsers()
        original = b"a;b\r\nlatin-1 \xe9\nno newline at end"
        path = os.path.join(self.home, "table.csv")
        with open(path, "wb") as f:
            f.write(original)
        status, out, err = yield self.cli("alice@example.test", "send", "--to", "bob@example.test", "--subject", "t",
                                          "--body", "see attached", "--attach", path)
        self.assertEqual(status, 0, err)
        status, out, err = yield self.cli("bob@example.test", "read", "1")
        self.assertIn("table.csv  (text/csv,", out)
        target = os.path.join(self.home, "saved")
        status, out, err = yield self.cli("bob@example.test", "save", "1", "--attachments", target)
        self.assertEqual(status, 0, err)
        with open(os.path.join(target, "table.csv"), "rb") as f:
            self.assertEqual(f.read(), original)
