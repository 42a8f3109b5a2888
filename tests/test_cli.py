"""
Tests for mailnet-cli (L{mailnet.cli.main}): options, account file,
passwords, every command against scripted servers on 127.0.0.1, and one
test per exit status.
"""

import email
import email.policy
import io
import json
import os
from typing import List, Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailnet.cli import main as cli
from mailnet.cli._clientconfig import Account, configPath, loadAccount
from mailnet.client.tls import TLSMode
from mailnet.errors import ConfigError
from mailnet.tls import serverContextFactory
from tests.test_client_pop3 import MESSAGES, ScriptedPOP3Mixin
from tests.test_client_smtp import (
    FakeSMTPConfig,
    FakeSMTPServer,
    ScriptedServerMixin,
    certificate,
    closedPort,
    listenTLS,
    otherNameCertificate,
)

SAMPLES = os.path.join(os.path.dirname(__file__), "samples")


class TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def synchronously(reactor, f, *args):
    return defer.maybeDeferred(f, *args)


class CLITestMixin(ScriptedServerMixin, ScriptedPOP3Mixin):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.environ = {"HOME": self.home, "MAILNET_PASSWORD": "secret"}

    @defer.inlineCallbacks
    def cli(self, *argv: str, stdin: str = "", stderr: Optional[io.StringIO] = None):
        """Run mailnet-cli; @return: (status, stdout, stderr)."""
        self.stdout = io.StringIO()
        self.stderr = stderr if stderr is not None else io.StringIO()
        status = yield cli.run(
            reactor,
            list(argv),
            stdin=io.StringIO(stdin),
            stdout=self.stdout,
            stderr=self.stderr,
            environ=self.environ,
            runInThread=synchronously,
        )
        return status, self.stdout.getvalue(), self.stderr.getvalue()

    def servers(self, smtp: Optional[dict] = None, pop3: Optional[dict] = None, mode: TLSMode = TLSMode.starttls) -> List[str]:
        """Start both scripted servers; @return: the connection options."""
        cert = certificate(self)
        self.smtpConfig, smtpEndpoint = self.startSMTP(mode, cert=cert, **(smtp or {}))
        self.pop3Config, pop3Endpoint = self.startPOP3(mode, cert=cert, **(pop3 or {}))
        cafile = cert[0]
        return [
            "--host", "localhost",
            "--smtp-port", str(smtpEndpoint.port),
            "--pop3-port", str(pop3Endpoint.port),
            "--user", "alice@example.test",
            "--tls", mode.value,
            "--cafile", cafile,
        ]

    def assertOneErrorLine(self, stderr: str, *fragments: str) -> None:
        lines = [l for l in stderr.splitlines() if l]
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("mailnet-cli: error: "), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        self.assertNotIn("Traceback", stderr)


class ExitCodeTableTests(unittest.SynchronousTestCase):
    def test_distinct(self) -> None:
        """Each documented category has its own status."""
        codes = [cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_USAGE, cli.EXIT_CONNECTION, cli.EXIT_TLS, cli.EXIT_AUTH,
                 cli.EXIT_RECIPIENT, cli.EXIT_TOO_LARGE, cli.EXIT_NO_MESSAGE]
        self.assertEqual(codes, list(range(9)))

    def test_unexpectedError(self) -> None:
        """A bug is not dressed up as an expected error: exit 1 and a hint."""
        streams = cli.Streams(io.StringIO(), io.StringIO(), io.StringIO(), {})
        self.assertEqual(cli.report(KeyError("x"), streams, False), 1)
        self.assertIn("unexpected KeyError", streams.stderr.getvalue())
        self.assertIn("--debug", streams.stderr.getvalue())


