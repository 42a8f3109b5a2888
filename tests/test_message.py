"""
Tests for L{mailnet.message}: composing (RFC 5322, 2045, 2047, 2231) and
decoding real-world MIME samples from C{tests/samples/}.
"""

import datetime
import email
import email.policy
import os

from twisted.trial import unittest

from mailnet.message import (
    AttachmentFile,
    composeMessage,
    decodeMessage,
    envelopeRecipients,
    envelopeSenderOf,
    guessContentType,
    htmlToText,
    mboxEntry,
    messageBytes,
    safeFilename,
    summarize,
)

SAMPLES = os.path.join(os.path.dirname(__file__), "samples")
NOW = datetime.datetime(2026, 3, 1, 12, 30, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))


def sample(name: str) -> bytes:
    with open(os.path.join(SAMPLES, name), "rb") as f:
        return f.read()


class ComposeTests(unittest.SynchronousTestCase):
    def compose(self, **kw) -> bytes:
        args = dict(sender="Alice <alice@example.test>", to=["bob@example.test"], subject="Hello", body="Hi Bob.\n", now=NOW)
        args.update(kw)
        return messageBytes(composeMessage(**args))

    def parse(self, data: bytes):
        return email.message_from_bytes(data, policy=email.policy.default)

    def test_requiredHeaders(self) -> None:
        """RFC 5322 §3.6: Date, From, and a Message-ID in the sender's domain."""
        message = self.parse(self.compose())
        self.assertEqual(message["Date"], "Sun, 01 Mar 2026 12:30:00 +0100")
        self.assertEqual(message["From"], "Alice <alice@example.test>")
        self.assertEqual(message["To"], "bob@example.test")
        self.assertTrue(message["Message-ID"].endswith("@example.test>"))
        self.assertEqual(message["MIME-Version"], "1.0")

    def test_crlfAndSevenBit(self) -> None:
        """Wire bytes: CRLF line endings only, and 7-bit clean (no 8BITMIME needed)."""
        data = self.compose(subject="Grüße", body="Ünïcödé body ✓\nline two\n")
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        self.assertTrue(all(b < 0x80 for b in data))

    def test_encodedWordSubject(self) -> None:
        """RFC 2047: non-ASCII header text is encoded, and decodes back."""
        data = self.compose(subject="Grüße aus Köln")
        self.assertIn(b"=?utf-8?", data)
        self.assertEqual(self.parse(data)["Subject"], "Grüße aus Köln")

    def test_bodyRoundTrip(self) -> None:
        data = self.compose(body="Ünïcödé body ✓\n.leading dot\nFrom me\n")
        self.assertEqual(decodeMessage(data).text, "Ünïcödé body ✓\n.leading dot\nFrom me\n")

    def test_bccNotInHeaders(self) -> None:
        """Bcc goes in the envelope only; composeMessage has no Bcc to leak."""
        data = self.compose(cc=["carol@example.test"])
        message = self.parse(data)
        self.assertEqual(message["Cc"], "carol@example.test")
        self.assertIsNone(message["Bcc"])
        self.assertEqual(
            envelopeRecipients(["bob@example.test"], ["carol@example.test"], ["dave@example.test", "BOB@example.test"]),
            ["bob@example.test", "carol@example.test", "dave@example.test"],
        )

    def test_attachmentRFC2231Name(self) -> None:
        """A non-ASCII file name is an RFC 2231 parameter; the type is guessed."""
        data = self.compose(attachments=[AttachmentFile("résumé.pdf", b"%PDF-1.4\n\x00\xff", "")])
        self.assertIn(b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf", data)
        decoded = decodeMessage(data)
        [attachment] = decoded.attachments
        self.assertEqual(attachment.filename, "résumé.pdf")
        self.assertEqual(attachment.contentType, "application/pdf")
        self.assertEqual(attachment.data, b"%PDF-1.4\n\x00\xff")
        self.assertEqual(decoded.text, "Hi Bob.\n")

    def test_textAttachmentByteExact(self) -> None:
        payload = b"line\r\nbare\rcr\n\xe9"
        data = self.compose(attachments=[AttachmentFile("notes.txt", payload)])
        self.assertEqual(decodeMessage(data).attachments[0].data, payload)

    def test_guessContentType(self) -> None:
        self.assertEqual(guessContentType("a.png"), "image/png")
        self.assertEqual(guessContentType("a.unknownext"), "application/octet-stream")
        self.assertEqual(guessContentType("a.tar.gz"), "application/octet-stream")


class DecodeSampleTests(unittest.SynchronousTestCase):
    """Real-world MIME from C{tests/samples/}."""

    def test_quotedPrintableLatin1(self) -> None:
        decoded = decodeMessage(sample("qp-latin1.eml"))
        self.assertEqual(decoded.headers["From"], "José María <jose@example.es>")
        self.assertEqual(decoded.headers["Subject"], "Señor información sobre el pedido")
        self.assertIn("Hola Señora,", decoded.text)
        # A soft line break (RFC 2045 §6.7 rule 5) joins the lines.
        self.assertIn("con un salto suave", decoded.text)
        self.assertIn("From the office: == fin ==", decoded.text)
        self.assertFalse(decoded.textFromHTML)

    def test_base64UTF8(self) -> None:
        decoded = decodeMessage(sample("base64-utf8.eml"))
        self.assertEqual(decoded.text, "Привет, Алиса! 你好 — ünïcödé ✓\nВторая строка.\n")
        self.assertEqual(decoded.headers["Subject"], "Привет мир")
        self.assertEqual(decoded.headers["Cc"], "carol@example.test")
        self.assertEqual(decoded.attachments, ())

    def test_htmlOnlyAlternative(self) -> None:
        """No plain part: the HTML is rendered as readable text."""
        decoded = decodeMessage(sample("html-only-alternative.eml"))
        self.assertTrue(decoded.textFromHTML)
        self.assertIn("Spring sale", decoded.text)
        self.assertIn("Everything 20% off", decoded.text)
        self.assertIn("* Café cups", decoded.text)
        self.assertIn("our shop <https://shop.example/sale>", decoded.text)
        self.assertNotIn("alert", decoded.text)
        self.assertNotIn("color: red", decoded.text)
        self.assertNotIn("<", decoded.text.replace("<https://shop.example/sale>", ""))

    def test_rfc2231ContinuedName(self) -> None:
        """RFC 2231 §3/§4: continued, charset-encoded parameter values."""
        decoded = decodeMessage(sample("attachment-rfc2231.eml"))
        self.assertEqual(decoded.text, "See attached.\n")
        names = [a.filename for a in decoded.attachments]
        self.assertEqual(names, ["Résumé très long — Q1.pdf", ""])
        self.assertEqual(decoded.attachments[0].data[:8], b"%PDF-1.4")
        # An unnamed inline image still shows, under a made-up safe name.
        self.assertEqual(decoded.attachments[1].safeName, "attachment.png")

    def test_hostileNames(self) -> None:
        """
        Path traversal: C{../../etc/passwd} and friends become plain names
        inside the target directory, deduplicated.
        """
        decoded = decodeMessage(sample("hostile-name.eml"))
        self.assertEqual(
            [(a.filename, a.safeName) for a in decoded.attachments],
            [
                ("../../etc/passwd", "passwd"),
                ("..\\..\\windows\\evil.bat", "evil.bat"),
                ("..", "attachment"),
                ("/tmp/passwd", "passwd (1)"),
            ],
        )

    def test_crlfSample(self) -> None:
        """What POP3 hands back has CRLF line endings: same result."""
        data = sample("qp-latin1.eml").replace(b"\n", b"\r\n")
        self.assertEqual(decodeMessage(data).text, decodeMessage(sample("qp-latin1.eml")).text)

    def test_unknownCharset(self) -> None:
        data = b"Subject: x\nContent-Type: text/plain; charset=x-no-such\n\nhello \xe9\n"
        self.assertIn("hello", decodeMessage(data).text)

    def test_headerControlCharacters(self) -> None:
        """Escape sequences in headers are not passed to the terminal."""
        data = b"Subject: =?utf-8?q?a=1B[31mred?=\n\nx\n"
        self.assertNotIn("\x1b", decodeMessage(data).headers["Subject"])

    def test_asJSON(self) -> None:
        document = decodeMessage(sample("attachment-rfc2231.eml")).asJSON()
        self.assertEqual(document["attachments"][0]["size"], 16)
        self.assertEqual(document["headers"]["Subject"], "the report")


class SafeFilenameTests(unittest.SynchronousTestCase):
    def test_cases(self) -> None:
        for given, expected in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("..", "attachment"),
            (".", "attachment"),
            ("", "attachment"),
            ("/", "attachment"),
            (".bashrc", "bashrc"),
            ("a\x00b\nc.txt", "abc.txt"),
            ("C:\\Windows\\x.exe", "x.exe"),
            ("CON.txt", "_CON.txt"),
        ]:
            self.assertEqual(safeFilename(given), expected, given)

    def test_dedupe(self) -> None:
        self.assertEqual(safeFilename("a.txt", ["A.TXT", "a (1).txt"]), "a (2).txt")

    def test_long(self) -> None:
        self.assertLessEqual(len(safeFilename("x" * 1000 + ".pdf")), 200)
        self.assertTrue(safeFilename("x" * 1000 + ".pdf").endswith(".pdf"))


