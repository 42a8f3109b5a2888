"""
End to end: mailnet-cli over IMAP against a real mailnet server on
127.0.0.1 (STARTTLS and implicit TLS, certificates verified): folders,
list, read, flag, move, copy, delete, search, fetch, the copy in Sent,
and watch as a real process that gets a real Ctrl-C.
"""

import email
import email.policy
import io
import json
import mailbox
import os
from typing import Optional

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailnet import passwords
from mailnet.cli import _imapcommands
from mailnet.cli import main as cli
from mailnet.cli._common import EXIT_INTERRUPTED
from mailnet.client import imap
from tests.support import startServer
from tests.test_cli_process import Child, spawn
from tests.test_client_smtp import closedPort


class IMAPCLIMixin:
    @defer.inlineCallbacks
    def startWithUsers(self, **kw):
        self.patch(passwords, "DEFAULT_HASHER", passwords.lowCostHasher())
        self.server = yield startServer(self, **kw)
        self.server.addUser("alice@example.test", "alice-secret")
        self.server.addUser("bob@example.test", "bob-secret")
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)

    def options(self, user: str, implicit: bool = False, imapPort: Optional[int] = None):
        ports = self.server.ports
        return [
            "--host", "localhost",
            "--user", user,
            "--smtp-port", str(ports["smtps" if implicit else "submission"]),
            "--imap-port", str(imapPort or ports["imaps" if implicit else "imap"]),
            "--tls", "implicit" if implicit else "starttls",
            "--cafile", self.server.certPath,
        ]

    @defer.inlineCallbacks
    def cli(self, user: str, *argv: str, implicit: bool = False, imapPort: Optional[int] = None, stdin: str = ""):
        """Run mailnet-cli as C{user}; @return: (status, stdout, stderr)."""
        stdout, stderr = io.StringIO(), io.StringIO()
        status = yield cli.run(
            reactor,
            self.options(user, implicit, imapPort) + list(argv),
            stdin=io.StringIO(stdin),
            stdout=stdout,
            stderr=stderr,
            environ={"HOME": self.home, "MAILNET_PASSWORD": user.split("@")[0] + "-secret"},
        )
        return status, stdout.getvalue(), stderr.getvalue()

    @defer.inlineCallbacks
    def ok(self, user: str, *argv: str, **kw):
        status, out, err = yield self.cli(user, *argv, **kw)
        self.assertEqual(status, 0, err)
        return out

    @defer.inlineCallbacks
    def send(self, subject: str, body: str = "Hello Bob\n", *extra: str):
        yield self.ok("alice@example.test", "send", "--to", "bob@example.test", "--subject", subject, "--body", body, *extra)

    @defer.inlineCallbacks
    def serverIdle(self):
        """Wait until the server has closed every connection (a child's end reaches it a moment later)."""
        for _ in range(500):
            if self.server.service.limiter.open == 0:
                return
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def listing(self, user: str = "bob@example.test", *extra: str):
        out = yield self.ok(user, "list", "--json", *extra)
        return json.loads(out)