class MainTests(unittest.SynchronousTestCase):
    """L{cli.main} itself; only paths that end before the reactor starts."""

    def main(self, *argv: str, environ=None) -> tuple:
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), stdin=io.StringIO(), stdout=stdout, stderr=stderr, environ=environ or {"HOME": "/nonexistent"})
        return status, stdout.getvalue(), stderr.getvalue()

    def test_help(self) -> None:
        status, out, err = self.main("--help")
        self.assertEqual(status, 0)
        self.assertIn("usage: mailnet-cli", out)
        self.assertIn("8 no such message", out.replace("\n", " ").replace("  ", " "))

    def test_commandHelp(self) -> None:
        status, out, err = self.main("send", "--help")
        self.assertEqual(status, 0)
        self.assertIn("--bcc", out)

    def test_usageErrors(self) -> None:
        for argv in (["--bogus", "list"], ["lst"], ["list", "--page", "0"], ["read"], ["read", "x"], ["fetch"],
                     ["fetch", "--to-mbox", "a", "--to-maildir", "b"], ["--tls", "sometimes", "list"]):
            status, out, err = self.main(*argv)
            self.assertEqual(status, 2, argv)
            self.assertTrue(err.startswith("mailnet-cli: error: "), err)
            self.assertEqual(len(err.splitlines()), 1, err)

    def test_noUser(self) -> None:
        status, out, err = self.main("list", environ={"HOME": "/nonexistent", "MAILNET_PASSWORD": "x"})
        self.assertEqual(status, 2)
        self.assertIn("no user", err)
        # One prefix, not "mailnet-cli: error: mailnet-cli: ..." (issue 15 item 11).
        self.assertEqual(err.count("mailnet-cli"), 2, err)  # the prefix, and "see mailnet-cli --help"
        self.assertTrue(err.startswith("mailnet-cli: error: no user"), err)

    def test_bareListsCommands(self) -> None:
        """Bare mailnet-cli lists its commands, as git does (issue 15 item 9)."""
        status, out, err = self.main()
        self.assertEqual((status, err), (2, ""))
        for name in cli.COMMANDS:
            self.assertIn("  %s " % (name,), out)

    def test_version(self) -> None:
        from mailnet import __version__

        status, out, err = self.main("--version")
        self.assertEqual((status, out), (0, "mailnet-cli %s\n" % (__version__,)))

    def test_everythingDescribed(self) -> None:
        """
        Every command and every option has a description; each command's
        help has examples; repeatable options say so.
        """
        parser = cli.makeParser(io.StringIO())
        subparsers = [a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)][0]
        for name, sub in [("", parser)] + list(subparsers.choices.items()):
            for action in sub._actions:
                if action.option_strings or action.dest not in ("command",):
                    self.assertTrue(action.help, (name, action.dest))
                if isinstance(action, __import__("argparse")._AppendAction):
                    self.assertIn("repeatable", action.help, (name, action.dest))
            if name:
                self.assertIn("examples:", sub.epilog)
                self.assertTrue(sub.description)
        status, out, err = self.main("--help")
        self.assertIn("examples:", out)

    def test_unreadableAccountFile(self) -> None:
        """No configparser internals in messages (issue 15 item 11)."""
        home = self.mktemp()
        os.makedirs(os.path.join(home, ".config", "mailnet"))
        with open(os.path.join(home, ".config", "mailnet", "config.ini"), "w") as f:
            f.write("user = a@example.test\n")
        status, out, err = self.main("list", environ={"HOME": home, "MAILNET_PASSWORD": "x"})
        self.assertEqual(status, 2)
        self.assertIn("config.ini:1: a setting before any [section] header", err)
        self.assertNotIn("File contains", err)

    def test_badAddress(self) -> None:
        status, out, err = self.main("--user", "a@example.test", "send", "--to", "not an address", "--subject", "s", "--body", "b",
                                     environ={"HOME": "/nonexistent", "MAILNET_PASSWORD": "x"})
        self.assertEqual(status, 2)
        self.assertIn("not a valid mail address", err)

    def test_noPassword(self) -> None:
        """Not interactive and no password source: exit 5 (authentication)."""
        status, out, err = self.main("--user", "a@example.test", "list")
        self.assertEqual(status, 5)
        self.assertIn("MAILNET_PASSWORD", err)

    def test_noPasswordOption(self) -> None:
        """There is no way to give a password on the command line."""
        status, out, err = self.main("--user", "a@example.test", "--password", "x", "list")
        self.assertEqual(status, 2)


class ConfigTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_xdg(self) -> None:
        self.assertEqual(configPath({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}), "/x/mailnet/config.ini")
        self.assertEqual(configPath({"HOME": "/h"}), "/h/.config/mailnet/config.ini")

    def test_accounts(self) -> None:
        path = self.write(
            "[mailnet]\ndefault = home\n\n"
            "[account work]\nhost = work.example.test\n\n"
            "[home]\nhost = home.example.test\nsmtp_port = 2587\npop3_port = 2110\nuser = me@home.test\n"
            "tls = implicit\ncafile = ~/ca.pem\npassword_command = echo x\nfrom = Me <me@home.test>\n"
        )
        home = loadAccount(path, None)
        self.assertEqual(
            home,
            Account(name="home", host="home.example.test", smtp_port=2587, pop3_port=2110, user="me@home.test",
                    tls=TLSMode.implicit, cafile=os.path.expanduser("~/ca.pem"), password_command="echo x",
                    sender="Me <me@home.test>"),
        )
        self.assertEqual(loadAccount(path, "work").host, "work.example.test")

    def test_firstIsDefault(self) -> None:
        path = self.write("[account a]\nhost = a.test\n[account b]\nhost = b.test\n")
        self.assertEqual(loadAccount(path, None).name, "a")

    def test_missingFile(self) -> None:
        self.assertEqual(loadAccount("/nonexistent/config.ini", None), Account())
        self.assertRaises(ConfigError, loadAccount, "/nonexistent/config.ini", "work")

    def test_errors(self) -> None:
        for text in ("[a]\nhots = x\n", "[a]\nsmtp_port = many\n", "[a]\ntls = maybe\n", "[mailnet]\nfoo = 1\n", "garbage"):
            self.assertRaises(ConfigError, loadAccount, self.write(text), None)
        with self.assertRaises(ConfigError) as caught:
            loadAccount(self.write("[account a]\nhots = x\n"), "a")
        self.assertIn("hots", str(caught.exception))
        self.assertIn("[account a]", str(caught.exception))
        self.assertRaises(ConfigError, loadAccount, self.write("[a]\n"), "b")


