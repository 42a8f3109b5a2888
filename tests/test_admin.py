# -*- test-case-name: tests.test_admin -*-
"""
Tests for L{mailnet.cli.admin} (C{mailnet-admin}) and L{mailnet.cli._common}.
"""

import datetime
import errno
import io
import os
import re
import socket
import sqlite3
from typing import Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailnet import passwords
from mailnet.cli import admin
from mailnet.cli._common import dispatch, readNewPassword
from mailnet.errors import UnknownUser
from mailnet.passwords import lowCostHasher, needsRehash, verifyPassword
from mailnet.store.accounts import openAccountStore
from mailnet.store.maildir import runSynchronously
from mailnet.tls import generateSelfSigned

CHEAP = lowCostHasher()


class FakeTTY(io.StringIO):
    """What a person at a terminal types (echo cannot be turned off)."""

    def isatty(self) -> bool:
        return True


class AdminTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        # Hashing with the real cost would make this module slow.
        self.patch(passwords, "DEFAULT_HASHER", CHEAP)
        self.dataDir = os.path.abspath(self.mktemp())
        os.mkdir(self.dataDir)

    def runAdmin(self, *argv: str, stdin: str = "", tty: bool = False, dataDir: bool = True) -> Tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        inp = FakeTTY(stdin) if tty else io.StringIO(stdin)
        if dataDir:
            argv = ("--data-dir", self.dataDir) + argv
        code = admin.main(list(argv), stdin=inp, stdout=out, stderr=err)
        self.lastStdin = inp
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, **kw) -> str:
        code, out, err = self.runAdmin(*argv, **kw)
        self.assertEqual((code, err), (0, ""), out)
        return out

    def fails(self, *argv: str, **kw) -> str:
        """
        Run a command that must fail with one error line and exit 1.
        """
        code, out, err = self.runAdmin(*argv, **kw)
        self.assertEqual(code, 1, (out, err))
        # A fake terminal does not echo the newline typed after a prompt.
        err = re.sub(r"\A(New password for \S+: |Retype the password: )*", "", err)
        self.assertTrue(err.startswith("mailnet-admin: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        return err

    def store(self):
        store = openAccountStore(self.dataDir)
        self.addCleanup(store.close)
        return store

    def writeConfig(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path


class UsageTests(AdminTestCase):
    def test_noCommand(self) -> None:
        """Bare mailnet-admin lists its commands (on stdout, as git), exit 2."""
        code, out, err = self.runAdmin(dataDir=False)
        self.assertEqual(code, 2)
        self.assertIn("usage: mailnet-admin", out)
        self.assertIn("COMMAND", out)

    def test_unknownCommand(self) -> None:
        code, out, err = self.runAdmin("frobnicate")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice", err)

    def test_missingAction(self) -> None:
        code, out, err = self.runAdmin("user")
        self.assertEqual(code, 2)
        self.assertIn("ACTION", err)

    def test_help(self) -> None:
        code, out, err = self.runAdmin("--help", dataDir=False)
        self.assertEqual((code, err), (0, ""))
        for word in ["domain", "user", "alias", "queue", "check", "--config", "--data-dir", "examples:"]:
            self.assertIn(word, out)

    def test_subcommandHelp(self) -> None:
        code, out, err = self.runAdmin("user", "add", "--help")
        self.assertEqual(code, 0)
        self.assertIn("--password-stdin", out)
        self.assertIn("never give it on the command line", " ".join(out.split()))
        code, out, err = self.runAdmin("alias", "add", "--help")
        self.assertIn("catch-all", out)

    def test_passwordNotOnCommandLine(self) -> None:
        """
        There is no way to give a password as an argument.
        """
        os.mkdir(os.path.join(self.dataDir, "x"))
        code, out, err = self.runAdmin("user", "add", "alice@example.test", "secret")
        self.assertEqual(code, 2)
        self.assertIn("unrecognized arguments: secret", err)


class DataDirTests(AdminTestCase):
    def test_missing(self) -> None:
        missing = os.path.join(self.dataDir, "nope")
        err = self.fails("--data-dir", missing, "domain", "list")
        self.assertIn(missing, err)
        self.assertIn("create it", err)
        self.assertIn("--data-dir", err)
        self.assertFalse(os.path.exists(missing))

    def test_defaultMissing(self) -> None:
        """
        Without --data-dir or --config the data dir is ./mailnet-data, as
        for the daemon.
        """
        cwd = os.getcwd()
        os.chdir(self.dataDir)
        self.addCleanup(os.chdir, cwd)
        err = self.fails("domain", "list", dataDir=False)
        self.assertIn("./mailnet-data does not exist", err)
        os.mkdir("mailnet-data")
        self.assertEqual(self.runAdmin("domain", "list", dataDir=False)[0], 0)
        self.assertTrue(os.path.exists(os.path.join("mailnet-data", "accounts.sqlite3")))

    def test_notADirectory(self) -> None:
        path = os.path.join(self.dataDir, "file")
        open(path, "w").close()
        err = self.fails("--data-dir", path, "domain", "list")
        self.assertIn("is not a directory", err)

    def test_notWritable(self) -> None:
        calls = []

        def access(path, mode):
            calls.append((path, mode))
            return False

        self.patch(os, "access", access)
        err = self.fails("domain", "list")
        self.assertIn("is not writable", err)
        self.assertEqual(calls, [(self.dataDir, os.W_OK | os.X_OK)])


class DomainTests(AdminTestCase):
    def test_add(self) -> None:
        out = self.ok("domain", "add", "Example.TEST")
        self.assertIn("Added domain example.test.", out)
        self.assertEqual(self.store().domains(), ["example.test"])

    def test_addTwice(self) -> None:
        self.ok("domain", "add", "example.test")
        err = self.fails("domain", "add", "example.test")
        self.assertIn("example.test already exists", err)

    def test_addBad(self) -> None:
        err = self.fails("domain", "add", "not a domain")
        self.assertIn("'not a domain' is not a valid domain name", err)

    def test_list(self) -> None:
        self.ok("domain", "add", "b.test")
        self.ok("domain", "add", "a.test")
        self.assertEqual(self.ok("domain", "list"), "a.test\nb.test\n")

    def test_del(self) -> None:
        self.ok("domain", "add", "example.test")
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.ok("alias", "add", "info@example.test", "alice@example.test")
        out = self.ok("domain", "del", "example.test")
        self.assertIn("Removed domain example.test with 1 user and 1 alias", out)
        self.assertIn(os.path.join(self.dataDir, "mail", "example.test"), out)
        self.assertEqual(self.store().domains(), [])
        self.assertEqual(self.store().users(), [])

    def test_delUnknown(self) -> None:
        err = self.fails("domain", "del", "nope.test")
        self.assertIn("Domain nope.test is not a local domain", err)


class UserTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("domain", "add", "example.test")

    def assertPassword(self, address: str, password: str) -> None:
        stored = self.store().passwordHash(address)
        self.assertIsNotNone(stored)
        self.assertTrue(verifyPassword(stored, password))

    def test_addPasswordStdin(self) -> None:
        out = self.ok("user", "add", "Alice@Example.test", "--password-stdin", stdin="s3cret pass \n")
        self.assertEqual(out, "Added user alice@example.test.\n")
        self.assertPassword("alice@example.test", "s3cret pass ")
        self.assertFalse(needsRehash(self.store().passwordHash("alice@example.test"), CHEAP))

    def test_addPrompt(self) -> None:
        """
        On a terminal the password is asked for twice, on stderr.
        """
        code, out, err = self.runAdmin("user", "add", "alice@example.test", stdin="pw1\npw1\n", tty=True)
        self.assertEqual(code, 0, err)
        self.assertIn("New password for alice@example.test: ", err)
        self.assertIn("Retype the password: ", err)
        self.assertNotIn("pw1", out + err)
        self.assertPassword("alice@example.test", "pw1")

    def test_addPromptMismatch(self) -> None:
        err = self.fails("user", "add", "alice@example.test", stdin="pw1\npw2\n", tty=True)
        self.assertIn("the two passwords differ; nothing was changed", err)
        self.assertEqual(self.store().users(), [])

    def test_addPromptEmpty(self) -> None:
        err = self.fails("user", "add", "alice@example.test", stdin="\n\n", tty=True)
        self.assertIn("an empty password is not allowed", err)
        self.assertEqual(self.store().users(), [])

    def test_addPromptEOF(self) -> None:
        err = self.fails("user", "add", "alice@example.test", stdin="pw1\n", tty=True)
        self.assertIn("no password given (end of input)", err)
        self.assertEqual(self.store().users(), [])

    def test_addStdinEmpty(self) -> None:
        err = self.fails("user", "add", "alice@example.test", "--password-stdin", stdin="\n")
        self.assertIn("an empty password is not allowed", err)
        err = self.fails("user", "add", "alice@example.test", "--password-stdin", stdin="")
        self.assertIn("no password given", err)
        self.assertEqual(self.store().users(), [])

    def test_addNotATerminal(self) -> None:
        """
        Without a terminal and without --password-stdin nothing is read.
        """
        err = self.fails("user", "add", "alice@example.test", stdin="pw\n")
        self.assertIn("standard input is not a terminal", err)
        self.assertIn("--password-stdin", err)
        self.assertEqual(self.lastStdin.tell(), 0)
        self.assertEqual(self.store().users(), [])

    def test_addUnstorableName(self) -> None:
        """
        Issue 11 item 9: a name the store cannot make a Maildir of is
        refused by mailnet-admin with a clear message, before any password
        is asked for (it used to be added, and then every message to it and
        to its fellow recipients failed with 451 at end of data).
        """
        for name in ("/tmp/x@example.test", "a/b@example.test", "../x@example.test", "a..b@example.test"):
            err = self.fails("user", "add", name, "--password-stdin", stdin="pw\n")
            self.assertIn("is not a valid mail address: ", err)
            self.assertEqual(self.lastStdin.tell(), 0, "no password was read")
        err = self.fails("user", "add", "/tmp/x@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual(
            err,
            "mailnet-admin: error: '/tmp/x@example.test' is not a valid mail address: it cannot name a mailbox "
            "(no /, \\, :, control characters, '..' or leading dot in either part).\n",
        )
        self.assertEqual(self.store().users(), [])

    def test_addLookAlike(self) -> None:
        """
        Issue 11 item 9: full-width and other look-alike names do not
        silently become separate accounts.
        """
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.ok("alias", "add", "info@example.test", "alice@example.test")
        for name, existing in (
            ("\uff41\uff4c\uff49\uff43\uff45@example.test", "alice@example.test"),
            ("al\u200bice@example.test", "alice@example.test"),
            ("\u2139nfo@example.test", "info@example.test"),
        ):
            err = self.fails("user", "add", name, "--password-stdin", stdin="pw\n")
            self.assertIn("looks like the existing %s" % (existing,), err)
            self.assertEqual(self.lastStdin.tell(), 0, "no password was read")
        self.assertEqual(self.store().users(), ["alice@example.test"])

    def test_addNormalisesToNFC(self) -> None:
        """
        A name typed with a combining accent and one typed precomposed are
        the same account (Unicode NFC), for adding and for log-in look-ups.
        """
        self.ok("user", "add", "jose\u0301@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual(self.store().users(), ["jos\u00e9@example.test"])
        self.assertIsNotNone(self.store().passwordHash("JOSE\u0301@example.test"))
        err = self.fails("user", "add", "jos\u00e9@example.test", "--password-stdin", stdin="pw\n")
        self.assertIn("already exists", err)

    def test_addDuplicate(self) -> None:
        """
        A duplicate is refused before the password is asked for.
        """
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        err = self.fails("user", "add", "ALICE@example.test", stdin="x\nx\n", tty=True)
        self.assertEqual(err, "mailnet-admin: error: alice@example.test already exists (as a user or an alias).\n")
        self.assertEqual(self.lastStdin.tell(), 0)

    def test_addOverAlias(self) -> None:
        self.ok("alias", "add", "info@example.test", "x@remote.test")
        err = self.fails("user", "add", "info@example.test", "--password-stdin", stdin="pw\n")
        self.assertIn("already exists", err)

    def test_addUnknownDomain(self) -> None:
        err = self.fails("user", "add", "alice@other.test", "--password-stdin", stdin="pw\n")
        self.assertIn("Domain other.test is not a local domain; add it first with 'mailnet-admin domain add other.test'", err)

    def test_addMalformed(self) -> None:
        for bad in ["alice", "alice@", "a b@example.test", "a..b@example.test"]:
            err = self.fails("user", "add", bad, "--password-stdin", stdin="pw\n")
            self.assertIn("is not a valid mail address", err)
        self.assertEqual(self.store().users(), [])

    def test_passwd(self) -> None:
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="old\n")
        code, out, err = self.runAdmin("user", "passwd", "Alice@example.test", stdin="new\nnew\n", tty=True)
        self.assertEqual((code, err), (0, "New password for alice@example.test: Retype the password: "))
        self.assertEqual(out, "Changed the password of alice@example.test.\n")
        self.assertPassword("alice@example.test", "new")
        self.ok("user", "passwd", "alice@example.test", "--password-stdin", stdin="newer\r\n")
        self.assertPassword("alice@example.test", "newer")

    def test_passwdMismatch(self) -> None:
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="old\n")
        self.fails("user", "passwd", "alice@example.test", stdin="new\nnew2\n", tty=True)
        self.assertPassword("alice@example.test", "old")

    def test_passwdUnknown(self) -> None:
        err = self.fails("user", "passwd", "bob@example.test", stdin="x\nx\n", tty=True)
        self.assertEqual(err, "mailnet-admin: error: There is no user bob@example.test.\n")
        self.assertEqual(self.lastStdin.tell(), 0)

    def test_del(self) -> None:
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        out = self.ok("user", "del", "ALICE@example.test")
        self.assertIn("Removed user alice@example.test", out)
        self.assertEqual(self.store().users(), [])

    def test_delUnknown(self) -> None:
        err = self.fails("user", "del", "bob@example.test")
        self.assertIn("There is no user bob@example.test.", err)

    def test_list(self) -> None:
        self.ok("domain", "add", "other.test")
        for address in ["zed@example.test", "amy@example.test", "bob@other.test"]:
            self.ok("user", "add", address, "--password-stdin", stdin="pw\n")
        self.assertEqual(self.ok("user", "list"), "amy@example.test\nbob@other.test\nzed@example.test\n")
        self.assertEqual(self.ok("user", "list", "Example.test"), "amy@example.test\nzed@example.test\n")
        err = self.fails("user", "list", "nope.test")
        self.assertIn("nope.test is not a local domain", err)

    def test_seenByRunningDaemon(self) -> None:
        """
        A store opened before (the daemon's) sees a user added by
        mailnet-admin at once.
        """
        daemon = self.store()
        self.assertIsNone(daemon.passwordHash("alice@example.test"))
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.assertTrue(verifyPassword(daemon.passwordHash("alice@example.test"), "pw"))


class AliasTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("domain", "add", "example.test")
        self.ok("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")

    def test_add(self) -> None:
        out = self.ok("alias", "add", "Info@example.test", "alice@example.test,Bob@Remote.test", "carol@remote.test")
        self.assertEqual(out, "info@example.test -> alice@example.test, bob@remote.test, carol@remote.test\n")
        self.assertEqual(
            self.store().aliases(),
            {"info@example.test": ("alice@example.test", "bob@remote.test", "carol@remote.test")},
        )

    def test_catchAll(self) -> None:
        self.ok("alias", "add", "@example.test", "alice@example.test")
        self.assertEqual(self.store().resolve("whoever@example.test"), ["alice@example.test"])

    def test_list(self) -> None:
        self.ok("alias", "add", "postmaster@example.test", "alice@example.test")
        self.ok("alias", "add", "@example.test", "alice@example.test")
        self.assertEqual(
            self.ok("alias", "list"),
            "@example.test -> alice@example.test\npostmaster@example.test -> alice@example.test\n",
        )

    def test_del(self) -> None:
        self.ok("alias", "add", "info@example.test", "alice@example.test")
        self.assertEqual(self.ok("alias", "del", "INFO@example.test"), "Removed alias info@example.test.\n")
        self.assertEqual(self.store().aliases(), {})

    def test_delUnknown(self) -> None:
        err = self.fails("alias", "del", "info@example.test")
        self.assertIn("There is no alias info@example.test.", err)

    def test_overUser(self) -> None:
        err = self.fails("alias", "add", "alice@example.test", "x@remote.test")
        self.assertIn("alice@example.test already exists", err)

    def test_unknownDomain(self) -> None:
        err = self.fails("alias", "add", "info@other.test", "alice@example.test")
        self.assertIn("Domain other.test is not a local domain", err)

    def test_badTarget(self) -> None:
        err = self.fails("alias", "add", "info@example.test", "alice@example.test,not valid")
        self.assertIn("'not valid' is not a valid mail address", err)
        err = self.fails("alias", "add", "info@example.test", ",")
        self.assertIn("needs at least one target", err)
        self.assertEqual(self.store().aliases(), {})

    def test_undeliverableTargetWarning(self) -> None:
        """
        A local target that goes nowhere (a typo?) is added, with a warning.
        """
        code, out, err = self.runAdmin("alias", "add", "info@example.test", "alcie@example.test")
        self.assertEqual(code, 0)
        self.assertIn("warning: alcie@example.test is not deliverable here yet", err)


class ConfigTests(AdminTestCase):
    def test_dataDirFromConfig(self) -> None:
        config = self.writeConfig("[server]\ndata_dir = %s\ndomain = example.test, Other.Test\n" % (self.dataDir,))
        self.assertEqual(self.ok("--config", config, "domain", "list", dataDir=False), "example.test\nother.test\n")

    def test_dataDirOverride(self) -> None:
        """
        --data-dir wins over the config file's data_dir.
        """
        config = self.writeConfig("[server]\ndata_dir = /nonexistent/mailnet\ndomain = example.test\n")
        self.assertEqual(self.ok("--config", config, "domain", "list"), "example.test\n")

    def test_configDataDirMissing(self) -> None:
        config = self.writeConfig("[server]\ndata_dir = /nonexistent/mailnet\n")
        err = self.fails("--config", config, "domain", "list", dataDir=False)
        self.assertIn("/nonexistent/mailnet does not exist", err)

    def test_badConfig(self) -> None:
        config = self.writeConfig("[server]\ndata_dir = x\n\n[limits]\nmax_recipients = many\n")
        err = self.fails("--config", config, "domain", "list")
        self.assertIn("%s:5" % (config,), err)
        self.assertIn("max_recipients", err)

    def test_missingConfig(self) -> None:
        err = self.fails("--config", "/nonexistent.ini", "domain", "list")
        self.assertIn("/nonexistent.ini: no such file", err)

    def test_delConfiguredDomain(self) -> None:
        """
        Removing a domain the config lists works, with a note that it will
        come back.
        """
        config = self.writeConfig("[server]\ndomain = example.test\n")
        code, out, err = self.runAdmin("--config", config, "domain", "del", "example.test")
        self.assertEqual(code, 0)
        self.assertIn("Removed domain example.test", out)
        self.assertIn("note: example.test is listed in [server] domain of %s" % (config,), err)


class QueueTests(AdminTestCase):
    def queueMessage(self, sender: str, recipients) -> str:
        from mailnet.store.queue import DiskQueue

        queue = DiskQueue(os.path.join(self.dataDir, "queue"), runSynchronously, Clock(), "test.host")
        receiver = queue.receive(sender, recipients)
        receiver.write(b"Subject: hi\r\n\r\nhello\r\n")
        return self.successResultOf(receiver.finish())

    def test_listEmpty(self) -> None:
        self.assertEqual(self.ok("queue", "list"), "The queue is empty.\n")

    def test_list(self) -> None:
        first = self.queueMessage("alice@example.test", ["x@remote.test", "y@remote.test"])
        second = self.queueMessage("", ["z@remote.test"])
        out = self.ok("queue", "list")
        self.assertIn("%s  from <alice@example.test>  to x@remote.test, y@remote.test  attempts 0" % (first,), out)
        self.assertIn("%s  from <>  to z@remote.test" % (second,), out)
        self.assertIn("2 messages queued.", out)

    def test_listEscapesNetworkText(self) -> None:
        """
        A remote reply with ESC, BEL and CR (kept by an older version, or
        written by hand) cannot drive the terminal of whoever lists the
        queue.
        """
        import json

        entryId = self.queueMessage("alice@example.test", ["x@remote.test"])
        path = os.path.join(self.dataDir, "queue", "env", entryId + ".json")
        with open(path) as f:
            envelope = json.load(f)
        envelope["last_error"] = "451 4.3.0 \x1b]0;owned\x07\x1b[2J\rgone\u202e"
        with open(path, "w") as f:
            json.dump(envelope, f)
        out = self.ok("queue", "list")
        self.assertIn("    last error: 451 4.3.0 \\x1b]0;owned\\x07\\x1b[2J\\x0dgone\\u202e\n", out)
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\r", out)

    def test_flush(self) -> None:
        out = self.ok("queue", "flush")
        self.assertIn("retried now", out)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "queue", "flush")))

    def test_delete(self) -> None:
        entry = self.queueMessage("alice@example.test", ["x@remote.test"])
        self.assertIn("Deleted queued message %s" % (entry,), self.ok("queue", "delete", entry))
        self.assertEqual(self.ok("queue", "list"), "The queue is empty.\n")

    def test_deleteUnknown(self) -> None:
        err = self.fails("queue", "delete", "nosuchid")
        self.assertIn("There is no queued message nosuchid", err)

    def test_dataDirMissing(self) -> None:
        err = self.fails("--data-dir", os.path.join(self.dataDir, "nope"), "queue", "list")
        self.assertIn("does not exist", err)


class CheckTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.cert = os.path.join(self.dataDir, "cert.pem")
        self.key = os.path.join(self.dataDir, "key.pem")
        generateSelfSigned("mail.example.test", self.cert, self.key, days=365)

    def config(self, extra: str = "", listen: str = "tcp:0:interface=127.0.0.1", hostname: str = "mail.example.test", tls: str = "") -> str:
        tls = tls or "cert = %s\nkey = %s\n" % (self.cert, self.key)
        lines = "".join("%s = %s\n" % (name, listen) for name in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "http"))
        return self.writeConfig(
            "[server]\nhostname = %s\ndomain = example.test\ndata_dir = %s\n[listen]\n%s[tls]\n%s%s"
            % (hostname, self.dataDir, lines, tls, extra)
        )

    def setUpAccounts(self) -> None:
        store = self.store()
        store.addDomain("example.test")
        store.addUser("alice@example.test", "h")
        store.addAlias("postmaster@example.test", ["alice@example.test"])

    def check(self, config: str) -> Tuple[int, str, str]:
        return self.runAdmin("--config", config, "check", dataDir=False)

    def test_clean(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config())
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("No problems found.", out)
        self.assertIn("names mail.example.test, localhost; SHA-256 fingerprint", out)
        self.assertIn("ok: smtp tcp:0:interface=127.0.0.1: can listen", out)
        self.assertNotIn("warning", out)
        self.assertNotIn("error", out)

    def test_namesFromOlderVersions(self) -> None:
        """
        Issue 11 item 9: users an older mailnet accepted -- names that
        cannot be a Maildir, look-alikes -- are pointed out.
        """
        self.setUpAccounts()
        store = self.store()
        with store._transaction(write=True) as db:
            for name in ("/tmp/x@example.test", "\uff41lice@example.test", "jose\u0301@example.test"):
                db.execute("INSERT INTO users (address, domain, password_hash) VALUES (?, 'example.test', 'h')", (name,))
        code, out, err = self.check(self.config())
        self.assertEqual(code, 1, out)
        self.assertIn("warning: user '/tmp/x@example.test' cannot have a Maildir; mail to it is refused", out)
        self.assertIn("warning: 'alice@example.test' and '\\uff41lice@example.test' look alike", out)
        self.assertIn("warning: user 'jose\\u0301@example.test' is not stored in Unicode NFC", out)

    def test_dnsRecords(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config())
        self.assertIn("example.test.         MX   10 mail.example.test.", out)
        self.assertIn('example.test.         TXT  "v=spf1 mx -all"', out)
        self.assertIn('_dmarc.example.test.  TXT  "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test"', out)
        self.assertIn("mail.example.test.  A/AAAA", out)

    def test_clientRecords(self) -> None:
        """Issue 16: the autoconfig names, RFC 6186 SRV and MTA-STS records."""
        self.setUpAccounts()
        code, out, err = self.check(self.config(listen="tcp:0"))
        self.assertRegex(out, r"autoconfig\.example\.test\. +CNAME +mail\.example\.test\.")
        self.assertRegex(out, r"autodiscover\.example\.test\. +CNAME +mail\.example\.test\.")
        # Port 0 (chosen at start) cannot be published.
        self.assertNotIn("_imaps._tcp", out)
        self.assertRegex(out, r'_mta-sts\.example\.test\. +TXT +"v=STSv1; id=[0-9a-f]{20}"')

    def test_diskBelowFloor(self) -> None:
        """check warns when free space is below min_free_space."""
        self.setUpAccounts()
        code, out, err = self.check(self.config("[limits]\nmin_free_space = 99.9%\n"))
        self.assertEqual(code, 1, out)
        self.assertRegex(out, r"warning: \d+ MiB free of \d+ MiB; new mail is refused below \d+ MiB \(min_free_space = 99.9%\): free some space")

    def test_noPostmaster(self) -> None:
        code, out, err = self.check(self.config())
        self.assertEqual(code, 1)
        self.assertIn("warning: example.test has no postmaster (RFC 5321 §4.5.1)", out)
        self.assertIn("Problems found: 1.", out)

    def test_noDomain(self) -> None:
        config = self.writeConfig("[server]\nhostname = mail.example.test\n[listen]\nsmtp = tcp:0:interface=127.0.0.1\n"
                                  "submission =\nsmtps =\npop3 =\npop3s =\nimap =\nimaps =\nhttp =\n")
        code, out, err = self.runAdmin("--config", config, "check")
        self.assertEqual(code, 1)
        self.assertIn("warning: no local domain", out)
        self.assertIn("note: pop3: off", out)

    def test_badConfig(self) -> None:
        config = self.writeConfig("[server]\nhostname = x\nfrobs = 3\n")
        code, out, err = self.check(config)
        self.assertEqual(code, 1)
        self.assertIn("error: %s:3: unknown key 'frobs' in [server]" % (config,), out)

    def test_dataDirMissing(self) -> None:
        self.setUpAccounts()
        code, out, err = self.runAdmin("--config", self.config(), "--data-dir", os.path.join(self.dataDir, "nope"), "check", dataDir=False)
        self.assertEqual(code, 1)
        self.assertIn("does not exist; create it", out)

    def test_certificateExpiresSoon(self) -> None:
        self.setUpAccounts()
        generateSelfSigned("mail.example.test", self.cert, self.key, days=3)
        code, out, err = self.check(self.config())
        self.assertEqual(code, 1)
        self.assertIn("warning: expires in 2 day(s)", out)

    def test_certificateExpired(self) -> None:
        self.setUpAccounts()
        args = admin.buildParser().parse_args(["--config", self.config(), "check"])
        out = io.StringIO()
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
        code = admin.check(admin.Admin(args, io.StringIO(), out, io.StringIO()), now=later)
        self.assertEqual(code, 1)
        self.assertIn("error: expired on", out.getvalue())

    def test_hostnameNotInCertificate(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config(hostname="mx.example.test"))
        self.assertEqual(code, 1)
        self.assertIn("warning: the host name mx.example.test is not among the certificate's names", out)

    def test_wildcardCertificate(self) -> None:
        self.assertTrue(admin._matchesName("mx.example.test", ["*.example.test"]))
        self.assertFalse(admin._matchesName("a.mx.example.test", ["*.example.test"]))
        self.assertFalse(admin._matchesName("example.test", ["*.example.test"]))
        self.assertTrue(admin._matchesName("MX.example.test.", ["mx.EXAMPLE.test"]))

    def test_keyMismatch(self) -> None:
        self.setUpAccounts()
        otherCert, otherKey = os.path.join(self.dataDir, "o.pem"), os.path.join(self.dataDir, "o.key")
        generateSelfSigned("mail.example.test", otherCert, otherKey, days=365)
        code, out, err = self.check(self.config(tls="cert = %s\nkey = %s\n" % (self.cert, otherKey)))
        self.assertEqual(code, 1)
        self.assertIn("does not match the certificate", out)

    def test_unreadableCertificate(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config(tls="cert = /nonexistent.pem\nkey = /nonexistent.key\n"))
        self.assertEqual(code, 1)
        self.assertIn("error: /nonexistent.pem: cannot read the TLS certificate", out)

    def test_generatedCertificate(self) -> None:
        """
        Without a configured certificate, the generated one in the data dir
        is checked if it is there.
        """
        self.setUpAccounts()
        config = self.writeConfig(
            "[server]\nhostname = mail.example.test\ndomain = example.test\n[listen]\nsmtp = tcp:0:interface=127.0.0.1\n"
            "submission =\nsmtps =\npop3 =\npop3s =\nimap =\nimaps =\n"
        )
        code, out, err = self.runAdmin("--config", config, "check")
        self.assertEqual(code, 0, out)
        self.assertIn("the daemon generates a self-signed one", out)
        os.mkdir(os.path.join(self.dataDir, "tls"))
        generateSelfSigned(
            "mail.example.test", os.path.join(self.dataDir, "tls", "selfsigned.pem"), os.path.join(self.dataDir, "tls", "selfsigned.key")
        )
        code, out, err = self.runAdmin("--config", config, "check")
        self.assertEqual(code, 0, out)
        self.assertIn("using the generated self-signed", out)
        self.assertIn("names mail.example.test, localhost", out)

    def test_portInUse(self) -> None:
        self.setUpAccounts()
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, out, err = self.check(self.config(listen="tcp:%d:interface=127.0.0.1" % (port,)))
        self.assertEqual(code, 1)
        self.assertIn("error: smtp tcp:%d:interface=127.0.0.1: in use" % (port,), out)
        self.assertIn("Problems found: 8.", out)

    def test_permissionDenied(self) -> None:
        self.setUpAccounts()

        def tryBind(family, interface, port):
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch(admin, "tryBind", tryBind)
        code, out, err = self.check(self.config(listen="tcp:25:interface=127.0.0.1"))
        self.assertEqual(code, 1)
        self.assertIn("error: smtp tcp:25:interface=127.0.0.1: permission denied (ports below 1024 need root", out)

    def test_badEndpoint(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config(listen="tcp:smtp"))
        self.assertEqual(code, 1)
        self.assertIn("error: smtp tcp:smtp: no valid port number", out)

    def test_nonTCPEndpoint(self) -> None:
        self.setUpAccounts()
        code, out, err = self.check(self.config(listen="unix:/tmp/mailnet.sock"))
        self.assertEqual(code, 0, out)
        self.assertIn("not a TCP endpoint, not checked", out)