class IMAPCommandTests(IMAPCLIMixin, unittest.TestCase):
    def setUp(self):
        return self.startWithUsers()

    @defer.inlineCallbacks
    def test_folders(self):
        """Create (a Unicode name), rename, delete; folders shows special use and counts."""
        out = yield self.ok("bob@example.test", "folder", "create", "Prüfung & Co")
        self.assertEqual(out, "created Prüfung & Co\n")
        yield self.ok("bob@example.test", "folder", "rename", "Prüfung & Co", "日本語")
        document = json.loads((yield self.ok("bob@example.test", "folders", "--json")))
        byName = {f["name"]: f for f in document}
        self.assertIn("日本語", byName)
        self.assertNotIn("Prüfung & Co", byName)
        self.assertEqual(byName["Sent"]["special_use"], "\\Sent")
        self.assertEqual((byName["INBOX"]["messages"], byName["INBOX"]["unseen"]), (0, 0))
        self.assertEqual(document[0]["name"], "INBOX")
        # On disk, as Maildir++ in modified UTF-7 (what mutt and Dovecot read).
        self.assertTrue(os.path.isdir(os.path.join(self.server.mailStore.pathFor("bob@example.test"), ".&ZeVnLIqe-")))
        text = yield self.ok("bob@example.test", "folders")
        self.assertIn("日本語", text)
        yield self.ok("bob@example.test", "folder", "delete", "日本語")
        status, out, err = yield self.cli("bob@example.test", "folder", "delete", "日本語")
        self.assertEqual(status, cli.EXIT_ERROR)
        self.assertIn("日本語", err)

    @defer.inlineCallbacks
    def test_listReadPeekFlag(self):
        """IDs are UIDs; read marks \\Seen unless --peek; flag sets and clears."""
        yield self.send("first")
        yield self.send("zweite Grüße")
        document = yield self.listing()
        self.assertEqual(document["folder"], "INBOX")
        self.assertIsInstance(document["uidvalidity"], int)
        self.assertEqual([(m["uid"], m["subject"], m["unseen"]) for m in document["messages"]],
                         [(2, "zweite Grüße", True), (1, "first", True)])
        self.assertEqual((yield self.listing("bob@example.test", "--since", "2000-01-01"))["total"], 2)
        self.assertEqual((yield self.listing("bob@example.test", "--since", "2999-01-01"))["total"], 0)
        out = yield self.ok("bob@example.test", "read", "1", "--peek")
        self.assertIn("Subject: first\n", out)
        self.assertEqual(len((yield self.listing("bob@example.test", "--unseen"))["messages"]), 2)
        out = yield self.ok("bob@example.test", "read", "1", "--json")
        self.assertEqual(json.loads(out)["uid"], 1)
        unseen = (yield self.listing("bob@example.test", "--unseen"))["messages"]
        self.assertEqual([m["uid"] for m in unseen], [2])
        out = yield self.ok("bob@example.test", "flag", "1", "2", "-seen", "+flagged", "+$Work")
        self.assertEqual(out, "1  \\Flagged $Work\n2  \\Flagged $Work\n")
        out = yield self.ok("bob@example.test", "list")
        self.assertIn("     2 N! alice@example.test", out)
        status, out, err = yield self.cli("bob@example.test", "flag", "1", "+bad(flag")
        self.assertEqual(status, cli.EXIT_USAGE)
        status, out, err = yield self.cli("bob@example.test", "read", "99")
        self.assertEqual(status, cli.EXIT_NO_MESSAGE)
        self.assertIn("no message with ID 99 in INBOX", err)
        status, out, err = yield self.cli("bob@example.test", "flag", "1", "99", "+seen")
        self.assertEqual(status, cli.EXIT_NO_MESSAGE)
        self.assertNotIn("\\Seen", json.dumps((yield self.listing())["messages"]))  # nothing was changed

    @defer.inlineCallbacks
    def test_moveCopyDelete(self):
        """move and copy between folders; delete goes to Trash, --expunge and Trash itself remove."""
        for subject in ("one", "two", "three"):
            yield self.send(subject)
        yield self.ok("bob@example.test", "folder", "create", "Archive")
        out = yield self.ok("bob@example.test", "copy", "1", "Archive")
        self.assertEqual(out, "copied 1 message to Archive\n")
        yield self.ok("bob@example.test", "move", "2", "Archive")
        inbox = yield self.listing()
        self.assertEqual([m["subject"] for m in inbox["messages"]], ["three", "one"])
        archive = yield self.listing("bob@example.test", "--folder", "Archive")
        self.assertEqual(sorted(m["subject"] for m in archive["messages"]), ["one", "two"])
        out = yield self.ok("bob@example.test", "delete", "3")
        self.assertEqual(out, "deleted 3 (moved to Trash)\n")
        trash = yield self.listing("bob@example.test", "--folder", "Trash")
        self.assertEqual([m["subject"] for m in trash["messages"]], ["three"])
        out = yield self.ok("bob@example.test", "delete", "--folder", "Trash", str(trash["messages"][0]["uid"]))
        self.assertIn("(removed)", out)
        out = yield self.ok("bob@example.test", "delete", "--expunge", "1", "--json")
        self.assertEqual(json.loads(out), {"folder": "INBOX", "uids": [1], "removed": True, "moved_to": None})
        self.assertEqual((yield self.listing())["total"], 0)
        self.assertEqual((yield self.listing("bob@example.test", "--folder", "Trash"))["total"], 0)
        status, out, err = yield self.cli("bob@example.test", "move", "1", "Nowhere", "--folder", "Archive")
        self.assertEqual(status, cli.EXIT_ERROR)
        self.assertIn("Nowhere", err)

    @defer.inlineCallbacks
    def test_moveWithoutMOVE(self):
        """A server without MOVE and UIDPLUS: COPY, STORE \\Deleted and EXPUNGE instead."""
        original = imap.IMAPSession.login

        def login(self_, *args):
            d = original(self_, *args)

            def drop(result):
                self_.capabilities -= {b"MOVE", b"UIDPLUS"}
                return result

            return d.addCallback(drop)

        self.patch(imap.IMAPSession, "login", login)
        for subject in ("one", "two"):
            yield self.send(subject)
        yield self.ok("bob@example.test", "folder", "create", "Archive")
        status, out, err = yield self.cli("bob@example.test", "--debug", "move", "2", "Archive")
        self.assertEqual(status, 0, err)
        self.assertNotIn("UID MOVE", err)
        self.assertIn('UID COPY 2 "Archive"', err)
        self.assertIn("UID STORE 2 +FLAGS.SILENT (\\Deleted)", err)
        self.assertIn(" EXPUNGE\n", err)
        self.assertEqual([m["subject"] for m in (yield self.listing())["messages"]], ["one"])
        self.assertEqual([m["subject"] for m in (yield self.listing("bob@example.test", "--folder", "Archive"))["messages"]], ["two"])

    @defer.inlineCallbacks
    def test_search(self):
        """Server-side search: from, subject (UTF-8), body, unseen, dates."""
        yield self.send("Rechnung für März", "Betrag: 12 €\n")
        yield self.send("lunch", "noodles?\n")
        out = yield self.ok("bob@example.test", "search", "subject:März", "--json")
        self.assertEqual([m["subject"] for m in json.loads(out)["messages"]], ["Rechnung für März"])
        out = yield self.ok("bob@example.test", "search", "body:noodles", "from:alice", "unseen")
        self.assertIn("lunch", out)
        self.assertNotIn("März", out)
        out = yield self.ok("bob@example.test", "search", "since:2000-01-01", "before:2000-01-02")
        self.assertEqual(out, "nothing found\n")
        out = yield self.ok("bob@example.test", "search", '"subject:Rechnung für"')
        self.assertIn("Rechnung", out)
        status, out, err = yield self.cli("bob@example.test", "search", "since:yesterday")
        self.assertEqual(status, cli.EXIT_USAGE)

    @defer.inlineCallbacks
    def test_sentCopy(self):
        """send stores a \\Seen copy in Sent; --no-save-sent does not; a failed copy is a warning only."""
        yield self.send("with copy")
        sent = yield self.listing("alice@example.test", "--folder", "Sent")
        [copy] = sent["messages"]
        self.assertEqual((copy["subject"], copy["flags"]), ("with copy", ["\\Seen"]))
        yield self.send("hidden", "x\n", "--bcc", "Zoë <alice@example.test>")
        sent = yield self.listing("alice@example.test", "--folder", "Sent")
        copy = yield self.ok("alice@example.test", "read", "--folder", "Sent", str(sent["messages"][0]["uid"]), "--raw")
        self.assertIn("Bcc: =?utf-8?q?Zo=C3=AB?= <alice@example.test>\n", copy)
        delivered = yield self.ok("bob@example.test", "read", "2", "--raw")
        self.assertNotIn("Bcc", delivered)
        self.assertNotIn("Zo", delivered)
        yield self.send("no copy", "x\n", "--no-save-sent")
        self.assertEqual((yield self.listing("alice@example.test", "--folder", "Sent"))["total"], 2)
        status, out, err = yield self.cli(
            "alice@example.test", "send", "--to", "bob@example.test", "--subject", "copy fails", "--body", "x",
            imapPort=closedPort())
        self.assertEqual(status, 0, err)
        self.assertIn("accepted  bob@example.test", out)
        self.assertIn("warning: the message was sent, but its copy in Sent was not stored", err)
        self.assertIn("connection refused (no IMAP server on this port? check --imap-port", err)
        self.assertEqual((yield self.listing())["total"], 4)

    @defer.inlineCallbacks
    def test_fetchIncremental(self):
        """
        fetch remembers UIDVALIDITY and the last UID per folder; a message
        larger than the partial-fetch piece arrives whole (CRLF pairs split
        between pieces included).
        """
        self.patch(imap, "CHUNK", 101)
        body = "".join("line %d with some text\n" % (i,) for i in range(40))
        yield self.send("big", body)
        maildir = os.path.join(self.home, "Mail")
        out = yield self.ok("bob@example.test", "fetch", "--to-maildir", maildir)
        self.assertEqual(out, "fetched 1 message into %s\n" % (maildir,))
        [name] = os.listdir(os.path.join(maildir, "new"))
        with open(os.path.join(maildir, "new", name), "rb") as f:
            data = f.read()
        self.assertNotIn(b"\r", data)
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(message.get_content(), body)
        out = yield self.ok("bob@example.test", "fetch", "--to-maildir", maildir)
        self.assertIn("fetched 0 new messages", out)
        self.assertIn("1 fetched before were skipped", out)
        yield self.send("small", "Hello\nFrom the start of a line\n>From quoted\n")
        mbox = os.path.join(self.home, "all.mbox")
        out = yield self.ok("bob@example.test", "fetch", "--to-mbox", mbox, "--delete")
        self.assertIn("fetched 1 new message", out)
        self.assertEqual([m["Subject"] for m in mailbox.mbox(mbox)], ["small"])
        with open(mbox, "rb") as f:
            entry = f.read()
        self.assertTrue(entry.startswith(b"From alice@example.test "), entry[:80])
        self.assertTrue(entry.endswith(b"\n\n"))
        self.assertNotIn(b"\r", entry)
        self.assertEqual([m["subject"] for m in (yield self.listing())["messages"]], ["big"])
        # A changed UIDVALIDITY (the folder was recreated) fetches it all again.
        path = _imapcommands.statePath({"HOME": self.home}, "bob@example.test", "localhost", self.server.ports["imap"])
        with open(path) as f:
            state = json.load(f)
        state["fetched"]["INBOX"]["uidvalidity"] += 1
        with open(path, "w") as f:
            json.dump(state, f)
        status, out, err = yield self.cli("bob@example.test", "fetch", "--to-mbox", mbox)
        self.assertIn("UIDVALIDITY", err)
        self.assertIn("fetched 1 message", out)
        messages = list(mailbox.mbox(mbox))
        self.assertEqual([m["Subject"] for m in messages], ["small", "big"])
        # mboxrd: every ">*From " line gets one more ">" (Python's mailbox does not unquote).
        self.assertEqual(messages[0].get_payload(), "Hello\n>From the start of a line\n>>From quoted\n")
        self.assertEqual(email.message_from_bytes(messages[1].as_bytes(), policy=email.policy.default).get_content(), body)

    @defer.inlineCallbacks
    def test_fetchAllFolders(self):
        yield self.send("in inbox")
        yield self.ok("bob@example.test", "folder", "create", "Work")
        yield self.send("for work")
        yield self.ok("bob@example.test", "move", "2", "Work")
        maildir = os.path.join(self.home, "Mail")
        out = yield self.ok("bob@example.test", "fetch", "--to-maildir", maildir, "--all-folders", "--json")
        self.assertEqual(json.loads(out), {"target": maildir, "fetched": 2, "skipped": 0, "deleted": 0})
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 1)
        self.assertEqual(len(os.listdir(os.path.join(maildir, ".Work", "new"))), 1)

    @defer.inlineCallbacks
    def test_uidValidityShownWhenChanged(self):
        yield self.send("x")
        document = yield self.listing()
        self.assertFalse(document["uidvalidity_changed"])
        path = _imapcommands.statePath({"HOME": self.home}, "bob@example.test", "localhost", self.server.ports["imap"])
        with open(path) as f:
            state = json.load(f)
        state["uidvalidity"]["INBOX"] = 1
        with open(path, "w") as f:
            json.dump(state, f)
        status, out, err = yield self.cli("bob@example.test", "list")
        self.assertIn("the IDs of INBOX changed (UIDVALIDITY %d, was 1)" % (document["uidvalidity"],), err)
        self.assertFalse((yield self.listing())["uidvalidity_changed"])

    @defer.inlineCallbacks
    def test_implicitTLSAndSave(self):
        attachment = os.path.join(self.home, "a.txt")
        with open(attachment, "w") as f:
            f.write("data\n")
        yield self.ok("alice@example.test", "send", "--to", "bob@example.test", "--subject", "att", "--body", "see",
                      "--attach", attachment, implicit=True)
        out = yield self.ok("bob@example.test", "save", "1", "--attachments", os.path.join(self.home, "out"), implicit=True)
        self.assertIn("a.txt", out)

    @defer.inlineCallbacks
    def test_errors(self):
        """The POP3 port given as the IMAP port; a wrong password; --folder over POP3."""
        status, out, err = yield self.cli("bob@example.test", "list", imapPort=self.server.ports["pop3"])
        self.assertEqual(status, cli.EXIT_CONNECTION)
        self.assertIn("a POP3 server", err)
        stdout, stderr = io.StringIO(), io.StringIO()
        status = yield cli.run(reactor, self.options("bob@example.test") + ["folders"], stdout=stdout, stderr=stderr,
                               environ={"HOME": self.home, "MAILNET_PASSWORD": "wrong"})
        self.assertEqual(status, cli.EXIT_AUTH)
        status = yield cli.run(reactor, ["--host", "localhost", "--user", "bob@example.test", "--protocol", "pop3",
                                         "list", "--folder", "Work"], stdout=stdout, stderr=stderr,
                               environ={"HOME": self.home, "MAILNET_PASSWORD": "x"})
        self.assertEqual(status, cli.EXIT_ERROR)
        self.assertIn("--folder needs IMAP", stderr.getvalue())

    @defer.inlineCallbacks
    def test_accountProtocol(self):
        """protocol = imap in the account chooses IMAP; a bad value is a usage error."""
        directory = os.path.join(self.home, ".config", "mailnet")
        os.makedirs(directory)
        config = os.path.join(directory, "config.ini")
        with open(config, "w") as f:
            f.write("[bob]\nhost = localhost\nuser = bob@example.test\nprotocol = imap\nimap_port = %d\ncafile = %s\n"
                    % (self.server.ports["imap"], self.server.certPath))
        stdout, stderr = io.StringIO(), io.StringIO()
        status = yield cli.run(reactor, ["list", "--json"], stdout=stdout, stderr=stderr,
                               environ={"HOME": self.home, "MAILNET_PASSWORD": "bob-secret"})
        self.assertEqual(status, 0, stderr.getvalue())
        self.assertEqual(json.loads(stdout.getvalue())["folder"], "INBOX")
        with open(config, "a") as f:
            f.write("[other]\nprotocol = smoke-signals\n")
        status = yield cli.run(reactor, ["--account", "other", "list"], stdout=stdout, stderr=stderr,
                               environ={"HOME": self.home, "MAILNET_PASSWORD": "x"})
        self.assertEqual(status, cli.EXIT_USAGE)
        self.assertIn("protocol is imap or pop3", stderr.getvalue())


