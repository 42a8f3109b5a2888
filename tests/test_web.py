# -*- test-case-name: tests.test_web -*-
"""
The C{http} listener of a running server: metrics scraped after real SMTP
and POP3 traffic, health, and client autoconfiguration, fetched with
Python's own HTTP client as curl or Prometheus would.
"""

import http.client
import os
import plistlib
import poplib
import smtplib
import socket
import ssl
from typing import Dict, Optional, Tuple
from xml.etree import ElementTree as ET

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailnet import metrics
from tests.support import startServer

MESSAGE = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"
TB = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class HTTPTestCase(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.server = yield startServer(self)
        self.server.addUser("alice@example.test", "alice-secret")
        self.server.addUser("bob@example.test", "bob-secret")
        self.context = ssl.create_default_context(cafile=self.server.certPath)

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, Dict[str, str], bytes]:
        """Make one request in a thread (a Deferred of status, headers, body)."""

        def run():
            connection = http.client.HTTPConnection("127.0.0.1", self.server.ports["http"], timeout=10)
            try:
                connection.request(method, path, body=body)
                response = connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            finally:
                connection.close()

        return deferToThread(run)


class MetricsTests(HTTPTestCase):
    def traffic(self) -> None:
        """Submission with STARTTLS and AUTH, a refused recipient, POP3 with STLS."""
        client = smtplib.SMTP("localhost", self.server.ports["submission"], timeout=10)
        client.starttls(context=self.context)
        client.login("bob@example.test", "bob-secret")
        client.sendmail("bob@example.test", ["alice@example.test"], MESSAGE)
        client.quit()
        client = smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=10)
        client.ehlo("client.remote.test")
        client.mail("someone@remote.test")
        code, _ = client.rcpt("nobody@example.test")
        assert code == 550, code
        client.quit()
        pop = poplib.POP3("localhost", self.server.ports["pop3"], timeout=10)
        pop.stls(context=self.context)
        pop.user("alice@example.test")
        pop.pass_("alice-secret")
        pop.retr(1)
        pop.quit()
        pop = poplib.POP3("localhost", self.server.ports["pop3"], timeout=10)
        pop.stls(context=self.context)
        pop.user("alice@example.test")
        try:
            pop.pass_("wrong")
        except poplib.error_proto:
            pass
        pop.quit()

    @inlineCallbacks
    def test_scrapeAfterTraffic(self):
        """
        After real SMTP and POP3 sessions, a scrape counts them: messages,
        local deliveries, logins by outcome, refusals by status code,
        connections and TLS versions by listener, latency and fsync
        histograms, and the queue.
        """
        watched = {
            "received": ("mailnet_messages_total", {"event": "received", "listener": "submission"}),
            "delivered": ("mailnet_messages_total", {"event": "delivered", "listener": ""}),
            "smtpLogin": ("mailnet_logins_total", {"protocol": "smtp", "outcome": "success"}),
            "pop3Login": ("mailnet_logins_total", {"protocol": "pop3", "outcome": "success"}),
            "pop3Failed": ("mailnet_logins_total", {"protocol": "pop3", "outcome": "failure"}),
            "refused": ("mailnet_smtp_refusals_total", {"code": "550", "status": "5.1.1"}),
            "smtpConnections": ("mailnet_connections_total", {"listener": "smtp"}),
            "pop3Connections": ("mailnet_connections_total", {"listener": "pop3"}),
            "tls": ("mailnet_tls_connections_total", {"listener": "submission", "version": "TLSv1.3"}),
            "latency": ("mailnet_smtp_data_seconds_count", {}),
            "fsync": ("mailnet_fsync_seconds_count", {}),
        }
        before = {key: sample(name, **labels) for key, (name, labels) in watched.items()}
        yield deferToThread(self.traffic)
        status, headers, body = yield self.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        text = body.decode("utf-8")
        families = {f.name: f for f in text_string_to_metric_families(text)}

        def value(name: str, **labels: str) -> float:
            family = families[name.rsplit("_total", 1)[0].rsplit("_count", 1)[0]]
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
            return 0.0

        grown = {key: value(name, **labels) - before[key] for key, (name, labels) in watched.items()}
        self.maxDiff = None
        self.assertEqual(
            grown,
            {"received": 1, "delivered": 1, "smtpLogin": 1, "pop3Login": 1, "pop3Failed": 1, "refused": 1,
             "smtpConnections": 1, "pop3Connections": 2, "tls": 1, "latency": 1, "fsync": grown["fsync"]},
        )
        self.assertGreaterEqual(grown["fsync"], 2)  # the file and its directory
        self.assertEqual(value("mailnet_queue_messages"), 0)
        self.assertEqual(value("mailnet_queue_oldest_seconds"), 0)
        self.assertGreater(value("mailnet_data_dir_free_bytes"), 0)
        self.assertGreater(value("process_resident_memory_bytes"), 0)
        from mailnet import __version__

        self.assertEqual(value("mailnet_build_info", version=__version__), 1)
        # Only the scrape's own connection is open.
        self.assertEqual(value("mailnet_connections_open"), 1)
        self.assertEqual(value("mailnet_sessions", listener="http"), 1)
        # Every family has its HELP and TYPE lines, and no label holds an address.
        for name, family in families.items():
            exposed = name + "_total" if family.type == "counter" else name
            self.assertIn("# HELP %s " % (exposed,), text)
            self.assertIn("# TYPE %s %s\n" % (exposed, family.type), text)
        self.assertNotIn("_created", text)
        self.assertNotIn("@", "".join(line for line in text.splitlines() if not line.startswith("#")))

    @inlineCallbacks
    def test_queueCollector(self):
        """The queue's length and the age of its oldest entry come from the relay service."""

        class Entry:
            created = 1000.0

        collector = metrics.ServiceCollector(self.server.service, clock=lambda: 1060.0)
        self.server.service.relay._entries["x"] = Entry()
        self.addCleanup(self.server.service.relay._entries.pop, "x")
        values = {f.name: f.samples[0].value for f in collector.collect()}
        self.assertEqual((values["mailnet_queue_messages"], values["mailnet_queue_oldest_seconds"]), (1, 60.0))
        yield None


