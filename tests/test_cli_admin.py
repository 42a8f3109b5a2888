"""
mailnet-admin as a new user meets it (issue 15): help and --version, the
mailbox of a removed user, queue ids in any case.
"""

import argparse
import os

from mailnet import __version__
from mailnet.cli import admin
from tests import test_admin as base

AdminTestCase = base.AdminTestCase


class HelpTests(AdminTestCase):
    def test_version(self) -> None:
        self.assertEqual(self.ok("--version", dataDir=False), "mailnet-admin %s\n" % (__version__,))

    def test_bareListsCommands(self) -> None:
        code, out, err = self.runAdmin(dataDir=False)
        self.assertEqual((code, err), (2, ""))
        for name in ("domain", "user", "alias", "queue", "check"):
            self.assertIn(name, out)

    def test_everythingDescribed(self) -> None:
        """Every command, action and option has a description."""

        def walk(parser: argparse.ArgumentParser, path: str) -> None:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        self.assertTrue(sub.description, path + " " + name)
                        walk(sub, path + " " + name)
                else:
                    self.assertTrue(action.help, (path, action.dest))

        walk(admin.buildParser(), "mailnet-admin")


class UserMailboxTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ok("domain", "add", "example.test")
        self.maildir = os.path.join(self.dataDir, "mail", "example.test", "bob")

    def addBobWithMail(self) -> None:
        self.ok("user", "add", "bob@example.test", "--password-stdin", stdin="pw\n")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        for n in range(3):
            with open(os.path.join(self.maildir, "new", "m%d" % (n,)), "w") as f:
                f.write("Subject: secret %d\n\nfor bob only\n" % (n,))

    def test_delRemovesMailbox(self) -> None:
        self.addBobWithMail()
        out = self.ok("user", "del", "bob@example.test")
        self.assertEqual(out, "Removed user bob@example.test and the mailbox with its 3 messages.\n")
        self.assertFalse(os.path.exists(self.maildir))

    def test_delKeepMailSaysSo(self) -> None:
        self.addBobWithMail()
        out = self.ok("user", "del", "bob@example.test", "--keep-mail")
        self.assertIn("kept the mailbox (3 messages) in %s" % (self.maildir,), out)
        self.assertEqual(len(os.listdir(os.path.join(self.maildir, "new"))), 3)

    def test_addDoesNotInheritOldMail(self) -> None:
        """A new bob does not get the previous bob's mail; the admin is told where it went."""
        self.addBobWithMail()
        self.ok("user", "del", "bob@example.test", "--keep-mail")
        code, out, err = self.runAdmin("user", "add", "bob@example.test", "--password-stdin", stdin="pw2\n")
        self.assertEqual(code, 0, err)
        self.assertIn("warning: a mailbox of an earlier bob@example.test was still there; moved it to", err)
        self.assertFalse(os.path.exists(os.path.join(self.maildir, "new", "m0")))
        moved = os.path.join(self.dataDir, "removed-mail", "example.test")
        [name] = os.listdir(moved)
        self.assertTrue(name.startswith("bob-"), name)
        self.assertEqual(len(os.listdir(os.path.join(moved, name, "new"))), 3)


class QueueIdTests(AdminTestCase):
    queueMessage = base.QueueTests.queueMessage

    def test_caseInsensitive(self) -> None:
        """The docs show lower case, 'queue list' upper: both work."""
        entry = self.queueMessage("alice@example.test", ["x@remote.test"])
        self.assertNotEqual(entry, entry.lower())
        self.assertEqual(self.ok("queue", "delete", entry.lower()), "Deleted queued message %s; nobody was notified.\n" % (entry,))
        self.assertEqual(self.ok("queue", "list"), "The queue is empty.\n")

    def test_writtenBackSaysSo(self) -> None:
        """A delivery attempt writing the entry back: not "Deleted"."""
        from mailnet.store import queue

        entry = self.queueMessage("alice@example.test", ["x@remote.test"])
        envelope = os.path.join(self.dataDir, "queue", "env", entry + ".json")
        self.assertTrue(os.path.exists(envelope), os.listdir(os.path.join(self.dataDir, "queue")))
        with open(envelope, "rb") as f:
            saved = f.read()
        real = queue.deleteEntry

        def racing(queueDir, entryId):
            real(queueDir, entryId)
            with open(envelope, "wb") as f:  # the daemon's update lands now
                f.write(saved)

        self.patch(queue, "deleteEntry", racing)
        err = self.fails("queue", "delete", entry)
        self.assertIn("could not be deleted", err)
        self.assertIn("run the command again", err)


class CheckAsDaemonTests(AdminTestCase):
    """
    check passes only what the daemon accepts, and finds aliases that
    cannot work (issue 15 item 12).
    """

    def setUp(self) -> None:
        AdminTestCase.setUp(self)
        self.cert = os.path.join(self.dataDir, "cert.pem")
        self.key = os.path.join(self.dataDir, "key.pem")
        base.generateSelfSigned("mail.example.test", self.cert, self.key, days=365)

    config = base.CheckTests.config
    setUpAccounts = base.CheckTests.setUpAccounts
    check = base.CheckTests.check

    def test_endpointsParsedAsTheDaemonDoes(self) -> None:
        self.setUpAccounts()
        for listen, problem in [
            ("tcp:0:interfce=127.0.0.1", "unknown option 'interfce'"),
            ("tpc:0", "Unknown endpoint type: 'tpc'"),
            ("tcp:port", "no valid port number"),
        ]:
            code, out, err = self.check(self.config(listen=listen))
            self.assertEqual(code, 1, out)
            self.assertIn("error: smtp %s: %s (the daemon would not start)" % (listen, problem), out)
            # And the daemon does stop on it:
            from mailnet.config import loadConfig
            from mailnet.errors import ConfigError
            from mailnet.service import MailService
            from tests.test_service import ThreadedMemoryReactor

            self.assertRaises(ConfigError, MailService, loadConfig(self.config(listen=listen)), ThreadedMemoryReactor())

    def test_aliasProblems(self) -> None:
        self.setUpAccounts()
        store = self.store()
        store.addDomain("old.test")
        store.addUser("carol@old.test", "h")
        os.makedirs(os.path.join(self.dataDir, "mail", "old.test", "carol", "new"))
        store.addAlias("a@example.test", ["b@example.test"])
        store.addAlias("b@example.test", ["a@example.test"])
        store.addAlias("sales@example.test", ["nobody@example.test"])
        store.addAlias("support@example.test", ["carol@old.test"])
        store.removeDomain("old.test")
        code, out, err = self.check(self.config())
        self.assertEqual(code, 1, out)
        self.assertIn("warning: alias loop: a@example.test -> b@example.test -> a@example.test", out)
        self.assertEqual(out.count("alias loop"), 1, out)
        self.assertIn("warning: sales@example.test -> nobody@example.test: there is no such user or alias", out)
        self.assertIn("warning: support@example.test -> carol@old.test: old.test is no longer a local domain", out)
        self.assertIn("would be relayed out", out)