class CommandTests(CLITestMixin, unittest.TestCase):
    """Each command against the scripted servers, STARTTLS/STLS."""

    @defer.inlineCallbacks
    def test_sendBccOnlyInEnvelope(self):
        options = self.servers()
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--cc", "carol@example.test",
                                          "--bcc", "dave@example.test", "--subject", "Grüße", "--body", "Hallo Bob")
        self.assertEqual(status, 0, err)
        [(sender, recipients, data)] = self.smtpConfig.messages
        self.assertEqual(sender, "alice@example.test")
        self.assertEqual(recipients, ["bob@example.test", "carol@example.test", "dave@example.test"])
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.assertIsNone(message["Bcc"])
        self.assertNotIn(b"dave", data)
        self.assertEqual(message["Subject"], "Grüße")
        self.assertEqual(message["From"], "alice@example.test")
        self.assertEqual(message.get_content().replace("\r\n", "\n"), "Hallo Bob\n")
        self.assertEqual(out.count("accepted"), 3)

    @defer.inlineCallbacks
    def test_sendBodyFromStdinWithAttachment(self):
        options = self.servers()
        attachment = os.path.join(self.home, "résumé.pdf")
        with open(attachment, "wb") as f:
            f.write(b"%PDF-1.4 x")
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--subject", "cv",
                                          "--attach", attachment, stdin="from stdin\n")
        self.assertEqual(status, 0, err)
        data = self.smtpConfig.messages[0][2]
        self.assertIn(b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf", data)
        self.assertIn(b"Content-Type: application/pdf", data)
        self.assertIn(b"from stdin", data)

    @defer.inlineCallbacks
    def test_sendFromAccountFile(self):
        """The account file gives host, ports, user, TLS, CA and From."""
        opts = self.servers()
        values = dict(zip(opts[::2], opts[1::2]))
        os.makedirs(os.path.join(self.home, "xdg", "mailnet"))
        self.environ["XDG_CONFIG_HOME"] = os.path.join(self.home, "xdg")
        del self.environ["MAILNET_PASSWORD"]
        with open(os.path.join(self.home, "xdg", "mailnet", "config.ini"), "w") as f:
            f.write(
                "[mailnet]\ndefault = main\n[account main]\nhost = localhost\nsmtp_port = %s\npop3_port = %s\n"
                "user = alice@example.test\ntls = starttls\ncafile = %s\npassword_command = printf 'secret\\nignored\\n'\n"
                "from = Alice Example <alice@example.test>\n" % (values["--smtp-port"], values["--pop3-port"], values["--cafile"])
            )
        status, out, err = yield self.cli("send", "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 0, err)
        message = email.message_from_bytes(self.smtpConfig.messages[0][2], policy=email.policy.default)
        self.assertEqual(message["From"], "Alice Example <alice@example.test>")
        self.assertEqual(self.smtpConfig.messages[0][0], "alice@example.test")

    @defer.inlineCallbacks
    def test_passwordCommandFails(self):
        os.makedirs(os.path.join(self.home, ".config", "mailnet"))
        with open(os.path.join(self.home, ".config", "mailnet", "config.ini"), "w") as f:
            f.write("[a]\nuser = alice@example.test\npassword_command = echo nope >&2; exit 3\n")
        del self.environ["MAILNET_PASSWORD"]
        status, out, err = yield self.cli("list")
        self.assertEqual(status, 5)
        self.assertOneErrorLine(err, "password_command", "exit status 3", "nope")

    @defer.inlineCallbacks
    def test_debugTranscriptMasksPassword(self):
        options = self.servers()
        status, out, err = yield self.cli("--debug", *options, "list")
        self.assertEqual(status, 0, err)
        self.assertIn("C: PASS ****", err)
        self.assertIn("C: STLS", err)
        self.assertIn("S: +OK", err)
        self.assertNotIn("secret", err)
        status, out, err = yield self.cli("--debug", *options, "send", "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 0, err)
        self.assertIn("C: AUTH PLAIN ****", err)
        self.assertIn("C: STARTTLS", err)
        import base64

        self.assertNotIn(base64.b64encode(b"\0alice@example.test\0secret").decode(), err)

    @defer.inlineCallbacks
    def test_list(self):
        options = self.servers(pop3={"messages": [b"From: m%d@example.test\r\nSubject: s%d\r\nDate: d%d\r\n\r\nbody\r\n" % (i, i, i) for i in range(1, 6)]})
        status, out, err = yield self.cli(*options, "list", "--limit", "2")
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].lstrip().startswith("5 "), out)
        self.assertIn("m5@example.test", lines[0])
        self.assertIn("s4", lines[1])
        self.assertIn("page 1 of 3 (5 messages)", out)
        status, out, err = yield self.cli(*options, "list", "--limit", "2", "--page", "3", "--json")
        self.assertEqual(status, 0, err)
        page = json.loads(out)
        # The total and how to page (issue 15 item 7), not 2 of 5 silently.
        self.assertEqual({k: v for k, v in page.items() if k != "messages"},
                         {"total": 5, "page": 3, "pages": 3, "limit": 2, "next_page": None})
        document = page["messages"]
        self.assertEqual([m["number"] for m in document], [1])
        self.assertEqual(document[0]["from"], "m1@example.test")
        self.assertEqual(document[0]["uid"], "uid-1")
        self.assertEqual(set(document[0]), {"number", "uid", "from", "subject", "date", "size"})
        status, out, err = yield self.cli(*options, "list", "--limit", "2", "--json")
        self.assertEqual(json.loads(out)["next_page"], 2)
        self.assertEqual(len(json.loads(out)["messages"]), 2)
        status, out, err = yield self.cli(*options, "list", "--limit", "2", "--page", "4")
        self.assertEqual((status, out), (0, "no page 4: 5 messages, 3 pages\n"))
        # Headers only: TOP n 0, never RETR.
        self.assertFalse(any(l.startswith(b"RETR") for l in self.pop3Config.lines))
        self.assertIn(b"TOP 1 0", self.pop3Config.lines)

    @defer.inlineCallbacks
    def test_listEmpty(self):
        options = self.servers(pop3={"messages": []})
        status, out, err = yield self.cli(*options, "list")
        self.assertEqual((status, out), (0, "no messages\n"))

    def readSample(self, name: str) -> bytes:
        with open(os.path.join(SAMPLES, name), "rb") as f:
            return f.read().replace(b"\n", b"\r\n")

    @defer.inlineCallbacks
    def test_read(self):
        options = self.servers(pop3={"messages": [self.readSample("qp-latin1.eml"), self.readSample("attachment-rfc2231.eml")]})
        status, out, err = yield self.cli(*options, "read", "1")
        self.assertEqual(status, 0, err)
        self.assertIn("From: José María <jose@example.es>\n", out)
        self.assertIn("Subject: Señor información sobre el pedido\n", out)
        self.assertIn("Hola Señora,", out)
        status, out, err = yield self.cli(*options, "read", "2")
        self.assertIn("Attachments:\n  Résumé très long — Q1.pdf  (application/pdf, 16 B)", out)
        status, out, err = yield self.cli(*options, "read", "2", "--json")
        document = json.loads(out)
        self.assertEqual(document["number"], 2)
        self.assertEqual(document["text"], "See attached.\n")
        status, out, err = yield self.cli(*options, "read", "2", "--raw")
        self.assertEqual(out, self.readSample("attachment-rfc2231.eml").replace(b"\r\n", b"\n").decode())

    @defer.inlineCallbacks
    def test_readNoSuchMessage(self):
        options = self.servers()
        status, out, err = yield self.cli(*options, "read", "3")
        self.assertEqual(status, 8)
        self.assertOneErrorLine(err, "there is no message 3 (the mailbox has 2)")

    @defer.inlineCallbacks
    def test_saveHostileNames(self):
        """Attachments land in DIR and nowhere else, whatever their names."""
        options = self.servers(pop3={"messages": [self.readSample("hostile-name.eml")]})
        target = os.path.join(self.home, "out", "inner")
        os.makedirs(target)
        with open(os.path.join(target, "passwd"), "w") as f:
            f.write("existing")
        status, out, err = yield self.cli(*options, "save", "1", "--attachments", target)
        self.assertEqual(status, 0, err)
        self.assertEqual(sorted(os.listdir(target)), ["attachment", "evil.bat", "passwd", "passwd (1)", "passwd (2)"])
        with open(os.path.join(target, "passwd")) as f:
            self.assertEqual(f.read(), "existing")
        self.assertEqual(os.listdir(os.path.join(self.home, "out")), ["inner"])
        self.assertIn("saved %s" % (os.path.join(target, "passwd (1)"),), out)

    @defer.inlineCallbacks
    def test_saveNoFollowSymlink(self):
        """A symbolic link planted in DIR under the attachment's name is not written through."""
        options = self.servers(pop3={"messages": [self.readSample("attachment-rfc2231.eml")]})
        target = os.path.join(self.home, "att")
        os.makedirs(target)
        victim = os.path.join(self.home, "victim")
        os.symlink(victim, os.path.join(target, "Résumé très long — Q1.pdf"))
        status, out, err = yield self.cli(*options, "save", "1", "--attachments", target)
        self.assertEqual(status, 0, err)
        self.assertFalse(os.path.exists(victim))
        self.assertIn("Résumé très long — Q1 (1).pdf", os.listdir(target))

    @defer.inlineCallbacks
    def test_delete(self):
        options = self.servers()
        status, out, err = yield self.cli(*options, "delete", "1")
        self.assertEqual(status, 0, err)
        self.assertEqual(out, "deleted 1\n")
        self.assertEqual(self.pop3Config.messages, MESSAGES[1:])
        self.assertEqual(self.pop3Config.lines[-2:], [b"DELE 1", b"QUIT"])

    @defer.inlineCallbacks
    def test_deleteBadNumberDeletesNothing(self):
        options = self.servers()
        status, out, err = yield self.cli(*options, "delete", "1", "7")
        self.assertEqual(status, 8)
        self.assertOneErrorLine(err, "no message 7")
        self.assertEqual(self.pop3Config.messages, MESSAGES)
        self.assertNotIn(b"QUIT", self.pop3Config.lines)

    @defer.inlineCallbacks
    def test_fetchMaildir(self):
        options = self.servers()
        maildir = os.path.join(self.home, "Mail")
        status, out, err = yield self.cli(*options, "fetch", "--to-maildir", maildir, "--delete")
        self.assertEqual(status, 0, err)
        names = sorted(os.listdir(os.path.join(maildir, "new")))
        self.assertEqual(len(names), 2)
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])
        contents = set()
        for name in names:
            with open(os.path.join(maildir, "new", name), "rb") as f:
                contents.add(f.read())
        self.assertEqual(contents, {m.replace(b"\r\n", b"\n") for m in MESSAGES})
        self.assertEqual(self.pop3Config.messages, [])
        self.assertIn("fetched 2 messages", out)

    @defer.inlineCallbacks
    def test_fetchMboxKeeps(self):
        options = self.servers()
        mbox = os.path.join(self.home, "mbox")
        status, out, err = yield self.cli(*options, "fetch", "--to-mbox", mbox)
        self.assertEqual(status, 0, err)
        with open(mbox, "rb") as f:
            data = f.read()
        self.assertEqual(data.count(b"\nFrom MAILER-DAEMON ") + data.startswith(b"From MAILER-DAEMON "), 2)
        import mailbox

        self.assertEqual([m["Subject"] for m in mailbox.mbox(mbox)], ["one", "two"])
        self.assertEqual(self.pop3Config.messages, MESSAGES)

    @defer.inlineCallbacks
    def test_fetchFailureDeletesNothing(self):
        """A save that fails: nothing is deleted on the server."""
        options = self.servers()
        blocker = os.path.join(self.home, "file")
        with open(blocker, "w") as f:
            f.write("x")
        status, out, err = yield self.cli(*options, "fetch", "--to-maildir", os.path.join(blocker, "Mail"), "--delete")
        self.assertEqual(status, 1)
        self.assertOneErrorLine(err, blocker)
        self.assertEqual(self.pop3Config.messages, MESSAGES)

    @defer.inlineCallbacks
    def test_fetchProgress(self):
        """A terminal on stderr: a progress bar in bytes, erased at the end."""
        self.patch(cli.Progress, "DELAY", 0)
        self.patch(cli.Progress, "MININTERVAL", 0)
        messages = [b"Subject: %d\r\n\r\n" % (i,) + b"x" * 3000 + b"\r\n" for i in range(2)]
        options = self.servers(pop3={"messages": messages})
        status, out, err = yield self.cli(*options, "fetch", "--to-mbox", os.path.join(self.home, "m"), stderr=TTY())
        self.assertEqual(status, 0, err)
        self.assertIn("fetching 2/2", err)
        self.assertIn("100%", err)
        self.assertIn("B/s", err)  # in bytes, not messages
        self.assertTrue(err.endswith("\r"), repr(err[-40:]))  # erased: the next output starts clean
        # Not a terminal: nothing.
        status, out, err = yield self.cli(*options, "fetch", "--all", "--to-mbox", os.path.join(self.home, "m2"))
        self.assertEqual(err, "")

    @defer.inlineCallbacks
    def test_sendProgress(self):
        """send shows the bytes sent (on a terminal)."""
        self.patch(cli.Progress, "DELAY", 0)
        self.patch(cli.Progress, "MININTERVAL", 0)
        options = self.servers()
        status, out, err = yield self.cli(*options, "send", "--to", "b@example.test", "--subject", "s",
                                          "--body", "x" * 50000, stderr=TTY())
        self.assertEqual(status, 0, err)
        self.assertIn("sending", err)
        self.assertIn("100%", err)

    @defer.inlineCallbacks
    def test_quickTransferPrintsNothing(self):
        """Under a second: no bar even on a terminal."""
        options = self.servers()
        status, out, err = yield self.cli(*options, "read", "1", stderr=TTY())
        self.assertEqual((status, err), (0, ""))

    @defer.inlineCallbacks
    def test_fetchRemembers(self):
        """
        Without --delete, fetch remembers what it saved (by UIDL, per user
        and server) and does not save it again; --all does (issue 15 item 6).
        """
        options = self.servers()
        mbox = os.path.join(self.home, "mbox")
        status, out, err = yield self.cli(*options, "fetch", "--to-mbox", mbox)
        self.assertEqual((status, out), (0, "fetched 2 messages into %s\n" % (mbox,)))
        status, out, err = yield self.cli(*options, "fetch", "--to-mbox", mbox)
        self.assertEqual(status, 0, err)
        self.assertIn("fetched 0 new messages", out)
        self.assertIn("2 fetched before were skipped (--all fetches them again)", out)
        import mailbox

        self.assertEqual(len(mailbox.mbox(mbox)), 2)
        # A new message arrives: only it is fetched.
        self.pop3Config.messages.append(b"Subject: three\r\n\r\nthree\r\n")
        status, out, err = yield self.cli(*options, "fetch", "--to-mbox", mbox)
        self.assertIn("fetched 1 new message into", out)
        self.assertEqual([m["Subject"] for m in mailbox.mbox(mbox)], ["one", "two", "three"])
        status, out, err = yield self.cli(*options, "fetch", "--all", "--to-mbox", mbox)
        self.assertIn("fetched 3 messages", out)
        self.assertEqual(len(mailbox.mbox(mbox)), 6)
        # Kept in the XDG state directory, per user and server.
        state = os.path.join(self.home, ".local", "state", "mailnet", "fetched")
        [name] = os.listdir(state)
        self.assertTrue(name.startswith("alice@example.test@localhost:"), name)

    def test_fetchedPathPerServer(self):
        from mailnet.cli._clientconfig import Account, resolve

        def path(*argv):
            options = cli.makeParser().parse_args(list(argv) + ["fetch", "--to-mbox", "m"])
            return cli.fetchedPath({"HOME": "/h"}, resolve(Account(), options))

        first = path("--user", "a@x.test", "--host", "one.test")
        self.assertTrue(first.startswith("/h/.local/state/mailnet/fetched/"))
        self.assertNotEqual(first, path("--user", "a@x.test", "--host", "two.test"))
        self.assertNotEqual(first, path("--user", "b@x.test", "--host", "one.test"))
        self.assertNotEqual(first, path("--user", "a@x.test", "--host", "one.test", "--pop3-port", "2110"))
        # Whatever the user name, one file directly in the state directory.
        self.assertEqual(os.path.dirname(path("--user", "../../a/b@x.test", "--host", "one.test")), os.path.dirname(first))