class HealthTests(HTTPTestCase):
    @inlineCallbacks
    def test_healthy(self):
        status, _, body = yield self.request("GET", "/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))

    @inlineCallbacks
    def test_listenerDown(self):
        """A listener that is not listening makes the server unhealthy, and says which."""
        yield self.server.service.listeners["pop3s"][0].stopService()
        status, _, body = yield self.request("GET", "/healthz")
        self.assertEqual(status, 503)
        self.assertIn(b"listener pop3s (tcp:0:interface=127.0.0.1) is not listening", body)

    @inlineCallbacks
    def test_dataDirNotWritable(self):
        """
        The running server's /healthz writes a file to find out, and says
        why it could not (a read-only remount here, simulated: chmod does
        not stop root).
        """
        import errno

        (listener,) = self.server.service.listeners["http"]
        probe = listener.factory.wrappedFactory.resource.probe

        def readOnly(path, flags, mode=0o777):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

        probe.opener = readOnly
        probe.every = 0
        status, _, body = yield self.request("GET", "/healthz")
        self.assertEqual(status, 503)
        self.assertIn(
            b"the data dir %s is not writable: Read-only file system (EROFS)\n" % (self.server.dataDir.encode(),), body
        )
        probe.opener = os.open
        status, _, body = yield self.request("GET", "/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        self.assertEqual([n for n in os.listdir(self.server.dataDir) if "probe" in n], [])

    @inlineCallbacks
    def test_head(self):
        status, headers, body = yield self.request("HEAD", "/healthz")
        self.assertEqual((status, headers["content-type"], body), (200, "text/plain; charset=utf-8", b""))
        status, headers, body = yield self.request("GET", "/healthz")
        self.assertEqual((status, headers["content-length"], body), (200, "3", b"ok\n"))
        self.assertNotIn("transfer-encoding", headers)

    @inlineCallbacks
    def test_diskLow(self):
        disk = self.server.service.diskSpace
        disk.diskUsage = lambda path: (100 * 2**20, 99 * 2**20, 2**20)
        disk.cacheFor = 0
        status, _, body = yield self.request("GET", "/healthz")
        self.assertEqual(status, 503)
        self.assertIn(b"below min_free_space", body)

    @inlineCallbacks
    def test_notFoundAndMethods(self):
        status, _, _ = yield self.request("GET", "/nothing")
        self.assertEqual(status, 404)
        status, headers, _ = yield self.request("POST", "/metrics", b"x")
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"))


class WriteProbeTests(SynchronousTestCase):
    """L{mailnet.web.WriteProbe}: a real write, off the reactor, at most once every few seconds."""

    def setUp(self) -> None:
        from mailnet.web import WriteProbe

        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.clock = task.Clock()
        self.runs = []
        self.opened = []
        self.probe = WriteProbe(self.dataDir, self.pool, self.clock, every=5.0, opener=self.opener)
        self.failWith = None

    def pool(self, f, *args):
        """A thread pool that runs when told (C{self.runs}: what waits)."""
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.runs.append((d, f, args))
        return d

    def runNext(self) -> None:
        d, f, args = self.runs.pop(0)
        d.callback(f(*args))

    def opener(self, path, flags, mode=0o777):
        self.opened.append(path)
        if self.failWith is not None:
            raise OSError(self.failWith, os.strerror(self.failWith), path)
        return os.open(path, flags, mode)

    def test_passes(self) -> None:
        """A file is created, written and removed, in C{run}'s thread; the answer is kept for C{every} seconds."""
        d = self.probe.check()
        self.assertNoResult(d)  # nothing done on the calling (reactor) thread
        self.assertEqual(self.opened, [])
        self.runNext()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.opened), 1)
        self.assertEqual(os.listdir(self.dataDir), [])
        self.clock.advance(4.9)
        self.assertIsNone(self.successResultOf(self.probe.check()))
        self.assertEqual((self.runs, len(self.opened)), ([], 1))
        self.clock.advance(0.1)
        d = self.probe.check()
        self.runNext()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(self.opened), 2)

    def test_readOnly(self) -> None:
        """
        A directory that refuses the file: the errno's meaning.  (Simulated
        by the opener: chmod does not stop root, and a test must run
        everywhere.)
        """
        import errno

        self.failWith = errno.EROFS
        d = self.probe.check()
        self.runNext()
        self.assertEqual(
            self.successResultOf(d), "the data dir %s is not writable: Read-only file system (EROFS)" % (self.dataDir,)
        )
        # The answer is kept, then the next probe finds the disk back.
        self.failWith = None
        self.assertIn("EROFS", self.successResultOf(self.probe.check()))
        self.clock.advance(5)
        d = self.probe.check()
        self.runNext()
        self.assertIsNone(self.successResultOf(d))

    def test_writeFails(self) -> None:
        """A full disk fails the write after the create: reported, and the file is removed."""
        import errno

        from mailnet import web

        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(web.os, "write", full)
        d = self.probe.check()
        self.runNext()
        self.assertEqual(
            self.successResultOf(d), "the data dir %s is not writable: No space left on device (ENOSPC)" % (self.dataDir,)
        )
        self.assertEqual(os.listdir(self.dataDir), [])

    def test_realDirectory(self) -> None:
        """Without a fake opener: a missing data dir is reported (ENOENT)."""
        from mailnet.store.maildir import runSynchronously
        from mailnet.web import WriteProbe

        probe = WriteProbe(os.path.join(self.dataDir, "missing"), runSynchronously, self.clock)
        self.assertIn("No such file or directory (ENOENT)", self.successResultOf(probe.check()))
        probe = WriteProbe(self.dataDir, runSynchronously, self.clock)
        self.assertIsNone(self.successResultOf(probe.check()))

    def test_oneProbeAtATime(self) -> None:
        """Requests while a probe runs wait for it rather than starting their own."""
        first, second = self.probe.check(), self.probe.check()
        self.assertEqual(len(self.runs), 1)
        self.runNext()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (None, None))

    def test_runnerFails(self) -> None:
        """A probe that could not run (pool stopped) is a problem, logged, not a hang."""
        from twisted.internet.defer import fail

        from mailnet.web import WriteProbe

        probe = WriteProbe(self.dataDir, lambda f: fail(RuntimeError("pool stopped")), self.clock)
        self.assertEqual(self.successResultOf(probe.check()), "the data dir %s could not be probed" % (self.dataDir,))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