class WatchProcessTests(IMAPCLIMixin, unittest.TestCase):
    """watch as a person runs it: a real process, output into a pipe, Ctrl-C."""

    timeout = 60

    def setUp(self):
        return self.startWithUsers()

    @defer.inlineCallbacks
    def test_watchPrintsNewMailThenCtrlC(self):
        """A message delivered while watching is printed at once (into a pipe); SIGINT ends it with 130."""
        state = {"sent": False}
        delivered = defer.Deferred()

        def onOutput(child):
            if b"watching INBOX" in child.output[2] and not state["sent"]:
                state["sent"] = True
                self.send("arrived while watching").chainDeferred(delivered)
            if b"arrived while watching" in child.output[1] and not getattr(child, "signalled", False):
                child.signalled = True
                child.transport.signalProcess("INT")

        child = Child(onOutput)
        argv = self.options("bob@example.test") + ["watch", "--json"]
        status = yield spawn(self, "main", argv, child, {"MAILNET_PASSWORD": "bob-secret", "HOME": self.home})
        yield delivered
        yield self.serverIdle()
        self.assertEqual(status, EXIT_INTERRUPTED, child.output[2])
        line = json.loads(child.output[1].decode().splitlines()[0])
        self.assertEqual((line["subject"], line["folder"]), ("arrived while watching", "INBOX"))
        self.assertNotIn(b"Traceback", child.output[2])
        self.assertIn(b"interrupted", child.output[2])



