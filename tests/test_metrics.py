# -*- test-case-name: tests.test_metrics -*-
"""
mailnet.metrics: bounded labels and the hooks' bookkeeping (scrapes of a
running server are in tests/test_web.py).
"""

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from mailnet import metrics
from mailnet.errors import LoginBusy


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class RefusalTests(SynchronousTestCase):
    def test_labelsBounded(self) -> None:
        """
        Known enhanced status codes become labels; any other (a remote
        server's text passed on) is "other"; unknown reply codes too.
        """
        cases = [
            ((550, "5.1.1 No such user"), ("550", "5.1.1")),
            ((451, "4.9.123 made up"), ("451", "other")),
            ((599, "5.7.1 x"), ("other", "5.7.1")),
            ((500, "Syntax error"), ("500", "")),
        ]
        for (code, text), labels in cases:
            before = value("mailnet_smtp_refusals_total", code=labels[0], status=labels[1])
            metrics.refusal(code, text)
            self.assertEqual(value("mailnet_smtp_refusals_total", code=labels[0], status=labels[1]), before + 1, text)


class LoginTests(SynchronousTestCase):
    def test_outcomes(self) -> None:
        class IMailbox:
            pass

        for result, outcome in [
            (succeed(("x",)), "success"),
            (fail(UnauthorizedLogin()), "failure"),
            (fail(LoginBusy()), "busy"),
            (fail(OSError()), "error"),
        ]:
            before = value("mailnet_logins_total", protocol="pop3", outcome=outcome)
            result.addBoth(metrics.login, IMailbox)
            result.addErrback(lambda f: None)
            self.assertEqual(value("mailnet_logins_total", protocol="pop3", outcome=outcome), before + 1)


class ConnectionTests(SynchronousTestCase):
    def test_sessions(self) -> None:
        metrics.connectionAdmitted("test")
        self.assertEqual(value("mailnet_sessions", listener="test"), 1)
        metrics.connectionClosed("test", object(), None)
        self.assertEqual(value("mailnet_sessions", listener="test"), 0)
        self.assertIsNone(metrics.tlsVersion(None))
