"""
End to end: a real mailnet server on 127.0.0.1 with IMAP, driven by
Python's C{imaplib} (and C{smtplib}, C{poplib}) in threads, as a mail
client would.
"""

import imaplib
import os
import poplib
import re
import smtplib
import socket
import ssl
import time
import tracemalloc

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import startServer

MESSAGE = (
    b"From: bob@remote.test\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that starts with a dot.\r\n"
    b"\r\n"
    b"Last line.\r\n"
)


def clientContext(certPath: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certPath)
    context.check_hostname = True
    return context


class IMAPEndToEndTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.server = yield startServer(self)
        self.server.addUser("alice@example.test", "alice-secret")
        self.context = clientContext(self.server.certPath)

    def imaps(self) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("localhost", self.server.ports["imaps"], ssl_context=self.context, timeout=10)
        self.addCleanup(_close, client)
        return client

    def deliver(self, message: bytes = MESSAGE) -> None:
        client = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], local_hostname="client.remote.test", timeout=10)
        try:
            client.sendmail("bob@remote.test", ["alice@example.test"], message)
            client.quit()
        finally:
            client.close()

    @inlineCallbacks
    def test_starttls(self):
        """Before TLS, LOGINDISABLED; after STARTTLS, a login works."""

        def session():
            client = imaplib.IMAP4("localhost", self.server.ports["imap"], timeout=10)
            self.addCleanup(_close, client)
            before = client.capabilities
            try:
                client.login("alice@example.test", "alice-secret")
            except imaplib.IMAP4.error as e:
                refused = repr(e.args)
            client.starttls(self.context)
            typ, _ = client.login("alice@example.test", "alice-secret")
            client.logout()
            return before, refused, typ

        before, refused, typ = yield deferToThread(session)
        self.assertIn("LOGINDISABLED", before)
        self.assertIn("STARTTLS", before)
        self.assertIn("PRIVACYREQUIRED", refused)
        self.assertEqual(typ, "OK")

    @inlineCallbacks
    def test_deliveredThenFetched(self):
        """
        SMTP -> IMAP: BODY[] is the stored message with CRLF line ends, and
        RFC822.SIZE counts exactly those octets.
        """

        def session():
            self.deliver()
            client = self.imaps()
            client.login("alice@example.test", "alice-secret")
            client.select("INBOX")
            typ, data = client.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
            client.logout()
            return data

        data = yield deferToThread(session)
        header, body = data[0]
        size = int(re.search(rb"RFC822.SIZE (\d+)", header).group(1))
        self.assertTrue(body.endswith(MESSAGE), body)
        self.assertTrue(body.startswith(b"Return-Path: <bob@remote.test>\r\nReceived: "))
        self.assertEqual(size, len(body))
        self.assertNotIn(b"\n", body.replace(b"\r\n", b""))

    @inlineCallbacks
    def test_foldersAppendSearchMove(self):
        def session():
            client = self.imaps()
            client.login("alice@example.test", "alice-secret")
            _, listing = client.list()
            client.create("Work.Projects")
            typ, appended = client.append("Work.Projects", "(\\Flagged)", None, MESSAGE)
            client.select("Work.Projects")
            _, found = client.search(None, "SUBJECT", "hello")
            _, inBody = client.search(None, "BODY", "STARTS", "NOT", "BODY", "absent")
            typ, moved = client.uid("MOVE", "1", "INBOX")
            _, status = client.status("INBOX", "(MESSAGES UNSEEN)")
            client.logout()
            return listing, appended, found + inBody, moved, status

        listing, appended, found, moved, status = yield deferToThread(session)
        self.assertIn(b'(\\HasNoChildren \\Sent) "." "Sent"', listing)
        self.assertRegex(appended[0], rb"^\[APPENDUID \d+ 1\]")
        self.assertEqual(found, [b"1", b"1"])
        self.assertEqual(status, [b'"INBOX" (MESSAGES 1 UNSEEN 1)'])

    @inlineCallbacks
    def test_idleSeesDelivery(self):
        """IDLE reports mail delivered by SMTP within 2 s."""

        def session():
            client = self.imaps()
            client.login("alice@example.test", "alice-secret")
            client.select("INBOX")
            tag = client._new_tag()
            client.send(tag + b" IDLE\r\n")
            self.assertEqual(client.readline(), b"+ idling\r\n")
            started = time.monotonic()
            self.deliver()
            line = client.readline()
            elapsed = time.monotonic() - started
            recent = client.readline()
            client.send(b"DONE\r\n")
            end = client.readline()
            client.logout()
            return line, recent, elapsed, end, tag

        line, recent, elapsed, end, tag = yield deferToThread(session)
        self.assertEqual(line, b"* 1 EXISTS\r\n")
        self.assertEqual(recent, b"* 1 RECENT\r\n")
        self.assertLess(elapsed, 2)
        self.assertEqual(end, tag + b" OK IDLE completed\r\n")

    @inlineCallbacks
    def test_idleSeesOtherProcess(self):
        """
        IDLE reports a message another program put into the Maildir (an
        external MDA) within 2 s: the service watches the directories.
        """
        maildir = self.server.mailStore.pathFor("alice@example.test")

        def session():
            client = self.imaps()
            client.login("alice@example.test", "alice-secret")
            client.select("INBOX")
            tag = client._new_tag()
            client.send(tag + b" IDLE\r\n")
            client.readline()
            started = time.monotonic()
            with open(os.path.join(maildir, "tmp", "1796000001.ext.host"), "wb") as f:
                f.write(MESSAGE.replace(b"\r\n", b"\n"))
            os.rename(os.path.join(maildir, "tmp", "1796000001.ext.host"), os.path.join(maildir, "new", "1796000001.ext.host"))
            line = client.readline()
            elapsed = time.monotonic() - started
            client.send(b"DONE\r\n")
            while not client.readline().startswith(tag):
                pass
            client.logout()
            return line, elapsed

        line, elapsed = yield deferToThread(session)
        self.assertEqual(line, b"* 1 EXISTS\r\n")
        self.assertLess(elapsed, 2)

    @inlineCallbacks
    def test_pop3AndIMAPShareInbox(self):
        """
        One INBOX: POP3 LIST size = RFC822.SIZE; an IMAP EXPUNGE is gone
        from POP3; a POP3 DELE+QUIT is gone from IMAP.
        """

        def session():
            self.deliver()
            self.deliver()
            client = self.imaps()
            client.login("alice@example.test", "alice-secret")
            client.select("INBOX")
            _, sizes = client.fetch("1:*", "(RFC822.SIZE)")
            pop = poplib.POP3_SSL("localhost", self.server.ports["pop3s"], context=self.context, timeout=10)
            pop.user("alice@example.test")
            pop.pass_("alice-secret")
            _, listing, _ = pop.list()
            pop.quit()
            client.store("1", "+FLAGS", "(\\Deleted)")
            client.expunge()
            pop = poplib.POP3_SSL("localhost", self.server.ports["pop3s"], context=self.context, timeout=10)
            pop.user("alice@example.test")
            pop.pass_("alice-secret")
            count = pop.stat()[0]
            pop.dele(1)
            pop.quit()
            _, after = client.noop()
            _, exists = client.status("INBOX", "(MESSAGES)")
            client.logout()
            return sizes, listing, count, exists

        sizes, listing, count, exists = yield deferToThread(session)
        imapSizes = [int(re.search(rb"RFC822.SIZE (\d+)", s).group(1)) for s in sizes]
        popSizes = [int(line.split()[1]) for line in listing]
        self.assertEqual(imapSizes, popSizes)
        self.assertEqual(count, 1)
        self.assertEqual(exists, [b'"INBOX" (MESSAGES 0)'])

    @inlineCallbacks
    def test_largeFetchStreamed(self):
        """
        A 20 MiB message is streamed: the memory the server's Python
        objects hold (traced with tracemalloc, so the allocator's habits
        and the load on the machine do not count) peaks less than 5 MB
        above where it was while it is sent (the client reads and drops
        it, after a pause); a server that read the message whole, or wrote
        it faster than its client takes it, would hold up to 20 MiB.
        """
        size = 20 * 1024 * 1024
        maildir = self.server.mailStore.pathFor("alice@example.test")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        line = b"x" * 1023 + b"\n"
        with open(os.path.join(maildir, "new", "1796000000.big.localhost"), "wb") as f:
            f.write(b"Subject: big\n\n")
            for _ in range(size // 1024):
                f.write(line)
        wire = 14 + 2 + size + size // 1024
        self.addCleanup(tracemalloc.stop)

        def session():
            raw = socket.create_connection(("127.0.0.1", self.server.ports["imaps"]), timeout=30)
            sock = self.context.wrap_socket(raw, server_hostname="localhost")
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"a LOGIN alice@example.test alice-secret\r\nb SELECT INBOX\r\n")
            while not reader.readline().startswith(b"b OK"):
                pass
            results = []
            # Twice: a one-off allocation elsewhere in this process (the
            # test's client shares it) cannot fail the test; broken
            # streaming fails both.
            for tag in (b"c", b"d"):
                before = _peakReset()
                sock.sendall(tag + b" FETCH 1 BODY.PEEK[]\r\n")
                first = reader.readline()
                # A slow reader for a moment: the socket buffers fill, and a
                # server that did not wait for its transport would pile the
                # message up in memory meanwhile.
                time.sleep(0.2)
                remaining = int(re.search(rb"\{(\d+)\}", first).group(1))
                received = 0
                while remaining:
                    chunk = reader.read(min(remaining, 65536))
                    remaining -= len(chunk)
                    received += len(chunk)
                tail = reader.readline()
                done = reader.readline()
                results.append(_peak() - before)
            peak = min(results)
            sock.close()
            return received, tail, done, peak

        received, tail, done, grown = yield deferToThread(session)
        self.assertEqual(received, wire)
        self.assertEqual(tail, b")\r\n")
        self.assertEqual(done, b"d OK FETCH completed\r\n")
        self.assertLess(grown, 5 * 1024 * 1024)


def _close(client: imaplib.IMAP4) -> None:
    try:
        client.shutdown()
    except OSError:
        pass


def _peakReset() -> int:
    """
    Start counting the peak of the memory Python objects hold in this
    process (tracemalloc: the server's buffers and strings, whatever
    the allocator keeps or other tests left resident), and return the
    current amount.
    """
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


def _peak() -> int:
    return tracemalloc.get_traced_memory()[1]
