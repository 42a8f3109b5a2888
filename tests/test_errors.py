# -*- test-case-name: tests.test_errors -*-
"""
Tests for L{mailnet.errors}.
"""
from twisted.trial.unittest import SynchronousTestCase

from mailnet.errors import MailnetError, SMTPReply


class SMTPReplyTests(SynchronousTestCase):
    """
    L{SMTPReply} builds itself without L{MailnetError.__init__} (it is made
    for every command) but must look the same as if it did.
    """

    def test_sameAsMailnetError(self) -> None:
        """
        Its code, text, details, message and arguments are those the generic
        L{MailnetError} construction gives.
        """
        r = SMTPReply(250, "2.1.0 Ok")
        self.assertIsInstance(r, MailnetError)
        self.assertEqual((r.code, r.text), (250, "2.1.0 Ok"))
        self.assertEqual(r.details, {"code": 250, "text": "2.1.0 Ok"})
        self.assertEqual(str(r), "250 2.1.0 Ok")
        self.assertEqual(r.args, ("250 2.1.0 Ok",))

    def test_braces(self) -> None:
        """
        Braces in the text are not a template: they stay as they are.
        """
        r = SMTPReply(550, "5.1.1 <{x}> unknown")
        self.assertEqual(str(r), "550 5.1.1 <{x}> unknown")