class SummaryAndMboxTests(unittest.SynchronousTestCase):
    def test_summarize(self) -> None:
        summary = summarize(3, 1234, sample("qp-latin1.eml").split(b"\n\n")[0] + b"\n\n", "uid-3")
        self.assertEqual(summary.asJSON()["from"], "José María <jose@example.es>")
        self.assertEqual(summary.asJSON()["number"], 3)
        self.assertEqual(summary.asJSON()["size"], 1234)
        self.assertEqual(summary.subject, "Señor información sobre el pedido")

    def test_htmlToTextPre(self) -> None:
        self.assertEqual(htmlToText("<pre>a  b\n c</pre>"), "a  b\nc\n")

    def test_mboxrdQuoting(self) -> None:
        """mboxrd: every C{>*From } line gets one more C{>}; LF line endings."""
        data = b"Return-Path: <bob@example.test>\r\nSubject: x\r\n\r\nFrom here\r\n>From there\r\nnot From\r\n"
        entry = mboxEntry(data, envelopeSenderOf(data), datetime.datetime(2026, 3, 1, 9, 5, 3))
        self.assertEqual(
            entry,
            b"From bob@example.test Sun Mar  1 09:05:03 2026\n"
            b"Return-Path: <bob@example.test>\nSubject: x\n\n>From here\n>>From there\nnot From\n\n",
        )

    def test_mboxNoSender(self) -> None:
        entry = mboxEntry(b"Subject: x\r\n\r\nbody", "", datetime.datetime(2026, 3, 1))
        self.assertTrue(entry.startswith(b"From MAILER-DAEMON "))
        self.assertTrue(entry.endswith(b"body\n\n"))