class WatchReconnectTests(IMAPCLIMixin, unittest.TestCase):
    timeout = 20

    def setUp(self):
        return self.startWithUsers()

    @defer.inlineCallbacks
    def waitFor(self, stream, text):
        for _ in range(500):
            if text in stream.getvalue():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail("never printed %r; stderr so far: %r" % (text, stream.getvalue()))

    @defer.inlineCallbacks
    def test_reconnects(self):
        """
        A dropped connection is reported and made again; what arrived in the
        meantime is announced; once the run is interrupted it ends with 130.
        """
        self.patch(_imapcommands, "FIRST_BACKOFF", 0.01)
        commands = []
        original = _imapcommands.IMAPCommands.__init__

        def record(self_, *args):
            original(self_, *args)
            commands.append(self_)

        sessions = []
        originalSession = _imapcommands.IMAPCommands.session

        async def session(self_):
            s = await originalSession(self_)
            if self_.options.command == "watch":
                sessions.append(s)
            return s

        self.patch(_imapcommands.IMAPCommands, "__init__", record)
        self.patch(_imapcommands.IMAPCommands, "session", session)
        stdout, stderr = io.StringIO(), io.StringIO()
        done = cli.run(reactor, self.options("bob@example.test") + ["watch"], stdout=stdout, stderr=stderr,
                       environ={"HOME": self.home, "MAILNET_PASSWORD": "bob-secret"})
        yield self.waitFor(stderr, "watching INBOX")
        sessions[-1].protocol.transport.abortConnection()
        yield self.waitFor(stderr, "connected again")
        self.assertIn("reconnecting in 0.01 s", stderr.getvalue())
        yield self.send("after the drop")
        yield self.waitFor(stdout, "after the drop")
        [watch] = [c for c in commands if c.options.command == "watch"]
        watch.inv.interrupted = True
        sessions[-1].protocol.transport.abortConnection()
        status = yield done
        self.assertEqual(status, cli.EXIT_INTERRUPTED)
        self.assertEqual(len(sessions), 2)
        self.assertEqual(stderr.getvalue().count("reconnecting"), 1)  # not after the interruption