class ErrorPathTests(CLITestMixin, unittest.TestCase):
    """One expected failure per exit status: one line on stderr, no traceback."""

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        status, out, err = yield self.cli("--host", "127.0.0.1", "--pop3-port", str(closedPort()), "--user", "alice@example.test", "list")
        self.assertEqual(status, 3)
        self.assertOneErrorLine(err, "cannot connect to 127.0.0.1 port", "connection refused")

    @defer.inlineCallbacks
    def test_tlsWrongName(self):
        cert, key = otherNameCertificate(self, "other.example.test")
        config = FakeSMTPConfig(contextFactory=serverContextFactory(cert, key))
        port = listenTLS(self, lambda: FakeSMTPServer(config), cert, key, False)
        status, out, err = yield self.cli("--host", "127.0.0.1", "--smtp-port", str(port), "--cafile", cert, "--user", "alice@example.test",
                                          "send", "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 4)
        self.assertOneErrorLine(err, "not valid for the name 127.0.0.1", "other.example.test", "SHA-256")
        self.assertFalse(any(l.startswith(b"AUTH") for l in config.lines))

    @defer.inlineCallbacks
    def test_noStartTLS(self):
        options = self.servers(smtp={"offerStartTLS": False})
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 4)
        self.assertOneErrorLine(err, "does not offer STARTTLS")

    @defer.inlineCallbacks
    def test_plaintextNeedsPermission(self):
        options = self.servers(mode=TLSMode.none, pop3={"offerSTLS": False})
        status, out, err = yield self.cli(*options, "list")
        self.assertEqual(status, 4)
        self.assertOneErrorLine(err, "--allow-plaintext")
        self.assertFalse(any(l.startswith(b"PASS") for l in self.pop3Config.lines))
        status, out, err = yield self.cli(*options, "--allow-plaintext", "list")
        self.assertEqual(status, 0, err)

    @defer.inlineCallbacks
    def test_insecureWarns(self):
        options = self.servers(mode=TLSMode.implicit)
        index = options.index("--cafile")
        options = options[:index] + options[index + 2 :]
        status, out, err = yield self.cli(*options, "list")
        self.assertEqual(status, 4)
        status, out, err = yield self.cli(*options, "--insecure", "list")
        self.assertEqual(status, 0, err)
        self.assertIn("mailnet-cli: warning: --insecure", err)

    @defer.inlineCallbacks
    def test_authFailure(self):
        options = self.servers()
        self.environ["MAILNET_PASSWORD"] = "wrong"
        status, out, err = yield self.cli(*options, "list")
        self.assertEqual(status, 5)
        self.assertOneErrorLine(err, "refused the login of alice@example.test", "-ERR [AUTH] invalid credentials")
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 5)
        self.assertOneErrorLine(err, "535 5.7.8")

    @defer.inlineCallbacks
    def test_recipientRefused(self):
        """Partial failure: the accepted recipient is reported too; exit 6."""
        options = self.servers(smtp={"refuse": {"eve@example.test": "550 5.1.1 <eve@example.test>: no such user"}})
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--to", "eve@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 6)
        self.assertIn("accepted  bob@example.test", out)
        self.assertIn("refused   eve@example.test  (550 5.1.1 <eve@example.test>: no such user)", out)
        self.assertOneErrorLine(err, "1 of 2 recipients refused")
        status, out, err = yield self.cli(*options, "send", "--to", "eve@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 6)
        self.assertOneErrorLine(err, "550 5.1.1 <eve@example.test>: no such user")

    @defer.inlineCallbacks
    def test_messageTooLarge(self):
        options = self.servers(smtp={"size": 100})
        status, out, err = yield self.cli(*options, "send", "--to", "bob@example.test", "--subject", "s", "--body", "x" * 500)
        self.assertEqual(status, 7)
        self.assertOneErrorLine(err, "too large")
        self.assertEqual(self.smtpConfig.messages, [])

    @defer.inlineCallbacks
    def test_missingAttachment(self):
        status, out, err = yield self.cli("--user", "alice@example.test", "send", "--to", "b@example.test", "--subject", "s", "--body", "b",
                                          "--attach", "/nonexistent/file")
        self.assertEqual(status, 1)
        self.assertOneErrorLine(err, "/nonexistent/file")


class InteractiveTests(CLITestMixin, unittest.TestCase):
    """A terminal on stdin: the body comes from $EDITOR, the password from a prompt."""

    @defer.inlineCallbacks
    def test_editorAndPrompt(self):
        options = self.servers()
        del self.environ["MAILNET_PASSWORD"]
        # The editor is run with the file name as its last argument ($0 here).
        self.environ["EDITOR"] = "sh -c 'printf \"written in the editor\\n\" > \"$0\"'"
        prompts: List[str] = []

        def prompt(text, stream=None):
            prompts.append(text)
            return "secret"

        streams = cli.Streams(TTY(), io.StringIO(), io.StringIO(), self.environ)
        invocation = cli.prepare(options + ["send", "--to", "bob@example.test", "--subject", "s"], streams, prompt=prompt)
        self.assertIsInstance(invocation, cli.Invocation)
        self.assertEqual(prompts, ["Password for alice@example.test at localhost: "])
        status = yield invocation.execute(reactor)
        self.assertEqual(status, 0, streams.stderr.getvalue())
        message = email.message_from_bytes(self.smtpConfig.messages[0][2], policy=email.policy.default)
        self.assertEqual(message.get_content().replace("\r\n", "\n"), "written in the editor\n")

    @defer.inlineCallbacks
    def test_editorFails(self):
        self.environ["EDITOR"] = "false"
        streams = cli.Streams(TTY(), io.StringIO(), io.StringIO(), self.environ)
        status = cli.prepare(["--user", "alice@example.test", "send", "--to", "bob@example.test", "--subject", "s"], streams)
        self.assertEqual(status, 1)
        self.assertIn("exited with status 1", streams.stderr.getvalue())
        yield defer.succeed(None)

    def test_unexpectedErrorDebug(self):
        """--debug shows the traceback of a bug."""
        streams = cli.Streams(io.StringIO(), io.StringIO(), io.StringIO(), {})
        try:
            {}["x"]
        except KeyError as e:
            from twisted.python.failure import Failure

            self.assertEqual(cli.report(e, streams, True, Failure()), 1)
        self.assertIn("Traceback", streams.stderr.getvalue())


class HeaderInjectionTests(unittest.SynchronousTestCase):
    def test_lineBreaksRefused(self) -> None:
        """A Bcc smuggled into Subject or To: a usage error, nothing composed."""
        for extra in (["--to", "b@example.test", "--subject", "x\nBcc: evil@example.test"],
                      ["--to", "b@example.test\r\nBcc: evil@example.test", "--subject", "x"]):
            stdout, stderr = io.StringIO(), io.StringIO()
            status = cli.main(["--user", "a@example.test", "send", "--body", "b"] + extra, stdin=io.StringIO(), stdout=stdout,
                              stderr=stderr, environ={"HOME": "/nonexistent", "MAILNET_PASSWORD": "x"})
            self.assertEqual(status, 2, stderr.getvalue())
            self.assertRegex(stderr.getvalue(), "may not contain line breaks|control characters")
            self.assertNotIn("Traceback", stderr.getvalue())


class AddressParsingTests(unittest.SynchronousTestCase):
    """One parser for headers and envelope (issue 15 item 3)."""

    def main(self, *to: str) -> tuple:
        stdout, stderr = io.StringIO(), io.StringIO()
        argv = ["--user", "a@example.test", "send", "--subject", "s", "--body", "b"]
        for value in to:
            argv += ["--to", value]
        status = cli.main(argv, stdin=io.StringIO(), stdout=stdout, stderr=stderr,
                          environ={"HOME": "/nonexistent", "MAILNET_PASSWORD": "x"})
        return status, stderr.getvalue()

    def test_refusedBeforeSending(self) -> None:
        """Each bad value is refused (exit 2), naming it, before any connection."""
        for value, reason in [
            ("bob@exa mple.test", "spaces"),
            ("a@x.test;b@y.test", "commas"),
            ("bob@", "domain"),
            ("bob", "no @domain"),
            ("Bob <bob@exa mple.test>", "Bob <bob@exa mple.test>"),
        ]:
            status, err = self.main("ok@example.test", value)
            self.assertEqual(status, 2, (value, err))
            self.assertIn(repr(value), err)
            self.assertIn(reason, err)
            self.assertEqual(len(err.splitlines()), 1, err)

    def test_headerAndEnvelopeAgree(self) -> None:
        """What To: says is exactly where the message goes."""
        options = cli.makeParser().parse_args(
            ["--user", "a@example.test", "send", "--subject", "s", "--body", "b",
             "--to", '"Smith, J" <j@x.test>, k@y.test', "--to", "Bob <bob@example.test>", "--bcc", "hidden@z.test"]
        )
        from mailnet.cli._clientconfig import Account, resolve

        prepared = cli._prepareSend(options, resolve(Account(), options), None, __import__("datetime").datetime.now().astimezone())
        self.assertEqual(prepared["recipients"], ["j@x.test", "k@y.test", "bob@example.test", "hidden@z.test"])
        message = email.message_from_bytes(prepared["message"], policy=email.policy.default)
        self.assertEqual([a.addr_spec for a in message["To"].addresses], ["j@x.test", "k@y.test", "bob@example.test"])
        self.assertEqual(message["To"].addresses[0].display_name, "Smith, J")
        self.assertIsNone(message["Bcc"])


class PasswordSourceTests(unittest.SynchronousTestCase):
    """Whose password goes where (issue 15 item 4, a security fix)."""

    def connection(self, *argv: str):
        from mailnet.cli._clientconfig import resolve

        account = Account(name="bob", host="mail.example.test", user="bob@example.test",
                          password_command="echo bob-secret", sender="Bob <bob@example.test>")
        options = cli.makeParser().parse_args(list(argv) + ["list"])
        return resolve(account, options)

    def password(self, connection, environ=None) -> str:
        from mailnet.cli._clientconfig import getPassword

        def prompt(text, stream=None):
            return "prompted"

        return getPassword(connection, environ or {}, TTY(), io.StringIO(), prompt=prompt)

    def test_accountCommand(self) -> None:
        self.assertEqual(self.password(self.connection()), "bob-secret")

    def test_environmentWins(self) -> None:
        """MAILNET_PASSWORD, given for this run, wins over the account's command."""
        self.assertEqual(self.password(self.connection(), {"MAILNET_PASSWORD": "given"}), "given")

    def test_otherUserNeverGetsAccountPassword(self) -> None:
        """--account bob --user alice: not bob's password, and not bob's From."""
        connection = self.connection("--user", "alice@example.test")
        self.assertIsNone(connection.passwordCommand)
        self.assertEqual(self.password(connection), "prompted")
        self.assertEqual(connection.sender, "alice@example.test")

    def test_otherHostNeverGetsAccountPassword(self) -> None:
        connection = self.connection("--host", "evil.example")
        self.assertIsNone(connection.passwordCommand)
        self.assertEqual(self.password(connection), "prompted")

    def test_noPasswordSaysWhy(self) -> None:
        from mailnet.cli._clientconfig import NoPassword, getPassword

        connection = self.connection("--host", "other.example")
        error = self.assertRaises(NoPassword, getPassword, connection, {}, io.StringIO(), io.StringIO())
        self.assertIn("--host other.example is not the account's host", str(error))


class TerminalSafetyTests(unittest.SynchronousTestCase):
    def test_serverTextEscaped(self) -> None:
        """A server's reply with an escape sequence is shown escaped, in errors and the transcript."""
        from mailnet.errors import AuthenticationFailed

        streams = cli.Streams(io.StringIO(), io.StringIO(), io.StringIO(), {})
        cli.report(AuthenticationFailed(host="h", user="u", reply="535 no\x1b]0;pwned\x07"), streams, False)
        self.assertIn("535 no\\x1b]0;pwned\\x07", streams.stderr.getvalue())
        self.assertNotIn("\x1b", streams.stderr.getvalue())


class FromOptionTests(CLITestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_fromAlias(self):
        """--from: header From and envelope sender both (an alias of yours)."""
        options = self.servers()
        status, out, err = yield self.cli(*options, "send", "--from", "Sales <sales@example.test>",
                                          "--to", "bob@example.test", "--subject", "s", "--body", "b")
        self.assertEqual(status, 0, err)
        sender, recipients, data = self.smtpConfig.messages[0]
        self.assertEqual(sender, "sales@example.test")
        message = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(message["From"], "Sales <sales@example.test>")


class ColumnTests(unittest.SynchronousTestCase):
    """list columns by display width, cut with an ellipsis (issue 15 item 11)."""

    def test_fit(self) -> None:
        from wcwidth import wcswidth

        for text in ["short", "x" * 50, "日本語のメールの件名はとても長いです", "🎉" * 30, "a\x1b[2Jb"]:
            cell = cli.fit(text, 20)
            self.assertEqual(wcswidth(cell), 20, (text, cell))
        self.assertEqual(cli.fit("x" * 50, 10), "x" * 9 + "…")
        self.assertEqual(cli.fit("日本語日本語", 7), "日本語…")
        self.assertNotIn("\x1b", cli.fit("a\x1b[2Jb", 20))


class ShortWriteTests(unittest.SynchronousTestCase):
    def test_shortWriteIsNotSuccess(self) -> None:
        """
        BufferedWriter reports a reader that went away mid-write as a short
        write, not an error: outBytes writes the rest, which raises.
        """
        class Buffer:
            def __init__(self) -> None:
                self.calls = 0

            def write(self, data) -> int:
                self.calls += 1
                if self.calls > 1:
                    raise BrokenPipeError(32, "Broken pipe")
                return 10

            def flush(self) -> None:
                pass

        class Out(io.StringIO):
            buffer = Buffer()

        streams = cli.Streams(io.StringIO(), Out(), io.StringIO(), {})
        self.assertRaises(BrokenPipeError, streams.outBytes, b"x" * 100)


class UnsizedTerminalTests(unittest.SynchronousTestCase):
    def test_barOnTerminalOfUnknownSize(self) -> None:
        """A terminal that reports 0x0 (some ptys) still gets a bar, 80 columns wide."""
        self.patch(cli, "_terminalColumns", lambda stream: 0)
        self.patch(cli.Progress, "DELAY", 0)
        self.patch(cli.Progress, "MININTERVAL", 0)
        stream = TTY()
        progress = cli.Progress(stream, 1000, "reading")
        progress.update(500)
        progress.close()
        self.assertIn("reading:  50%", stream.getvalue())