class AutoconfigTests(HTTPTestCase):
    @inlineCallbacks
    def test_thunderbird(self):
        """
        Both Thunderbird paths answer the running listeners: IMAP and POP3
        (implicit TLS first), submission with STARTTLS, then SMTPS.
        """
        ports = self.server.ports
        for path in ("/mail/config-v1.1.xml?emailaddress=alice%40example.test", "/.well-known/autoconfig/mail/config-v1.1.xml"):
            status, headers, body = yield self.request("GET", path)
            self.assertEqual(status, 200)
            self.assertEqual(headers["content-type"], "application/xml; charset=utf-8")
            provider = ET.fromstring(body).find("emailProvider")
            self.assertEqual(provider.get("id"), "example.test")
            incoming = [
                (s.get("type"), int(s.findtext("port")), s.findtext("socketType"), s.findtext("hostname"))
                for s in provider.findall("incomingServer")
            ]
            self.assertEqual(
                incoming,
                [("imap", ports["imaps"], "SSL", "localhost"), ("imap", ports["imap"], "STARTTLS", "localhost"),
                 ("pop3", ports["pop3s"], "SSL", "localhost"), ("pop3", ports["pop3"], "STARTTLS", "localhost")],
            )
            outgoing = [(int(s.findtext("port")), s.findtext("socketType")) for s in provider.findall("outgoingServer")]
            self.assertEqual(outgoing, [(ports["submission"], "STARTTLS"), (ports["smtps"], "SSL")])
            self.assertEqual({s.findtext("username") for s in provider.iter() if s.find("username") is not None},
                             {"%EMAILADDRESS%"})

    @inlineCallbacks
    def test_otherDomain(self):
        """Only local domains are answered; junk addresses get 404, not an error."""
        for query in ("someone%40elsewhere.test", "x" * 300, "%ff%fe", "no-at-sign", "%1b%5b31m%40example.test"):
            status, _, _ = yield self.request("GET", "/mail/config-v1.1.xml?emailaddress=" + query)
            self.assertEqual(status, 404, query)

    def autodiscoverRequest(self, address: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">'
            "<Request><EMailAddress>%s</EMailAddress>"
            "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
            "</AcceptableResponseSchema></Request></Autodiscover>" % (address,)
        ).encode("utf-8")

    @inlineCallbacks
    def test_autodiscover(self):
        ports = self.server.ports
        for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
            status, _, body = yield self.request("POST", path, self.autodiscoverRequest("alice@example.test"))
            self.assertEqual(status, 200)
            account = ET.fromstring(body).find(TB + "Response/" + TB + "Account")
            protocols = [
                (p.findtext(TB + "Type"), int(p.findtext(TB + "Port")), p.findtext(TB + "LoginName"))
                for p in account.findall(TB + "Protocol")
            ]
            self.assertEqual(
                protocols,
                [("IMAP", ports["imaps"], "alice@example.test"), ("POP3", ports["pop3s"], "alice@example.test"),
                 ("SMTP", ports["submission"], "alice@example.test")],
            )

    @inlineCallbacks
    def test_autodiscoverRefusals(self):
        """Bad requests are refused cleanly: GET, DTDs (no entity expansion), junk, a body too large."""
        status, _, _ = yield self.request("GET", "/autodiscover/autodiscover.xml")
        self.assertEqual(status, 405)
        laughs = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa">]><Autodiscover>&a;</Autodiscover>'
        for body in (laughs, b"not xml", self.autodiscoverRequest("bob@elsewhere.test"), self.autodiscoverRequest("\x1b@example.test")):
            status, _, _ = yield self.request("POST", "/autodiscover/autodiscover.xml", body)
            self.assertIn(status, (400, 404), body)
        status, _, _ = yield self.request("POST", "/autodiscover/autodiscover.xml", b"x" * 100000)
        self.assertEqual(status, 413)

    @inlineCallbacks
    def test_hugeLengthAnsweredAtOnce(self):
        """A Content-Length past the limit is answered 413 without waiting for the body."""

        def run():
            with socket.create_connection(("127.0.0.1", self.server.ports["http"]), timeout=5) as s:
                s.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc")
                return s.recv(100)

        self.assertTrue((yield deferToThread(run)).startswith(b"HTTP/1.1 413 "))

    @inlineCallbacks
    def test_mobileconfig(self):
        status, headers, body = yield self.request("GET", "/apple/mail.mobileconfig?emailaddress=alice%40example.test")
        self.assertEqual((status, headers["content-type"]), (200, "application/x-apple-aspen-config"))
        account = plistlib.loads(body)["PayloadContent"][0]
        self.assertEqual(
            (account["EmailAccountType"], account["IncomingMailServerPortNumber"], account["OutgoingMailServerPortNumber"]),
            ("EmailTypeIMAP", self.server.ports["imaps"], self.server.ports["submission"]),
        )

    @inlineCallbacks
    def test_mtaSTS(self):
        status, _, body = yield self.request("GET", "/.well-known/mta-sts.txt")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"version: STSv1\r\nmode: testing\r\nmx: localhost\r\nmax_age: 604800\r\n")


