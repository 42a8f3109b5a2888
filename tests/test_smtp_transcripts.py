# -*- test-case-name: tests.test_smtp_transcripts -*-
"""
Whole sessions with L{mailnet.smtp.server}, written as transcripts.

C{C:} lines are what the client sends (a CRLF is added to each); C{S:}
lines are what the server must answer.  Consecutive C{C:} lines go out in
one packet, as a pipelining client sends them; the C{S:} lines after them
are everything the server says in response, in order.
"""

import base64
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import Limits
from tests.test_smtp_server import Harness


def parse(transcript: str) -> List[Tuple[List[str], List[str]]]:
    """Split a transcript into (client lines, server lines) exchanges."""
    exchanges: List[Tuple[List[str], List[str]]] = []
    client: List[str] = []
    server: List[str] = []
    for raw in transcript.strip("\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        who, text = line[:2], line[3:]
        if who == "C:":
            if server:
                exchanges.append((client, server))
                client, server = [], []
            client.append(text)
        elif who == "S:":
            server.append(text)
        else:
            raise ValueError("transcript line must start with C: or S: %r" % (raw,))
    exchanges.append((client, server))
    return exchanges


class TranscriptTestCase(SynchronousTestCase):
    def run_(self, harness: Harness, transcript: str) -> Harness:
        exchanges = parse(transcript)
        greeting, expected = exchanges[0]
        if not greeting:
            self.assertEqual(harness.greeting, expected)
            exchanges = exchanges[1:]
        for client, server in exchanges:
            sent = "".join(line + "\r\n" for line in client).encode("utf-8")
            # Trailing spaces (as in "334 ") do not survive in the text above.
            replies = [line.rstrip(" ") for line in harness.send(sent)]
            self.assertEqual(replies, server, "after sending %r" % (client,))
        return harness


def token(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class MTATranscripts(TranscriptTestCase):
    def test_simpleDelivery(self) -> None:
        h = self.run_(
            Harness(),
            """
            S: 220 mx.example.test ESMTP mailnet
            C: EHLO client.example.org
            S: 250-mx.example.test Hello client.example.org [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250 CHUNKING
            C: MAIL FROM:<sender@remote.test>
            S: 250 2.1.0 Sender <sender@remote.test> ok
            C: RCPT TO:<alice@example.test>
            S: 250 2.1.5 Recipient <alice@example.test> ok
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: From: sender@remote.test
            C: Subject: hello
            C:
            C: ..a line with a leading dot
            C: .
            S: 250 2.0.0 Ok: queued as test-id
            C: QUIT
            S: 221 2.0.0 mx.example.test closing connection
            """,
        )
        self.assertTrue(
            h.delivery.messages[0].data.endswith(
                b"\r\nFrom: sender@remote.test\r\nSubject: hello\r\n\r\n.a line with a leading dot\r\n"
            )
        )

    def test_pipelinedTransaction(self) -> None:
        """RFC 2920 §3.1: the whole envelope in one packet, then the data."""
        h = Harness()
        self.run_(
            h,
            """
            C: EHLO client.example.org
            C: MAIL FROM:<sender@remote.test> SIZE=40 BODY=8BITMIME
            C: RCPT TO:<alice@example.test>
            C: RCPT TO:<carol@example.test>
            C: RCPT TO:<bob@example.test>
            C: DATA
            S: 250-mx.example.test Hello client.example.org [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250 CHUNKING
            S: 250 2.1.0 Sender <sender@remote.test> ok
            S: 250 2.1.5 Recipient <alice@example.test> ok
            S: 550 5.1.1 <carol@example.test>: no such user here
            S: 250 2.1.5 Recipient <bob@example.test> ok
            S: 354 End data with <CR><LF>.<CR><LF>
            C: Subject: two
            C:
            C: body
            C: .
            C: MAIL FROM:<>
            C: RCPT TO:<bob@example.test>
            C: RSET
            C: NOOP
            S: 250 2.0.0 Ok: queued as test-id
            S: 250 2.1.0 Sender <> ok
            S: 250 2.1.5 Recipient <bob@example.test> ok
            S: 250 2.0.0 Ok
            S: 250 2.0.0 Ok
            """,
        )
        self.assertEqual(h.delivery.messages[0].recipients, ["alice@example.test", "bob@example.test"])

    def test_outOfSequence(self) -> None:
        self.run_(
            Harness(),
            """
            S: 220 mx.example.test ESMTP mailnet
            C: MAIL FROM:<sender@remote.test>
            S: 503 5.5.1 Send EHLO or HELO first
            C: HELO client.example.org
            S: 250 mx.example.test Hello client.example.org [192.0.2.7]
            C: RCPT TO:<alice@example.test>
            S: 503 5.5.1 Need MAIL before RCPT
            C: DATA
            S: 503 5.5.1 Need MAIL before DATA
            C: MAIL FROM:<sender@remote.test>
            S: 250 2.1.0 Sender <sender@remote.test> ok
            C: MAIL FROM:<sender@remote.test>
            S: 503 5.5.1 Sender already given
            C: DATA
            S: 503 5.5.1 Need RCPT before DATA
            C: RCPT TO:<someone@elsewhere.test>
            S: 554 5.7.1 <someone@elsewhere.test>: relay access denied
            C: VRFY alice
            S: 252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery
            C: XYZZY
            S: 500 5.5.1 Command unrecognized
            C: QUIT
            S: 221 2.0.0 mx.example.test closing connection
            """,
        )

    def test_chunking(self) -> None:
        """RFC 3030: BDAT chunks (the CRLF after each BDAT line is not data)."""
        h = Harness()
        self.run_(
            h,
            """
            C: EHLO client.example.org
            C: MAIL FROM:<sender@remote.test>
            C: RCPT TO:<alice@example.test>
            C: BDAT 14
            C: Subject: x
            C:
            S: 250-mx.example.test Hello client.example.org [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250 CHUNKING
            S: 250 2.1.0 Sender <sender@remote.test> ok
            S: 250 2.1.5 Recipient <alice@example.test> ok
            S: 250 2.0.0 14 octets received
            C: BDAT 6 LAST
            C: body
            C: NOOP
            S: 250 2.0.0 Ok: queued as test-id
            S: 250 2.0.0 Ok
            """,
        )
        self.assertTrue(h.delivery.messages[0].data.endswith(b"\r\nSubject: x\r\n\r\nbody\r\n"))

    def test_smtputf8(self) -> None:
        """RFC 6531: UTF-8 addresses once MAIL says SMTPUTF8."""
        h = Harness()
        h.delivery.users.add("jürgen@example.test")
        self.run_(
            h,
            """
            C: EHLO client.example.org
            S: 250-mx.example.test Hello client.example.org [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250 CHUNKING
            C: MAIL FROM:<andré@remote.test>
            S: 553 5.6.7 Non-ASCII address needs SMTPUTF8
            C: MAIL FROM:<andré@remote.test> SMTPUTF8
            S: 250 2.1.0 Sender <andré@remote.test> ok
            C: RCPT TO:<jürgen@example.test>
            S: 250 2.1.5 Recipient <jürgen@example.test> ok
            C: DATA
            S: 354 End data with <CR><LF>.<CR><LF>
            C: Subject: grüße
            C:
            C: .
            S: 250 2.0.0 Ok: queued as test-id
            """,
        )
        self.assertIn(b" with UTF8SMTP id ", h.delivery.messages[0].data)
        self.assertIn("for <jürgen@example.test>".encode(), h.delivery.messages[0].data)


class SubmissionTranscripts(TranscriptTestCase):
    def test_startTLSThenAuth(self) -> None:
        """RFC 6409 + RFC 3207 + RFC 4954 as a mail client does it."""
        h = Harness(role="submission", tls=True)
        self.run_(
            h,
            """
            S: 220 mx.example.test ESMTP mailnet
            C: EHLO laptop.example.test
            S: 250-mx.example.test Hello laptop.example.test [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250-CHUNKING
            S: 250 STARTTLS
            C: MAIL FROM:<alice@example.test>
            S: 530 5.7.0 Authentication required
            C: AUTH PLAIN %s
            S: 538 5.7.11 Encryption required for requested authentication mechanism
            C: STARTTLS
            S: 220 2.0.0 Ready to start TLS
            C: EHLO laptop.example.test
            S: 250-mx.example.test Hello laptop.example.test [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250-CHUNKING
            S: 250 AUTH PLAIN LOGIN
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            C: %s
            S: 334 UGFzc3dvcmQ6
            C: %s
            S: 535 5.7.8 Authentication credentials invalid
            C: AUTH PLAIN
            S: 334
            C: %s
            S: 235 2.7.0 Authentication successful
            C: MAIL FROM:<bob@example.test>
            S: 553 5.7.1 <bob@example.test> is not yours to send as (authenticated as alice@example.test)
            C: MAIL FROM:<alice@example.test>
            C: RCPT TO:<friend@elsewhere.test>
            C: DATA
            S: 250 2.1.0 Sender <alice@example.test> ok
            S: 250 2.1.5 Recipient <friend@elsewhere.test> ok
            S: 354 End data with <CR><LF>.<CR><LF>
            C: From: Alice <alice@example.test>
            C: To: friend@elsewhere.test
            C:
            C: Hi!
            C: .
            S: 250 2.0.0 Ok: queued as test-id
            C: QUIT
            S: 221 2.0.0 mx.example.test closing connection
            """
            % (
                token("\0alice@example.test\0secret"),
                token("alice@example.test"),
                token("wrong"),
                token("\0alice@example.test\0secret"),
            ),
        )
        self.assertIn(b" with ESMTPSA id ", h.delivery.messages[0].data)
        self.assertEqual(h.delivery.messages[0].recipients, ["friend@elsewhere.test"])

    def test_forgedFromHeader(self) -> None:
        h = Harness(role="smtps")
        self.run_(
            h,
            """
            C: EHLO laptop.example.test
            C: AUTH PLAIN %s
            C: MAIL FROM:<alice@example.test>
            C: RCPT TO:<bob@example.test>
            C: DATA
            S: 250-mx.example.test Hello laptop.example.test [192.0.2.7]
            S: 250-PIPELINING
            S: 250-SIZE 26214400
            S: 250-8BITMIME
            S: 250-ENHANCEDSTATUSCODES
            S: 250-SMTPUTF8
            S: 250-CHUNKING
            S: 250 AUTH PLAIN LOGIN
            S: 235 2.7.0 Authentication successful
            S: 250 2.1.0 Sender <alice@example.test> ok
            S: 250 2.1.5 Recipient <bob@example.test> ok
            S: 354 End data with <CR><LF>.<CR><LF>
            C: From: The CEO <ceo@example.test>
            C:
            C: Please wire the money.
            C: .
            S: 553 5.7.1 From: <ceo@example.test> is not yours to send as
            """
            % (token("\0alice@example.test\0secret"),),
        )
        self.assertTrue(h.delivery.messages[0].aborted)


class LimitTranscripts(TranscriptTestCase):
    def test_sizeAndRecipients(self) -> None:
        self.run_(
            Harness(limits=Limits(max_message_size=30, max_recipients=1)),
            """
            C: HELO client.example.org
            C: MAIL FROM:<sender@remote.test>
            C: RCPT TO:<alice@example.test>
            C: RCPT TO:<bob@example.test>
            C: DATA
            S: 250 mx.example.test Hello client.example.org [192.0.2.7]
            S: 250 2.1.0 Sender <sender@remote.test> ok
            S: 250 2.1.5 Recipient <alice@example.test> ok
            S: 452 4.5.3 Too many recipients
            S: 354 End data with <CR><LF>.<CR><LF>
            C: 0123456789
            C: 0123456789
            C: 0123456789
            C: .
            S: 552 5.3.4 Message exceeds 30 octets
            """,
        )

    def test_tooManyErrors(self) -> None:
        h = self.run_(
            Harness(limits=Limits(max_errors=3)),
            """
            C: EHLO
            S: 501 5.5.4 Syntax: EHLO <domain or address literal>
            C: MAIL FROM:<x@remote.test>
            S: 503 5.5.1 Send EHLO or HELO first
            C: GET / HTTP/1.1
            C: Host: mx.example.test
            S: 500 5.5.1 Command unrecognized
            S: 421 4.7.0 too many errors
            """,
        )
        self.assertTrue(h.transport.disconnecting)