class ForwardedMessageTests(unittest.SynchronousTestCase):
    def test_forwardedIsOneAttachment(self) -> None:
        """A message/rfc822 part is one attachment, not its inner parts."""
        inner = sample("attachment-rfc2231.eml")
        outer = (
            b"Subject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=OUT\n\n"
            b"--OUT\nContent-Type: text/plain\n\nHere it is.\n"
            b"--OUT\nContent-Type: message/rfc822\n\n" + inner + b"\n--OUT--\n"
        )
        decoded = decodeMessage(outer)
        self.assertEqual(decoded.text, "Here it is.\n")
        [attachment] = decoded.attachments
        self.assertEqual((attachment.safeName, attachment.contentType), ("forwarded.eml", "message/rfc822"))
        self.assertIn(b"Subject: the report", attachment.data)


class HeaderScanTests(unittest.SynchronousTestCase):
    """The header-section reading the SMTP server's checks rely on (RFC 5322)."""

    def test_classify(self) -> None:
        from mailnet.message import BLANK, CONTINUATION, FIELD, OTHER, classifyHeaderLine

        self.assertEqual(classifyHeaderLine(b"From: a\r\n"), (FIELD, b"From"))
        # RFC 5322 §4.5: obs- syntax allows white space before the colon.
        self.assertEqual(classifyHeaderLine(b"From : a\r\n"), (FIELD, b"From"))
        self.assertEqual(classifyHeaderLine(b"From\t: a\r\n"), (FIELD, b"From"))
        self.assertEqual(classifyHeaderLine(b"X-A:\r\n"), (FIELD, b"X-A"))
        self.assertEqual(classifyHeaderLine(b" folded\r\n"), (CONTINUATION, None))
        self.assertEqual(classifyHeaderLine(b"\r\n"), (BLANK, None))
        for other in (b"From a@b Sat Dec 5\r\n", b": no name\r\n", b"bad name: x\r\n", b"\xc3\xa9: x\r\n"):
            self.assertEqual(classifyHeaderLine(other), (OTHER, None), other)

    def test_fieldValueUnfolded(self) -> None:
        from mailnet.message import fieldValue

        self.assertEqual(fieldValue(b"From : Alice\r\n <alice@x.test>\r\n"), "Alice <alice@x.test>")

    def test_mailboxAddresses(self) -> None:
        from mailnet.message import mailboxAddresses

        cases = {
            "alice@x.test": ["alice@x.test"],
            "Alice <ALICE@x.test>": ["alice@x.test"],
            '"Bob, <bob@y.test>" <alice@x.test>': ["alice@x.test"],
            "a@x.test, b@y.test": ["a@x.test", "b@y.test"],
            "alice@x.test <bob@y.test>": ["bob@y.test"],
            "<a@x.test> <b@y.test>": [""],
            "<a@x.test> trailing": [""],
            "team: a@x.test, b@y.test;, c@z.test": ["a@x.test", "b@y.test", "c@z.test"],
            "undisclosed-recipients:;": [],
            "bob@y.test (<alice@x.test>)": ["bob@y.test"],
            "(a(b(c)))alice@x.test": ["alice@x.test"],
            '"unterminated <alice@x.test>': [""],
            "<@relay.test:alice@x.test>": ["alice@x.test"],
            "alice @ x . test": ["alice@x.test"],
            "<>": [""],
        }
        for value, expected in cases.items():
            self.assertEqual(mailboxAddresses(value), expected, value)

    def test_boundedNesting(self) -> None:
        """No recursion: 10,000 comments or groups are refused or read in one pass."""
        from mailnet.message import MAX_COMMENT_DEPTH, AddressSyntaxError, mailboxAddresses

        self.assertRaises(AddressSyntaxError, mailboxAddresses, "(" * 10000 + "a@x.test")
        self.assertEqual(mailboxAddresses("(" * MAX_COMMENT_DEPTH + ")" * MAX_COMMENT_DEPTH + "a@x.test"), ["a@x.test"])
        self.assertEqual(mailboxAddresses("g:" * 10000 + "a@x.test;"), [""])