class OptionsTests(SynchronousTestCase):
    """--http and --no-http on the twistd command line."""

    def test_http(self) -> None:
        from mailnet.tap import Options

        options = Options()
        options.parseOptions(["--http", "tcp:8080:interface=127.0.0.1", "--hostname", "h"])
        self.assertEqual(options.config().listen["http"], ("tcp:8080:interface=127.0.0.1",))
        options = Options()
        options.parseOptions(["--no-http", "--hostname", "h"])
        self.assertEqual(options.config().listen["http"], ())
        self.assertEqual(Options().config().listen["http"], ("tcp:2880:interface=127.0.0.1",))


class RelayMetricsTests(TestCase):
    """
    Two servers: A routes C{b.test} to B, where bob's mailbox is full.  A
    defers (B answers 452 4.2.2 at RCPT) and keeps the message; once
    bob's quota is lifted a flush delivers it.  A's counters and queue
    figures follow.
    """

    @inlineCallbacks
    def setUp(self):
        from mailnet.quota import Limit, QuotaFile

        self.b = yield startServer(self, domains=("b.test",))
        self.b.addUser("bob@b.test", "bob-secret")
        self.bobQuota = QuotaFile(self.b.dataDir)
        self.bobQuota.set("users", "bob@b.test", Limit(None, 1))
        self.Limit = Limit
        os.makedirs(os.path.join(self.b.service.mailStore.pathFor("bob@b.test"), "cur"))
        with open(os.path.join(self.b.service.mailStore.pathFor("bob@b.test"), "cur", "1.x.host,S=10:2,"), "wb") as f:
            f.write(b"x" * 10)
        self.a = yield startServer(self, domains=("a.test",), routes={"b.test": ("127.0.0.1", self.b.ports["smtp"])})
        self.a.addUser("alice@a.test", "alice-secret")

    @inlineCallbacks
    def waitFor(self, condition):
        for _ in range(200):
            if condition():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("timed out")

    @inlineCallbacks
    def test_deferredThenRelayed(self):
        context = ssl.create_default_context(cafile=self.a.certPath)
        deferred = sample("mailnet_messages_total", event="deferred", listener="")
        relayed = sample("mailnet_messages_total", event="relayed", listener="")
        refusals = sample("mailnet_smtp_refusals_total", code="452", status="4.2.2")

        def send():
            client = smtplib.SMTP("localhost", self.a.ports["submission"], timeout=10)
            client.starttls(context=context)
            client.login("alice@a.test", "alice-secret")
            client.sendmail("alice@a.test", ["bob@b.test"], b"From: alice@a.test\r\nSubject: hi\r\n\r\nhello\r\n")
            client.quit()

        yield deferToThread(send)
        yield self.waitFor(lambda: sample("mailnet_messages_total", event="deferred", listener="") > deferred)
        self.assertEqual(sample("mailnet_smtp_refusals_total", code="452", status="4.2.2"), refusals + 1)
        collected = {f.name: f.samples[0].value for f in metrics.ServiceCollector(self.a.service).collect() if f.samples}
        self.assertEqual(collected["mailnet_queue_messages"], 1)
        self.bobQuota.set("users", "bob@b.test", self.Limit())
        yield task.deferLater(reactor, 1.1, lambda: None)  # the quota file is looked at once a second
        self.a.service.relay.flush()
        yield self.waitFor(lambda: len(self.b.newFiles("bob@b.test")) == 1)
        yield self.waitFor(lambda: sample("mailnet_messages_total", event="relayed", listener="") == relayed + 1)
