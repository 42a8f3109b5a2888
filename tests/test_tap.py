# -*- test-case-name: tests.test_tap -*-
"""
Tests for the twistd plugin and L{mailnet.tap}.
"""

import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailnet.tap import Options


# Run twistd on this checkout's mailnet, not whatever is installed.
ENVIRON = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PluginTests(SynchronousTestCase):
    def test_pluginFound(self) -> None:
        """C{twistd} finds the plugin after C{pip install -e .}."""
        from twisted import plugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, plugins)}
        self.assertIn("mailnet", makers)
        self.assertIs(makers["mailnet"].options, Options)

    def test_twistdHelp(self) -> None:
        """C{twistd mailnet --help} explains the options."""
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "mailnet", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ["--data-dir", "--smtp=", "--no-pop3s", "--tls-cert", "--domain"]:
            self.assertIn(option, result.stdout)


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        config = self.parse().mailnetConfig
        self.assertEqual(config.listen["smtp"], ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(config.data_dir, "./mailnet-data")

    def test_repeatableListeners(self) -> None:
        config = self.parse("--smtp", "tcp:25", "--smtp", "tcp6:25", "--no-pop3s", "--domain", "A.test", "--domain", "b.test").mailnetConfig
        self.assertEqual(config.listen["smtp"], ("tcp:25", "tcp6:25"))
        self.assertEqual(config.listen["pop3s"], ())
        self.assertEqual(config.domains, ("a.test", "b.test"))

    def test_commandLineOverridesIni(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\ndata_dir = /from/ini\nhostname = ini.test\n[listen]\nsmtp = tcp:1\n")
        config = self.parse("--config", path, "--data-dir", "/from/cli").mailnetConfig
        self.assertEqual(config.data_dir, "/from/cli")
        self.assertEqual(config.hostname, "ini.test")
        self.assertEqual(config.listen["smtp"], ("tcp:1",))

    def test_badIniIsOneLine(self) -> None:
        """
        A bad ini file: one line, "mailnet: error: FILE:LINE: ...", and exit
        status 1; not twistd's page of usage first (issue 15 item 13).
        """
        import io

        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[limits]\nmax_recipients = many\n")
        stderr = io.StringIO()
        self.patch(Options, "stderr", stderr)
        error = self.assertRaises(SystemExit, self.parse, "--config", path)
        self.assertEqual(error.code, 1)
        self.assertEqual(len(stderr.getvalue().splitlines()), 1)
        self.assertTrue(stderr.getvalue().startswith("mailnet: error: %s:2: " % (path,)), stderr.getvalue())

    def test_twistdConfigErrorFirst(self) -> None:
        """The same through twistd itself: no usage text at all."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nhostnme = x\n")
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "mailnet", "--config", path], capture_output=True, text=True, timeout=60,
            env=ENVIRON,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.splitlines(), ["mailnet: error: %s:2: unknown key 'hostnme' in [server]; "
                                                      "known keys: hostname, domain, data_dir, log_json, workers" % (path,)])

    def test_version(self) -> None:
        """twistd mailnet --version (issue 15 item 9)."""
        from mailnet import __version__

        result = subprocess.run([sys.executable, "-m", "twisted", "mailnet", "--version"], capture_output=True, text=True,
                                timeout=60, env=ENVIRON)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("mailnet %s (Twisted " % (__version__,)), result.stdout)

    def test_conflicts(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--smtp", "tcp:25", "--no-smtp")
        self.assertRaises(usage.UsageError, self.parse, "--tls-cert", "c.pem")
        self.assertRaises(usage.UsageError, self.parse, "--domain", "not a domain")
