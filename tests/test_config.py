# -*- test-case-name: tests.test_config -*-
"""
Tests for L{mailnet.config}.
"""

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import DEFAULT_LISTEN, SCHEMA, Limits, buildConfig, hostPort, iterKeys, loadConfig, readIni
from mailnet.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "mailnet.ini")


class IniTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """With no file the embedded defaults apply: loopback listeners, ./mailnet-data."""
        config = loadConfig(None)
        self.assertEqual(config.data_dir, "./mailnet-data")
        self.assertEqual(config.listen["smtp"], ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(config.limits, Limits())
        self.assertFalse(config.allow_plaintext_auth)
        self.assertTrue(config.hostname)

    def test_values(self) -> None:
        path = self.write(
            "[server]\nhostname = mx.a.test\ndomain = A.test, b.test ; two\n"
            "[limits]\nmax_message_size = 10M\nmax_recipients = 5\n"
            "[tls]\nallow_plaintext_auth = yes\n"
            "[listen]\nsmtp = tcp:25, tcp6:25\npop3s =\n"
            "[routes]\nb.test = 127.0.0.1:2526\n"
        )
        config = loadConfig(path)
        self.assertEqual(config.hostname, "mx.a.test")
        self.assertEqual(config.domains, ("a.test", "b.test"))
        self.assertEqual(config.limits.max_message_size, 10 * 1024 * 1024)
        self.assertEqual(config.limits.max_recipients, 5)
        self.assertTrue(config.allow_plaintext_auth)
        self.assertEqual(config.listen["smtp"], ("tcp:25", "tcp6:25"))
        self.assertEqual(config.listen["pop3s"], ())
        self.assertEqual(config.listen["pop3"], (DEFAULT_LISTEN["pop3"],))
        self.assertEqual(config.relay.routes, {"b.test": ("127.0.0.1", 2526)})

    def test_overridesWin(self) -> None:
        path = self.write("[server]\ndata_dir = /srv/mail\nhostname = a\n")
        config = loadConfig(path, {"server.data_dir": "/tmp/x", "server.hostname": None})
        self.assertEqual(config.data_dir, "/tmp/x")
        self.assertEqual(config.hostname, "a")

    def assertConfigError(self, text: str, *fragments: str) -> str:
        path = self.write(text)
        error = self.assertRaises(ConfigError, loadConfig, path)
        message = str(error)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_unknownSection(self) -> None:
        self.assertConfigError("[server]\nhostname = a\n\n[sever]\nx = 1\n", ":4:", "[sever]")

    def test_unknownKey(self) -> None:
        self.assertConfigError("[limits]\nmax_recipients = 3\nmax_recipient = 4\n", ":3:", "max_recipient")

    def test_badValue(self) -> None:
        self.assertConfigError("[limits]\n\nmax_recipients = lots\n", ":3:", "max_recipients", "lots")

    def test_badBool(self) -> None:
        self.assertConfigError("[tls]\nallow_plaintext_auth = maybe\n", ":2:", "allow_plaintext_auth")

    def test_badDomain(self) -> None:
        self.assertConfigError("[server]\ndomain = exa mple.test\n", ":2:", "domain")

    def test_badRoute(self) -> None:
        self.assertConfigError("[routes]\nb.test = host:99999\n", ":2:", "b.test")

    def test_duplicateKey(self) -> None:
        self.assertConfigError("[limits]\nmax_recipients = 3\nmax_recipients = 4\n", "max_recipients")

    def test_notIni(self) -> None:
        self.assertConfigError("this is not an ini file\n", "section")

    def test_missingFile(self) -> None:
        self.assertRaises(ConfigError, loadConfig, self.mktemp())

    def test_noParserInternals(self) -> None:
        """Words a person can act on, not configparser's or int()'s (issue 15 item 11)."""
        message = self.assertConfigError("this is not an ini file\n", ":1:", "before any [section] header")
        self.assertNotIn("File contains", message)
        message = self.assertConfigError("[limits]\nidle_timeout = 5m\n", ":2:", "expected a whole number above 0")
        self.assertNotIn("invalid literal", message)
        message = self.assertConfigError("[limits]\nauth_failure_delay = 2s\n", ":2:", "expected a number of 0 or more")
        self.assertNotIn("could not convert", message)
        self.assertConfigError("[limits]\nmax_recipients = 3\nmax_recipients = 4\n", ":3:", "a second time")
        self.assertConfigError("[limits]\n[limits]\n", ":2:", "a second time")

    def test_certWithoutKey(self) -> None:
        self.assertRaises(ConfigError, buildConfig, {"tls.cert": "c.pem"})

    def test_hostPort(self) -> None:
        self.assertEqual(hostPort("mx.b.test"), ("mx.b.test", 25))
        self.assertEqual(hostPort("[::1]:2526"), ("::1", 2526))
        self.assertRaises(ValueError, hostPort, "a:b:c")
        self.assertRaises(ValueError, hostPort, "a:0")


class ExampleFileTests(SynchronousTestCase):
    """
    C{etc/mailnet.ini} documents every key, and nothing else.
    """

    def test_exampleParses(self) -> None:
        config = loadConfig(EXAMPLE)
        self.assertEqual(config.limits, Limits())
        self.assertEqual(config.listen["smtp"], (DEFAULT_LISTEN["smtp"],))

    def test_everyKeyDocumented(self) -> None:
        with open(EXAMPLE, encoding="utf-8") as f:
            text = f.read()
        sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
        for section, key in iterKeys():
            self.assertRegex(sections.get(section, ""), r"(?m)^%s =" % (key,), "%s.%s missing" % (section, key))
        self.assertIn("routes", sections)

    def test_noUndocumentedKeys(self) -> None:
        settings = readIni(EXAMPLE)
        known = {"%s.%s" % sk for sk in iterKeys()} | {"routes"}
        self.assertEqual(set(settings) - known, set())
        self.assertEqual(set(SCHEMA), {"server", "listen", "tls", "limits", "relay", "dkim", "dns", "auth"})