class EndpointTests(SynchronousTestCase):
    def test_split(self) -> None:
        self.assertEqual(
            admin.splitEndpoint("tcp6:2525:interface=\\:\\:1"), (["tcp6", "2525"], {"interface": "::1"})
        )

    def test_address(self) -> None:
        self.assertEqual(admin.endpointAddress("tcp:2525:interface=127.0.0.1"), (socket.AF_INET, "127.0.0.1", 2525))
        self.assertEqual(admin.endpointAddress("tcp:port=25"), (socket.AF_INET, "", 25))
        self.assertEqual(admin.endpointAddress("tcp6:25"), (socket.AF_INET6, "::", 25))
        self.assertEqual(admin.endpointAddress("ssl:465:privateKey=k.pem"), (socket.AF_INET, "", 465))
        self.assertIsNone(admin.endpointAddress("unix:/x"))
        self.assertRaises(ValueError, admin.endpointAddress, "tcp:99999")
        self.assertRaises(ValueError, admin.endpointAddress, "tcp")


class DispatchTests(SynchronousTestCase):
    def dispatch(self, exc: BaseException) -> Tuple[int, str]:
        err = io.StringIO()

        def command():
            raise exc

        return dispatch("prog", command, err), err.getvalue()

    def test_mailnetError(self) -> None:
        self.assertEqual(self.dispatch(UnknownUser(address="a@b.test")), (1, "prog: error: There is no user a@b.test.\n"))

    def test_osError(self) -> None:
        code, text = self.dispatch(PermissionError(errno.EACCES, "Permission denied", "/x/accounts.sqlite3"))
        self.assertEqual((code, text), (1, "prog: error: /x/accounts.sqlite3: Permission denied\n"))

    def test_sqliteError(self) -> None:
        code, text = self.dispatch(sqlite3.OperationalError("database is locked"))
        self.assertEqual((code, text), (1, "prog: error: the account store failed: database is locked\n"))

    def test_success(self) -> None:
        self.assertEqual(dispatch("prog", lambda: None, io.StringIO()), 0)
        self.assertEqual(dispatch("prog", lambda: 3, io.StringIO()), 3)

    def test_unexpected(self) -> None:
        """
        Bugs are not hidden behind a one-line message.
        """
        self.assertRaises(ZeroDivisionError, dispatch, "prog", lambda: 1 / 0, io.StringIO())


