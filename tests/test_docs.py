# -*- test-case-name: tests.test_docs -*-
"""
Tests that keep the documentation and the deployment files true: every
configuration key is documented, the shipped ini files parse, every
C{mailnet-admin} and C{twistd mailnet} command line shown in the docs is
accepted by the real argument parsers, and the README starts with the two
commands CI runs.
"""

import configparser
import os
import re
import shlex
from typing import Dict, Iterator, List, Tuple

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailnet.config import SCHEMA, Limits, RelaySettings, iterKeys, loadConfig

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(TOP, "docs")
README = os.path.join(TOP, "README.rst")
PRODUCTION_INI = os.path.join(TOP, "etc", "mailnet.production.ini")
SERVICE_UNIT = os.path.join(TOP, "etc", "mailnet.service")

# twistd options that take a value (which may be the word "mailnet").
_TWISTD_VALUE_OPTIONS = {
    "--uid", "-u", "--gid", "-g", "--pidfile", "--logfile", "-l", "--rundir", "-d", "--umask",
    "--prefix", "--chroot", "--reactor", "-r", "--profile", "-p", "--logger", "--syslog-prefix",
}

# Shell syntax that ends a command's arguments.
_SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "2>&1", "&"}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def docPages() -> List[str]:
    return sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".rst"))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def literalBlocks(text: str) -> Iterator[str]:
    """
    The literal blocks of a reStructuredText document: the indented text
    after a paragraph ending in C{::}, or in a C{code-block} directive.
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opens = stripped.endswith("::") or re.match(r"\.\. (code-block|code|sourcecode)::", stripped)
        if not opens or stripped.startswith(".. ") and not re.match(r"\.\. (code-block|code|sourcecode)::", stripped):
            i += 1
            continue
        base = _indent(line)
        i += 1
        # Directive options (":linenos:") and blank lines before the content.
        while i < len(lines) and (not lines[i].strip() or re.match(r"\s+:\w[\w-]*:", lines[i])):
            i += 1
        block = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            block.append(lines[i])
            i += 1
        if block:
            depth = min(_indent(b) for b in block if b.strip())
            yield "\n".join(b[depth:] for b in block).strip("\n")


def commandLines(block: str) -> Iterator[str]:
    """The lines of a shell block, with backslash continuations joined."""
    pending = ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def invocations(program: str) -> Iterator[Tuple[str, List[str]]]:
    """
    Every command line in a literal block of the docs or the README that
    runs C{program} (by any path: C{/opt/mailnet/bin/mailnet-admin} too).

    @return: pairs of (the line as shown, the arguments after the program).
    """
    for path in docPages() + [README]:
        for block in literalBlocks(_read(path)):
            for line in commandLines(block):
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:
                    continue
                start = 0
                while start < len(words):
                    found = [n for n in range(start, len(words)) if os.path.basename(words[n]) == program]
                    if not found:
                        break
                    begin = found[0] + 1
                    end = begin
                    while end < len(words) and words[end] not in _SHELL_OPERATORS:
                        end += 1
                    yield "%s: %s" % (os.path.basename(path), line.strip()), words[begin:end]
                    start = end


def documentedKeys() -> Dict[str, Dict[str, str]]:
    """
    The keys configuration.rst documents: section -> key -> the text of its
    description.  Sections are titles like C{``[server]``}; keys are
    definition-list terms like C{``hostname``}.
    """
    lines = _read(os.path.join(DOCS, "configuration.rst")).splitlines()
    result: Dict[str, Dict[str, str]] = {}
    section = None
    key = None
    for number, line in enumerate(lines):
        underline = lines[number + 1] if number + 1 < len(lines) else ""
        title = re.fullmatch(r"``\[(\w+)\]``", line)
        if title and underline and set(underline) == {"-"}:
            section = title.group(1)
            result[section] = {}
            key = None
            continue
        if re.fullmatch(r"\S.*", line) and key is not None and not line.startswith("``"):
            key = None
        term = re.fullmatch(r"``(\w+)``", line)
        if term and section is not None and not (underline and set(underline) == {"-"}):
            key = term.group(1)
            result[section][key] = ""
        elif key is not None and section is not None:
            result[section][key] += line.strip() + " "
    return result


class ConfigurationReferenceTests(SynchronousTestCase):
    """
    docs/configuration.rst documents every key mailnet accepts, and only
    those, with the real defaults.
    """

    def test_everyKeyDocumented(self) -> None:
        documented = documentedKeys()
        missing = [
            "[%s] %s" % (section, key) for section, key in iterKeys() if key not in documented.get(section, {})
        ]
        self.assertEqual(missing, [], "keys missing from docs/configuration.rst")

    def test_noStaleKeys(self) -> None:
        """A key removed from the code is removed from the docs too."""
        known = set(iterKeys())
        stale = [
            "[%s] %s" % (section, key)
            for section, keys in documentedKeys().items()
            if section != "routes"
            for key in keys
            if (section, key) not in known
        ]
        self.assertEqual(stale, [])
        self.assertIn("routes", documentedKeys(), "[routes] is not documented")

    def test_defaultsMatch(self) -> None:
        """
        Each documented C{Default: ``value``} of [limits] and [relay] is the
        real default, read with the same parser as the ini file.
        """
        documented = documentedKeys()
        defaults = {"limits": Limits(), "relay": RelaySettings()}
        checked = 0
        for section, value in defaults.items():
            for key, parse in SCHEMA[section].items():
                match = re.search(r"Default: ``([^`]*)``", documented[section][key])
                if match is None:
                    continue
                self.assertEqual(parse(match.group(1)), getattr(value, key), "[%s] %s" % (section, key))
                checked += 1
        self.assertGreater(checked, 15)

    def test_keyParserSeesSections(self) -> None:
        """The reader of configuration.rst finds what it should (so the tests above can fail)."""
        documented = documentedKeys()
        self.assertIn("hostname", documented["server"])
        self.assertIn("Default:", documented["limits"]["max_recipients"])
        self.assertNotIn("hostname", documented["limits"])


class DeploymentFilesTests(SynchronousTestCase):
    """
    The files in etc/ for a real host.
    """

    def test_productionIniParses(self) -> None:
        config = loadConfig(PRODUCTION_INI)
        self.assertEqual(config.data_dir, "/var/lib/mailnet")
        self.assertEqual(
            dict(config.listen),
            {"smtp": ("tcp:25",), "submission": ("tcp:587",), "smtps": ("tcp:465",), "pop3": ("tcp:110",), "pop3s": ("tcp:995",),
             "imap": ("tcp:143",), "imaps": ("tcp:993",),
             "http": ("tcp:2880:interface=127.0.0.1",)},
        )
        self.assertEqual(config.tls_cert, "/etc/letsencrypt/live/mail.example.com/fullchain.pem")
        self.assertEqual(config.tls_key, "/etc/letsencrypt/live/mail.example.com/privkey.pem")
        self.assertFalse(config.allow_plaintext_auth)

    def test_serviceUnit(self) -> None:
        """The systemd unit runs twistd unprivileged, sandboxed, with SIGHUP for reloads."""
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(_read(SERVICE_UNIT))
        service = unit["Service"]
        self.assertEqual(
            service["ExecStart"], "/opt/mailnet/bin/twistd -n --pidfile= mailnet --config /etc/mailnet/mailnet.ini"
        )
        expected = {
            "Type": "simple",
            "User": "mailnet",
            "Group": "mailnet",
            "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "ReadWritePaths": "/var/lib/mailnet",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "Restart": "on-failure",
        }
        self.assertEqual({k: service.get(k) for k in expected}, expected)
        self.assertEqual(unit["Install"]["WantedBy"], "multi-user.target")

    def test_serviceArgumentsParse(self) -> None:
        """The unit's C{mailnet --config ...} is accepted by the plugin's options."""
        from mailnet.tap import Options

        execStart = _read(SERVICE_UNIT).split("\nExecStart=", 1)[1].splitlines()[0]
        words = shlex.split(execStart)
        arguments = words[words.index("mailnet") + 1 :]
        self.assertEqual(arguments, ["--config", "/etc/mailnet/mailnet.ini"])
        options = Options()
        options.parseOptions(["--config", PRODUCTION_INI])
        self.assertEqual(options.mailnetConfig.hostname, "mail.example.com")


class CommandLinesInDocsTests(SynchronousTestCase):
    """
    Every command line the docs show in a literal block is accepted by the
    program's real argument parser, so the docs cannot drift from the code.
    """

    def test_adminCommands(self) -> None:
        from mailnet.cli.admin import buildParser

        seen = set()
        for where, arguments in invocations("mailnet-admin"):
            parser = buildParser()
            try:
                with _quiet():
                    namespace = parser.parse_args(arguments)
            except SystemExit:
                self.fail("mailnet-admin rejects %s" % (where,))
            seen.add(" ".join(filter(None, [namespace.command, getattr(namespace, "action", None)])))
        # The docs show every command at least once.
        expected = {
            "domain add", "domain del", "domain list",
            "user add", "user passwd", "user del", "user list",
            "alias add", "alias del", "alias list",
            "queue list", "queue flush", "queue delete",
            "check",
        }
        self.assertEqual(expected - seen, set())

    def test_clientCommands(self) -> None:
        from mailnet.cli.main import makeParser
        from mailnet.errors import ClientError

        seen = set()
        for where, arguments in invocations("mailnet-cli"):
            if arguments == ["--help"]:
                continue
            try:
                with _quiet():
                    namespace = makeParser().parse_args(arguments)
            except (SystemExit, ClientError) as e:
                self.fail("mailnet-cli rejects %s: %s" % (where, e))
            seen.add(namespace.command)
        self.assertEqual({"send", "list", "read", "save", "delete", "fetch",
                          "folders", "folder", "move", "copy", "flag", "search", "watch"} - seen, set())

    def test_daemonCommands(self) -> None:
        """
        The plugin options of every C{twistd ... mailnet ...} line parse (a
        C{--config} file that exists only on a server is replaced by
        etc/mailnet.production.ini).
        """
        from mailnet.tap import Options

        count = 0
        for where, arguments in invocations("twistd"):
            # The plugin name, not the value of --uid mailnet and the like.
            starts = [
                n for n, word in enumerate(arguments)
                if word == "mailnet" and (n == 0 or arguments[n - 1] not in _TWISTD_VALUE_OPTIONS)
            ]
            if not starts:
                continue
            pluginArguments = arguments[starts[0] + 1 :]
            for n, word in enumerate(pluginArguments[:-1]):
                if word in ("--config", "-c") and not os.path.exists(pluginArguments[n + 1]):
                    pluginArguments[n + 1] = PRODUCTION_INI
            try:
                Options().parseOptions(pluginArguments)
            except usage.UsageError as e:
                self.fail("twistd mailnet rejects %s: %s" % (where, e))
            count += 1
        self.assertGreater(count, 2)

    def test_rejectsWrongCommands(self) -> None:
        """The check above can fail: a misspelt command is refused."""
        from mailnet.cli.admin import buildParser

        with _quiet():
            self.assertRaises(SystemExit, buildParser().parse_args, ["user", "create", "a@b.test"])


class _quiet:
    """Swallow what argparse prints while a docs line is parsed."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._stack.enter_context(contextlib.redirect_stderr(io.StringIO()))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class TablesTests(SynchronousTestCase):
    """
    Tables in the docs that restate constants of the code.
    """

    def test_clientExitStatuses(self) -> None:
        """The user guide's exit status table has exactly mailnet-cli's statuses."""
        from mailnet.cli import main

        text = _read(os.path.join(DOCS, "user-guide.rst")).split("Exit status\n", 1)[1]
        documented = {int(m) for m in re.findall(r"^(\d+)  +\S", text, re.MULTILINE)}
        actual = {value for name, value in vars(main).items() if name.startswith("EXIT_") and isinstance(value, int)}
        self.assertEqual(documented, actual)
        # Every status the error table can produce is documented.
        self.assertLessEqual({code for _, code in main.EXIT_CODES}, documented)

    def test_defaultPorts(self) -> None:
        """The admin guide's table of default listener ports is the embedded default."""
        from mailnet.config import DEFAULT_LISTEN

        text = _read(os.path.join(DOCS, "admin-guide.rst"))
        documented = dict(re.findall(r"^``(\w+)``\s+(\d+)\s", text, re.MULTILINE))
        expected = {name: description.split(":")[1] for name, description in DEFAULT_LISTEN.items()}
        self.assertEqual(documented, expected)


