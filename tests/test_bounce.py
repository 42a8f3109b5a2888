# -*- test-case-name: tests.test_bounce -*-
"""
Tests for L{mailnet.bounce}: RFC 3464 delivery status notifications.
"""

import email
import email.policy
import re
from email.message import Message
from typing import Any, List

from twisted.trial import unittest

from mailnet.bounce import DELAYED, FAILED, RecipientResult, makeBounce, statusFromReply

ARRIVAL = 1_800_000_000.0
NOW = ARRIVAL + 3600
HEADERS = (
    b"Received: from client by mx.example.test\r\n"
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: Lunch?\r\n"
    b"Message-ID: <lunch@example.test>\r\n"
)


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data)


def fields(block: Message) -> List[Any]:
    return list(block.items())


class MakeBounceTests(unittest.TestCase):
    def bounce(self, results: Any = None, headers: bytes = HEADERS) -> bytes:
        if results is None:
            results = [
                RecipientResult(
                    "bob@remote.test", FAILED, "5.1.1", "550 5.1.1 <bob@remote.test>: no such user", "mx.remote.test"
                )
            ]
        return makeBounce("mx.example.test", "alice@example.test", results, headers, ARRIVAL, NOW)

    def test_crlfOnly(self) -> None:
        """
        Every line ends with CRLF: no bare LF or CR (RFC 5322 §2.3).
        """
        data = self.bounce()
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        self.assertNotIn(b"\r", data.replace(b"\r\n", b""))
        self.assertTrue(data.endswith(b"\r\n"))

    def test_topLevelHeaders(self) -> None:
        message = parse(self.bounce())
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(message["From"], "Mail Delivery System <MAILER-DAEMON@mx.example.test>")
        self.assertEqual(message["To"], "<alice@example.test>")
        self.assertEqual(message["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(message["Auto-Submitted"], "auto-replied")
        self.assertEqual(message["Date"], "Fri, 15 Jan 2027 09:00:00 +0000")
        self.assertTrue(re.match(r"<.+@mx\.example\.test>\Z", message["Message-ID"]))

    def test_threeParts(self) -> None:
        """
        RFC 6522 §3: the human-readable part, the machine-readable report,
        the original header.
        """
        parts = parse(self.bounce()).get_payload()
        self.assertEqual(
            [p.get_content_type() for p in parts], ["text/plain", "message/delivery-status", "text/rfc822-headers"]
        )
        text = parts[0].get_payload(decode=True).decode("ascii")
        self.assertIn("could not be delivered", text)
        self.assertIn("<bob@remote.test>: 550 5.1.1 <bob@remote.test>: no such user", text)

    def test_deliveryStatusFields(self) -> None:
        """
        RFC 3464 §2.2 per-message fields, §2.3 per-recipient fields.
        """
        status = parse(self.bounce()).get_payload()[1]
        perMessage, perRecipient = status.get_payload()
        self.assertEqual(
            fields(perMessage),
            [("Reporting-MTA", "dns; mx.example.test"), ("Arrival-Date", "Fri, 15 Jan 2027 08:00:00 +0000")],
        )
        self.assertEqual(
            fields(perRecipient),
            [
                ("Final-Recipient", "rfc822; bob@remote.test"),
                ("Action", "failed"),
                ("Status", "5.1.1"),
                ("Remote-MTA", "dns; mx.remote.test"),
                ("Diagnostic-Code", "smtp; 550 5.1.1 <bob@remote.test>: no such user"),
                ("Last-Attempt-Date", "Fri, 15 Jan 2027 09:00:00 +0000"),
            ],
        )

    def test_originalHeadersOnly(self) -> None:
        part = parse(self.bounce()).get_payload()[2]
        self.assertEqual(part.get_payload().replace("\r\n", "\n"), HEADERS.decode().replace("\r\n", "\n"))

    def test_eightBitHeaders(self) -> None:
        """
        Non-ASCII original headers (RFC 6532) pass through as 8bit octets.
        """
        headers = b"Subject: caf\xc3\xa9\r\n"
        data = self.bounce(headers=headers)
        self.assertIn(b"Subject: caf\xc3\xa9\r\n", data)
        self.assertIn(b"Content-Transfer-Encoding: 8bit", data)

    def test_severalRecipients(self) -> None:
        results = [
            RecipientResult("a@remote.test", FAILED, "5.1.1", "550 5.1.1 unknown"),
            RecipientResult("b@remote.test", FAILED, "5.4.7", "451 4.4.1 connection refused"),
        ]
        blocks = parse(self.bounce(results)).get_payload()[1].get_payload()[1:]
        self.assertEqual(
            [(b["Final-Recipient"], b["Status"], b["Diagnostic-Code"]) for b in blocks],
            [
                ("rfc822; a@remote.test", "5.1.1", "smtp; 550 5.1.1 unknown"),
                ("rfc822; b@remote.test", "5.4.7", "smtp; 451 4.4.1 connection refused"),
            ],
        )
        self.assertNotIn("Remote-MTA", blocks[0])

    def test_delayWarning(self) -> None:
        """
        When every result is delayed, the report is a delay warning.
        """
        results = [RecipientResult("bob@remote.test", DELAYED, "4.4.1", "451 4.4.1 no answer")]
        message = parse(self.bounce(results))
        self.assertEqual(message["Subject"], "Delayed Mail (still being retried)")
        block = message.get_payload()[1].get_payload()[1]
        self.assertEqual((block["Action"], block["Status"]), ("delayed", "4.4.1"))
        self.assertIn("will be retried", message.get_payload()[0].get_payload())
        self.assertNotIn("Will-Retry-Until", block)
        results = [RecipientResult("bob@remote.test", DELAYED, "4.4.1", "451 x", willRetryUntil=NOW + 86400)]
        block = parse(self.bounce(results)).get_payload()[1].get_payload()[1]
        self.assertEqual(block["Will-Retry-Until"], "Sat, 16 Jan 2027 09:00:00 +0000")

    def test_replyCannotInjectFields(self) -> None:
        """
        A remote reply with line breaks stays inside its field.
        """
        results = [RecipientResult("bob@remote.test", FAILED, "5.0.0", "550 no\r\nAction: delivered\r\n\r\nX: y")]
        block = parse(self.bounce(results)).get_payload()[1].get_payload()[1]
        self.assertEqual(block.get_all("Action"), ["failed"])
        self.assertEqual(block["Diagnostic-Code"], "smtp; 550 no Action: delivered X: y")


class StatusFromReplyTests(unittest.TestCase):
    def test_enhancedCode(self) -> None:
        self.assertEqual(statusFromReply("550 5.1.1 no such user", True), "5.1.1")
        self.assertEqual(statusFromReply("451 4.7.10 need TLS", False), "4.7.10")

    def test_noEnhancedCode(self) -> None:
        self.assertEqual(statusFromReply("550 go away", True), "5.0.0")
        self.assertEqual(statusFromReply("421 busy", False), "4.0.0")


class ReturnedHeaderTests(unittest.TestCase):
    """The original header in a notification: whole fields, up to a cap."""

    def test_wholeFieldsOnly(self) -> None:
        from mailnet.bounce import wholeFields

        headers = b"A: 1\r\nB: 2\r\n 2b\r\nC: 3\r\n\r\nbody"
        self.assertEqual(wholeFields(headers), b"A: 1\r\nB: 2\r\n 2b\r\nC: 3\r\n")
        # B's continuation would be cut: B is left out whole.
        self.assertEqual(wholeFields(headers, 16), b"A: 1\r\n")
        self.assertEqual(wholeFields(headers, 22), b"A: 1\r\nB: 2\r\n 2b\r\n")
        # Read without its end (by a reader with a cap): the last field may be cut.
        self.assertEqual(wholeFields(b"A: 1\r\nB: 2\r\n 2b"), b"A: 1\r\n")

    def test_longHeaderCutBetweenFields(self) -> None:
        """A 64 kB read of a 100 kB header section: no field is cut in the middle."""
        from mailnet.bounce import MAX_RETURNED_HEADER

        field = b"Received: from a.test\r\n\tby b.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        headers = (field * (100 * 1024 // len(field)))[:MAX_RETURNED_HEADER]
        bounce = makeBounce(
            "mx.example.test", "alice@example.test", [RecipientResult("b@x.test", FAILED, "5.4.6", "554 5.4.6 loop")], headers, ARRIVAL, NOW
        )
        part = parse(bounce).get_payload()[2].get_payload()
        self.assertTrue(part.endswith("+0000\r\n") or part.endswith("+0000\n"), part[-100:])
        self.assertEqual(part.count("Received:"), part.count("\tby b.test"))