class WatchExecTests(IMAPCLIMixin, unittest.TestCase):
    timeout = 60

    def setUp(self):
        return self.startWithUsers()

    @defer.inlineCallbacks
    def test_exec(self):
        """--exec runs the command per new message: details in its environment, JSON on its stdin, never the password."""
        state = {"sent": False}
        delivered = defer.Deferred()

        def onOutput(child):
            if b"watching INBOX" in child.output[2] and not state["sent"]:
                state["sent"] = True
                self.send("run for me").chainDeferred(delivered)
            if b"}" in child.output[1] and not getattr(child, "signalled", False):
                child.signalled = True
                child.transport.signalProcess("INT")

        child = Child(onOutput)
        argv = self.options("bob@example.test") + [
            "watch", "--exec", 'echo "got $MAILNET_UID $MAILNET_FOLDER $MAILNET_SUBJECT pw=$MAILNET_PASSWORD"; cat']
        status = yield spawn(self, "main", argv, child, {"MAILNET_PASSWORD": "bob-secret", "HOME": self.home})
        yield delivered
        yield self.serverIdle()
        self.assertEqual(status, EXIT_INTERRUPTED, child.output[2])
        first, second = child.output[1].decode().splitlines()[:2]
        self.assertEqual(first, "got 1 INBOX run for me pw=")
        self.assertEqual(json.loads(second)["subject"], "run for me")