class PathsTests(SynchronousTestCase):
    """
    Files of the source tree the docs name (C{``mailnet/cred.py``},
    C{``tests/test_e2e.py``}, C{``etc/mailnet.service``} ...) exist.
    """

    def test_namedFilesExist(self) -> None:
        pattern = re.compile(r"``((?:mailnet|tests|etc|benchmarks|twisted|docs)/[A-Za-z0-9_./-]*)``")
        named = set()
        for path in docPages() + [README]:
            named.update(pattern.findall(_read(path)))
        self.assertIn("etc/mailnet.service", named)
        missing = sorted(p for p in named if not os.path.exists(os.path.join(TOP, p)))
        self.assertEqual(missing, [])


class PythonExamplesTests(SynchronousTestCase):
    """
    The Python examples in the docs run.
    """

    def test_testingExample(self) -> None:
        import contextlib
        import io

        examples = [b for b in literalBlocks(_read(os.path.join(DOCS, "testing.rst"))) if "from mailnet" in b]
        self.assertEqual(len(examples), 1)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(examples[0], "docs/testing.rst", "exec"), {})  # noqa: S102 - the example itself
        self.assertIn("220 mx.example.test ESMTP mailnet", output.getvalue())
        self.assertIn("PIPELINING", output.getvalue())