class ReadNewPasswordTests(SynchronousTestCase):
    def test_keepsSpaces(self) -> None:
        self.assertEqual(readNewPassword("a", io.StringIO(" pw \r\nrest"), io.StringIO(), True), " pw ")

    def test_terminal(self) -> None:
        err = io.StringIO()
        self.assertEqual(readNewPassword("a@b.test", FakeTTY("pw\npw\n"), err, False), "pw")
        self.assertEqual(err.getvalue(), "New password for a@b.test: Retype the password: ")


class TerminalTests(SynchronousTestCase):
    def test_echoOff(self) -> None:
        """
        On a real terminal echo is off while the password is typed, and
        back on afterwards.
        """
        import pty
        import termios

        from mailnet.cli._common import readHidden

        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        tty = os.fdopen(slave, "r")
        self.addCleanup(tty.close)
        seen = []
        original = tty.readline

        def readline():
            seen.append(termios.tcgetattr(slave)[3] & termios.ECHO)
            # Typed only now: TCSAFLUSH discards what was typed ahead.
            os.write(master, b"secret\n")
            return original()

        tty.readline = readline  # type: ignore[method-assign]
        err = io.StringIO()
        self.assertEqual(readHidden("Password: ", tty, err), "secret")
        self.assertEqual(seen, [0])
        self.assertTrue(termios.tcgetattr(slave)[3] & termios.ECHO)
        self.assertEqual(err.getvalue(), "Password: \n")