class PureTests(unittest.SynchronousTestCase):
    def test_maildirWriterSplitCRLF(self):
        """A CRLF split between two pieces still becomes one LF; a lone CR stays."""
        directory = self.mktemp()
        writer = _imapcommands.MaildirWriter(directory)
        writer.open()
        for piece in (b"Subject: x\r", b"\n\r\nline\r", b"\nlone\r", b"x\r"):
            writer.write(piece)
        writer.close()
        [name] = os.listdir(os.path.join(directory, "new"))
        with open(os.path.join(directory, "new", name), "rb") as f:
            self.assertEqual(f.read(), b"Subject: x\n\nline\nlone\rx\r")
        self.assertEqual(os.listdir(os.path.join(directory, "tmp")), [])

    def test_searchCriteria(self):
        Atom = imap.Atom
        criteria, utf8 = _imapcommands.searchCriteria(["from:bob", 'subject:"weekly report" since:2026-11-02 unseen', "Grüße"])
        self.assertEqual(criteria, [Atom(b"FROM"), "bob", Atom(b"SUBJECT"), "weekly report", Atom(b"SINCE"), Atom(b"2-Nov-2026"),
                                    Atom(b"UNSEEN"), Atom(b"TEXT"), "Grüße"])
        self.assertTrue(utf8)
        self.assertFalse(_imapcommands.searchCriteria(["to:x"])[1])
        for bad in (["since:tomorrow"], ["from:"], ['"unbalanced'], [""]):
            self.assertRaises(cli.UsageError, _imapcommands.searchCriteria, bad)

    def test_flagItems(self):
        self.assertEqual(
            _imapcommands.parseFlagItems(["3", "4", "+seen", "-Flagged", "+$Work", "--json", "--folder", "Archive"]),
            ([3, 4], [("+", "\\Seen"), ("-", "\\Flagged"), ("+", "$Work")], "Archive", True),
        )
        for bad in (["+seen"], ["3"], ["3", "+a(b"], ["x", "+seen"], ["3", "+seen", "--folder"]):
            self.assertRaises(cli.UsageError, _imapcommands.parseFlagItems, bad)

    def test_maildirFor(self):
        self.assertEqual(_imapcommands.maildirFor("/m", "INBOX", True), "/m")
        self.assertEqual(_imapcommands.maildirFor("/m", "Work", False), "/m")
        self.assertEqual(_imapcommands.maildirFor("/m", "Work/2026", True), "/m/.Work.2026")
        self.assertEqual(_imapcommands.maildirFor("/m", "../../etc", True), "/m/.etc")