class ReadmeTests(SynchronousTestCase):
    """
    The README opens with the two commands people (and CI) copy.
    """

    def test_firstTwoCommands(self) -> None:
        blocks = list(literalBlocks(_read(README)))
        self.assertEqual(
            blocks[:2],
            [
                "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/twistd -n mailnet",
                (
                    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
                    ".venv/bin/python -b -m twisted.trial tests"
                ),
            ],
        )

    def test_ciRunsTheReadmeCommand(self) -> None:
        """.ci/run runs exactly the README's test command."""
        ci = _read(os.path.join(TOP, ".ci", "run"))
        self.assertIn(list(literalBlocks(_read(README)))[1], ci)


class LiteralBlockReaderTests(SynchronousTestCase):
    """
    The reStructuredText reading above, on known input.
    """

    def test_blocks(self) -> None:
        text = "Intro::\n\n    one\n      two\n\nText.\n\n.. code-block:: console\n   :caption: x\n\n   three\n"
        self.assertEqual(list(literalBlocks(text)), ["one\n  two", "three"])

    def test_notADirective(self) -> None:
        text = ".. toctree::\n   :maxdepth: 2\n\n   user-guide\n"
        self.assertEqual(list(literalBlocks(text)), [])

    def test_continuations(self) -> None:
        self.assertEqual(list(commandLines("a \\\n  b\nc")), ["a    b", "c"])
