# -*- test-case-name: tests.test_cli -*-
"""
mailnet-cli: send and read mail from the command line.

    mailnet-cli [--account NAME] [--host H] [--smtp-port N] [--pop3-port N]
                [--user U] [--tls starttls|implicit|none] [--cafile PEM]
                [--insecure] [--allow-plaintext] [--debug] COMMAND ...

Commands: send, list, read, save, delete, fetch (see C{--help}).  Each runs
through L{twisted.internet.task.react}; the protocol work is in
L{mailnet.client.smtp} and L{mailnet.client.pop3}.

Every expected failure is one line on stderr, C{mailnet-cli: error: ...},
and an exit status from L{EXIT_CODES}.
"""

import argparse
import datetime
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import traceback
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
)

import attr
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mailnet.cli import _imapcommands
from mailnet.cli._common import isTerminal, silenceClosedPipe
from mailnet.cli._clientconfig import (
    Connection,
    NoPassword,
    NoUser,
    PasswordCommandFailed,
    configPath,
    getPassword,
    loadAccount,
    resolve,
)
from mailnet.client.pop3 import POP3Session
from mailnet.client.smtp import RecipientResult, SendResult, humanSize, sendMessage, wireData
from mailnet.errors import (
    AuthenticationFailed,
    BadAddress,
    ClientError,
    ConfigError,
    ConnectFailed,
    MessageTooLarge,
    NoSuchMessage,
    PlaintextRefused,
    RecipientsRefused,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
)
from mailnet.message import (
    AttachmentFile,
    composeMessage,
    decodeMessage,
    envelopeRecipients,
    envelopeSenderOf,
    mboxEntry,
    messageBytes,
    safeFilename,
    summarize,
    toUnixNewlines,
)

PROG = "mailnet-cli"

# --- exit statuses: the one table ----------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: a server error, a local file problem
EXIT_USAGE = 2  # bad options, configuration or addresses
EXIT_CONNECTION = 3  # refused, name not found, timeout
EXIT_TLS = 4  # TLS verification or negotiation failed; no TLS offered
EXIT_AUTH = 5  # login refused, no password
EXIT_RECIPIENT = 6  # a recipient refused (some or all)
EXIT_TOO_LARGE = 7  # the server refused the message's size
EXIT_NO_MESSAGE = 8  # no such message number
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_PIPE = 141  # the reader of our output went away (128 + SIGPIPE, as git)


class UsageError(ClientError):
    """{problem}"""


class LocalFileError(ClientError):
    """{path}: {reason}"""


class PartialDelivery(ClientError):
    """{refused} of {total} recipients refused; the others accepted the message"""


class EmptyMessage(ClientError):
    """the message body is empty; nothing sent"""


# First match wins: subclasses before their bases.
EXIT_CODES: Tuple[Tuple[Type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (NoUser, EXIT_USAGE),
    (NoPassword, EXIT_AUTH),
    (PasswordCommandFailed, EXIT_AUTH),
    (ConfigError, EXIT_USAGE),
    (BadAddress, EXIT_USAGE),
    (ConnectFailed, EXIT_CONNECTION),
    (ServerTimeout, EXIT_CONNECTION),
    (TLSFailed, EXIT_TLS),
    (TLSUnavailable, EXIT_TLS),
    (PlaintextRefused, EXIT_TLS),
    (AuthenticationFailed, EXIT_AUTH),
    (RecipientsRefused, EXIT_RECIPIENT),
    (PartialDelivery, EXIT_RECIPIENT),
    (MessageTooLarge, EXIT_TOO_LARGE),
    (NoSuchMessage, EXIT_NO_MESSAGE),
    (ClientError, EXIT_ERROR),
)


def exitCodeFor(error: BaseException) -> Optional[int]:
    """@return: the exit status of an expected error, or L{None}."""
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return None


# --- output --------------------------------------------------------------


@attr.s(auto_attribs=True)
class Streams:
    """The streams and environment of one run (injectable for tests)."""

    stdin: IO[str]
    stdout: IO[str]
    stderr: IO[str]
    environ: Mapping[str, str]

    def out(self, text: str = "") -> None:
        _write(self.stdout, text + "\n")

    def err(self, text: str) -> None:
        _write(self.stderr, text + "\n")

    def outBytes(self, data: bytes) -> None:
        buffer = getattr(self.stdout, "buffer", None)
        if buffer is not None:
            self.stdout.flush()
            # A short write (the reader went away after taking part of it)
            # is not an error to BufferedWriter; the next write is.
            view = memoryview(data)
            while view:
                written = buffer.write(view)
                view = view[written if written else len(view) :]
            buffer.flush()
        else:
            _write(self.stdout, data.decode("utf-8", "replace"))


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """
    Text from the network made safe for a terminal: control characters
    (an escape sequence in a server's reply, say) are shown as C{\\xNN},
    never sent to the terminal to act on.
    """
    return _CONTROL.sub(lambda m: "\\x%02x" % (ord(m.group()),), text)


def _write(stream: IO[str], text: str) -> None:
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding))
    stream.flush()


# --- options -------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, and prints help to our stdout."""

    stdout: Optional[IO[str]] = None

    def error(self, message: str) -> Any:
        raise UsageError(problem=message + " (see %s --help)" % (PROG,))

    def _print_message(self, message: str, file: Any = None) -> None:
        if message and self.stdout is not None:
            _write(self.stdout, message)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % (text,))
    if value < 1:
        raise argparse.ArgumentTypeError("%r must be 1 or more" % (text,))
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("%r is not a port number" % (text,))
    return value


DESCRIPTION = "Send and read mail on a mailnet (or any SMTP submission + POP3) server."

EPILOG = """\
examples:
  mailnet-cli --account work send --to bob@example.org --subject Lunch --body 'At noon?'
  mailnet-cli --host localhost --smtp-port 2587 --pop3-port 2110 --user alice@example.test \\
              --cafile mailnet-data/tls/selfsigned.pem list
  mailnet-cli list --json --page 2
  mailnet-cli read 3
  mailnet-cli fetch --to-maildir ~/Mail/inbox
  mailnet-cli COMMAND --help          (the options of one command)

The password comes from $MAILNET_PASSWORD, the account's password_command,
or a prompt; defaults come from ~/.config/mailnet/config.ini (see the user
guide).  Exit status: 0 ok, 1 other error, 2 usage, 3 connection, 4 TLS,
5 authentication, 6 recipient refused, 7 message too large, 8 no such
message, 130 interrupted, 141 output pipe closed."""

#: One line each, for the help and for bare C{mailnet-cli}.
COMMANDS = {
    "send": "send a message",
    "list": "list messages, newest first",
    "read": "show a message",
    "save": "save a message's attachments",
    "delete": "delete messages",
    "fetch": "download messages into a Maildir or an mbox file",
}
COMMANDS.update(_imapcommands.COMMANDS)


def _command(commands: Any, name: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=COMMANDS[name],
        description=description,
        epilog="examples:\n" + "\n".join("  mailnet-cli " + e for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def addConnectionOptions(parser: argparse.ArgumentParser) -> None:
    """
    The options that say where and how to connect, shared by every command
    (one group, so that more protocols' options join it).
    """
    group = parser.add_argument_group("connection options (override the account's settings)")
    group.add_argument("--account", metavar="NAME", help="use this account (section) of the config file")
    group.add_argument("--host", metavar="H", help="server host name (default: the account's, else localhost)")
    group.add_argument("--smtp-port", type=_port, metavar="N", help="submission port (default 587, or 465 with --tls implicit)")
    group.add_argument("--pop3-port", type=_port, metavar="N", help="POP3 port (default 110, or 995 with --tls implicit)")
    group.add_argument("--imap-port", type=_port, metavar="N", help="IMAP port (default 143, or 993 with --tls implicit)")
    group.add_argument("--protocol", choices=("imap", "pop3"),
                       help="how to read mail (default: the account's protocol, else imap with --imap-port, else pop3)")
    group.add_argument("--user", metavar="U", help="login name (for mailnet, your full address)")
    group.add_argument(
        "--tls",
        choices=("starttls", "implicit", "none"),
        help="starttls (default): plain connection, then STARTTLS/STLS; implicit: TLS from the first byte; none: no TLS",
    )
    group.add_argument("--cafile", metavar="PEM", help="trust the CA certificates in this file instead of the system's")
    group.add_argument("--insecure", action="store_true", help="do not verify the server certificate (warns every time)")
    group.add_argument("--allow-plaintext", action="store_true", help="allow sending the password without TLS (with --tls none)")


def makeParser(stdout: Optional[IO[str]] = None) -> argparse.ArgumentParser:
    from mailnet import __version__

    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _Parser.stdout = stdout
    parser.add_argument("--version", action="version", version="%s %s" % (PROG, __version__))
    addConnectionOptions(parser)
    parser.add_argument("--debug", action="store_true", help="print the protocol transcript (passwords masked) on stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, title="commands")

    send = _command(
        commands,
        "send",
        "Send a message.  Addresses are bob@example.org or 'Bob <bob@example.org>'; each of --to, --cc "
        "and --bcc may be repeated or take several addresses separated by commas.  The body is --body, "
        "else --body-file, else standard input, else your $EDITOR.",
        ["send --to bob@example.org --subject 'Lunch?' --body 'At noon?'",
         "send --to bob@example.org --cc carol@example.org --subject Report --body-file r.txt --attach r.pdf",
         "send --from 'Sales <sales@example.com>' --to client@example.org --subject Offer < offer.txt"],
    )
    send.add_argument("--to", action="append", default=[], metavar="ADDR", help="a recipient, in To: (repeatable)")
    send.add_argument("--cc", action="append", default=[], metavar="ADDR", help="a recipient, in Cc: (repeatable)")
    send.add_argument("--bcc", action="append", default=[], metavar="ADDR",
                      help="a hidden recipient: in the envelope only, in no header (repeatable)")
    send.add_argument("--from", dest="sender", metavar="ADDR",
                      help="the From: address, e.g. an alias of yours (default: the account's from, else --user)")
    send.add_argument("--subject", required=True, metavar="S", help="the subject line")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the text of the message")
    body.add_argument("--body-file", metavar="F", help="read the text from this file (UTF-8)")
    send.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach this file (repeatable)")

    listing = _command(
        commands,
        "list",
        "List the messages in your mailbox, newest first: number, sender, subject, date and size.",
        ["list", "list --limit 50 --page 2", "list --json"],
    )
    listing.add_argument("--limit", type=_positive, default=20, metavar="N", help="messages per page (default 20)")
    listing.add_argument("--page", type=_positive, default=1, metavar="N", help="page number, 1 = newest (default 1)")
    listing.add_argument("--json", action="store_true",
                         help="print JSON: total, page, pages, limit, next_page and the messages")

    read = _command(
        commands,
        "read",
        "Show message N (a number from 'list'): its main headers, its text, and its attachments.",
        ["read 3", "read 3 --raw > message.eml", "read 3 --json"],
    )
    read.add_argument("number", type=_positive, metavar="N", help="the message number, from 'list'")
    readFormat = read.add_mutually_exclusive_group()
    readFormat.add_argument("--json", action="store_true", help="print JSON: headers, text, attachments")
    readFormat.add_argument("--raw", action="store_true", help="print the message exactly as stored")

    save = _command(
        commands,
        "save",
        "Save the attachments of message N into a directory (created if needed).  Files are only ever "
        "created directly inside it, never overwritten: a name already there gets a numbered variant.",
        ["save 3 --attachments ~/Downloads"],
    )
    save.add_argument("number", type=_positive, metavar="N", help="the message number, from 'list'")
    save.add_argument("--attachments", required=True, metavar="DIR", help="the directory to save into")

    delete = _command(
        commands,
        "delete",
        "Delete messages.  Every number is checked first; the deletion takes effect when the session "
        "ends normally.",
        ["delete 3", "delete 3 4 7"],
    )
    delete.add_argument("numbers", type=_positive, nargs="+", metavar="N", help="message numbers, from 'list'")

    fetch = _command(
        commands,
        "fetch",
        "Download messages into a local Maildir or mbox file.  fetch remembers what it saved (by UIDL, "
        "per login and server) and saves only new messages the next time.",
        ["fetch --to-maildir ~/Mail/inbox", "fetch --to-mbox ~/archive.mbox --delete", "fetch --to-mbox ~/all.mbox --all"],
    )
    target = fetch.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-maildir", metavar="DIR", help="deliver into this Maildir (created if needed)")
    target.add_argument("--to-mbox", metavar="FILE", help="append to this mbox file")
    fetch.add_argument("--delete", action="store_true", help="delete from the server what this run saved durably")
    fetch.add_argument("--all", action="store_true", help="fetch again what an earlier fetch saved")
    _imapcommands.extendParser(commands, {"send": send, "list": listing, "read": read, "save": save, "delete": delete, "fetch": fetch})
    return parser


def commandList() -> str:
    """What bare C{mailnet-cli} prints, as bare C{git} does."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: %s [connection options] COMMAND [options]" % (PROG,), "", "commands:"]
    lines += ["  %-*s  %s" % (width, name, text) for name, text in COMMANDS.items()]
    lines += ["", "'%s --help' shows every option and examples; '%s COMMAND --help' one command's." % (PROG, PROG)]
    return "\n".join(lines) + "\n"


# --- one run -------------------------------------------------------------


@attr.s(auto_attribs=True)
class Invocation:
    """
    A parsed command line, ready to run against a reactor.

    @ivar run: runs blocking work (file writes with fsync) off the reactor
        thread; takes C{(reactor, f, *args)}, returns a Deferred.
    """

    options: argparse.Namespace
    connection: Connection
    password: str
    io: Streams
    prepared: Dict[str, Any] = attr.ib(factory=dict)
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc).astimezone()
    run: Optional[Callable[..., defer.Deferred]] = None

    def transcript(self, who: str, line: str) -> None:
        self.io.err("%s: %s" % (who, shown(line)))

    #: Set when the reactor shuts down (Ctrl-C) before the command ends:
    #: what fails after that is a consequence, not news.
    interrupted: bool = False

    def execute(self, reactor: Any) -> defer.Deferred:
        """@return: Deferred firing with the exit status."""
        commands = {
            "send": self.do_send,
            "list": self.do_list,
            "read": self.do_read,
            "save": self.do_save,
            "delete": self.do_delete,
            "fetch": self.do_fetch,
        }
        try:
            overIMAP = _imapcommands.wanted(self.options, self.connection.protocol)
        except ClientError as e:
            return defer.succeed(self._failed(Failure(e)))
        if overIMAP:
            d = defer.ensureDeferred(_imapcommands.execute(self, reactor))
        else:
            d = defer.ensureDeferred(commands[self.options.command](reactor))
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Any) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return report(failure.value, self.io, self.options.debug, failure)

    def _inThread(self, reactor: Any, f: Callable, *args: Any) -> defer.Deferred:
        if self.run is not None:
            return self.run(reactor, f, *args)
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def _debug(self) -> Optional[Callable[[str, str], None]]:
        return self.transcript if self.options.debug else None

    # -- send --------------------------------------------------------------

    async def do_send(self, reactor: Any) -> int:
        recipients = self.prepared["recipients"]
        data = self.prepared["message"]
        progress = Progress(self.io.stderr, len(wireData(data)), "sending")
        try:
            result: SendResult = await sendMessage(
                reactor,
                self.connection.smtp,
                (self.connection.user, self.password),
                self.prepared["envelopeSender"],
                recipients,
                data,
                transcript=self._debug(),
                progress=progress.update,
            )
        except RecipientsRefused as e:
            progress.close()
            for r in getattr(e, "results", ()):
                self._recipientLine(r)
            raise
        finally:
            progress.close()
        for r in result.recipients:
            self._recipientLine(r)
        refused = result.refused
        if refused:
            raise PartialDelivery(refused=len(refused), total=len(result.recipients))
        return EXIT_OK

    def _recipientLine(self, result: RecipientResult) -> None:
        verdict = "accepted" if result.accepted else "refused "
        self.io.out("%s  %s  (%03d %s)" % (verdict, result.address, result.code, result.text))

    # -- POP3 --------------------------------------------------------------

    async def _session(self, reactor: Any) -> POP3Session:
        session = await POP3Session.connect(reactor, self.connection.pop3, transcript=self._debug())
        try:
            await session.login(self.connection.user, self.password)
        except BaseException:
            await session.abort()
            raise
        return session

    async def _withSession(self, reactor: Any, work: Callable[[POP3Session], Any]) -> int:
        session = await self._session(reactor)
        try:
            code = await work(session)
        except BaseException:
            await session.abort()
            raise
        await session.quit()
        return code

    async def _retrieveOne(self, session: POP3Session, what: str) -> bytes:
        """Message C{options.number}, with a progress bar when it takes a while."""
        sizes = await session.list()
        number = self.options.number
        size = sizes[number - 1] if 0 < number <= len(sizes) and sizes[number - 1] is not None else None
        progress = Progress(self.io.stderr, size, what)
        update, done = progress.counter(size)
        try:
            data = await session.retrieve(number, progress=update)
            done()
            return data
        finally:
            progress.close()

    async def do_list(self, reactor: Any) -> int:
        async def work(session: POP3Session) -> int:
            sizes = await session.list()
            try:
                uids: List[Optional[str]] = await session.uidl()
            except ClientError:
                uids = [None] * len(sizes)
            numbers = [n for n in range(len(sizes), 0, -1) if sizes[n - 1] is not None]
            limit, page = self.options.limit, self.options.page
            shown = numbers[(page - 1) * limit : page * limit]
            summaries = []
            for number in shown:
                headers = await session.top(number, 0)
                summaries.append(summarize(number, sizes[number - 1], headers, uids[number - 1]))
            pages = max(1, -(-len(numbers) // limit))
            if self.options.json:
                document = {
                    "total": len(numbers),
                    "page": page,
                    "pages": pages,
                    "limit": limit,
                    "next_page": page + 1 if page < pages else None,
                    "messages": [s.asJSON() for s in summaries],
                }
                self.io.out(json.dumps(document, ensure_ascii=False, indent=2))
            else:
                if not numbers:
                    self.io.out("no messages")
                elif not shown:
                    self.io.out("no page %d: %d message%s, %d page%s" % (
                        page, len(numbers), "" if len(numbers) == 1 else "s", pages, "" if pages == 1 else "s"))
                for s in summaries:
                    self.io.out(
                        "%4d  %s  %s  %s  %s"
                        % (s.number, fit(s.sender, 28), fit(s.subject, 40), fit(s.date, 31), _size(s.size))
                    )
                if shown and len(numbers) > limit:
                    self.io.out("page %d of %d (%d messages)" % (page, pages, len(numbers)))
            return EXIT_OK

        return await self._withSession(reactor, work)

    async def do_read(self, reactor: Any) -> int:
        async def work(session: POP3Session) -> int:
            data = await self._retrieveOne(session, "reading")
            if self.options.raw:
                self.io.outBytes(toUnixNewlines(data))
                return EXIT_OK
            decoded = decodeMessage(data)
            if self.options.json:
                document = decoded.asJSON()
                document["number"] = self.options.number
                self.io.out(json.dumps(document, ensure_ascii=False, indent=2))
                return EXIT_OK
            for name, value in decoded.headers.items():
                self.io.out("%s: %s" % (name, value))
            self.io.out()
            if decoded.textFromHTML:
                self.io.out("[HTML message shown as text]")
            self.io.out(decoded.text.rstrip("\n"))
            if decoded.attachments:
                self.io.out()
                self.io.out("Attachments:")
                for a in decoded.attachments:
                    self.io.out("  %s  (%s, %s)" % (a.filename or a.safeName, a.contentType, _size(a.size)))
            return EXIT_OK

        return await self._withSession(reactor, work)

    async def do_save(self, reactor: Any) -> int:
        directory = self.options.attachments

        async def work(session: POP3Session) -> int:
            data = await self._retrieveOne(session, "reading")
            decoded = decodeMessage(data)
            if not decoded.attachments:
                self.io.out("message %d has no attachments" % (self.options.number,))
                return EXIT_OK
            saved = await self._inThread(reactor, saveAttachments, directory, [(a.filename or a.safeName, a.data) for a in decoded.attachments])
            for path, size in saved:
                self.io.out("saved %s (%s)" % (path, _size(size)))
            return EXIT_OK

        return await self._withSession(reactor, work)

    async def do_delete(self, reactor: Any) -> int:
        async def work(session: POP3Session) -> int:
            sizes = await session.list()
            # Check every number first: a typo must not delete the others.
            for number in self.options.numbers:
                if number > len(sizes) or sizes[number - 1] is None:
                    raise NoSuchMessage(number=number, count=len(sizes))
            for number in dict.fromkeys(self.options.numbers):
                await session.delete(number)
            return EXIT_OK

        code = await self._withSession(reactor, work)
        # Reported only now: deletions take effect at a successful QUIT.
        for number in dict.fromkeys(self.options.numbers):
            self.io.out("deleted %d" % (number,))
        return code

    async def do_fetch(self, reactor: Any) -> int:
        saved: List[int] = []
        skipped: List[int] = []
        memory = FetchedMemory(fetchedPath(self.io.environ, self.connection))
        remembering = True
        progress = Progress(self.io.stderr, None, "fetching")

        async def work(session: POP3Session) -> int:
            nonlocal remembering
            sizes = await session.list()
            numbers = [n for n in range(1, len(sizes) + 1) if sizes[n - 1] is not None]
            try:
                uids: List[Optional[str]] = list(await session.uidl())
            except ClientError:
                uids = []
                remembering = False
                self.io.err("%s: note: the server has no UIDL, so fetch cannot remember what it fetched" % (PROG,))
            uids += [None] * (len(sizes) - len(uids))
            seen = await self._inThread(reactor, memory.load) if remembering else set()
            wanted = []
            for number in numbers:
                if not self.options.all and uids[number - 1] in seen:
                    skipped.append(number)
                else:
                    wanted.append(number)
            progress.start(sum(sizes[n - 1] for n in wanted))
            for index, number in enumerate(wanted, 1):
                progress.describe("fetching %d/%d" % (index, len(wanted)))
                update, done = progress.counter(sizes[number - 1])
                data = await session.retrieve(number, progress=update)
                done()
                if self.options.to_maildir:
                    await self._inThread(reactor, deliverToMaildir, self.options.to_maildir, data)
                else:
                    await self._inThread(reactor, appendToMbox, self.options.to_mbox, data, self.now())
                saved.append(number)
                if remembering and uids[number - 1]:
                    await self._inThread(reactor, memory.add, uids[number - 1])
            progress.close()
            if remembering:
                # Forget what the server no longer has (as fetchmail does).
                await self._inThread(reactor, memory.keepOnly, {u for u in uids if u})
            if self.options.delete:
                # Only what is durably saved (in this run) is deleted; QUIT commits it.
                for number in saved:
                    await session.delete(number)
            return EXIT_OK

        target = self.options.to_maildir or self.options.to_mbox
        try:
            code = await self._withSession(reactor, work)
        except BaseException:
            progress.close()
            if self.interrupted and saved:
                # What is saved stays saved (and remembered): say so.
                self.io.out("fetched %d message%s into %s before the interruption; nothing was deleted"
                            % (len(saved), "" if len(saved) == 1 else "s", target))
            raise
        progress.close()
        line = "fetched %d %smessage%s into %s%s" % (
            len(saved),
            "new " if skipped else "",
            "" if len(saved) == 1 else "s",
            target,
            ", deleted from the server" if self.options.delete and saved else "",
        )
        if skipped:
            line += "; %d fetched before were skipped (--all fetches them again)" % (len(skipped),)
        self.io.out(line)
        return code


def fetchedPath(environ: Mapping[str, str], connection: Connection) -> str:
    """
    Where C{fetch} remembers the UIDLs it fetched for this user on this
    server: C{$XDG_STATE_HOME/mailnet/fetched/USER@HOST:PORT}
    (C{~/.local/state/...} by default).
    """
    from urllib.parse import quote

    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    key = "%s@%s:%d" % (connection.user, connection.pop3.host.lower(), connection.pop3.port)
    return os.path.join(base, "mailnet", "fetched", quote(key, safe="@.+-_:"))


#: A POP3 unique id: 1 to 70 characters from 0x21 to 0x7E (RFC 1939 §7).
_UID = re.compile(r"\A[\x21-\x7e]{1,70}\Z")


@attr.s(auto_attribs=True)
class FetchedMemory:
    """
    The UIDLs C{fetch} has saved, one a line in a file, so that the next
    C{fetch} without C{--delete} does not save them again.  The methods do
    file I/O: run them off the reactor thread.
    """

    path: str

    def load(self) -> Set[str]:
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                return {line.strip() for line in f if _UID.match(line.strip())}
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise LocalFileError(path=self.path, reason=e.strerror or str(e))

    def add(self, uid: str) -> None:
        """Remember one more (right after the message was saved durably)."""
        if not _UID.match(uid):
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(self.path, "a", encoding="ascii") as f:
                f.write(uid + "\n")
        except OSError as e:
            raise LocalFileError(path=self.path, reason=e.strerror or str(e))

    def keepOnly(self, uids: Set[str]) -> None:
        """Forget every UID not in C{uids} (what the server still has)."""
        kept = sorted(self.load() & uids)
        if not os.path.exists(self.path):
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.writelines(uid + "\n" for uid in kept)
            os.replace(tmp, self.path)
        except OSError as e:
            raise LocalFileError(path=self.path, reason=e.strerror or str(e))


def _width(char: str) -> int:
    from wcwidth import wcwidth

    return max(wcwidth(char), 0)


def fit(text: str, width: int) -> str:
    """
    C{text} in exactly C{width} terminal columns: padded, or cut with an
    ellipsis.  Columns are display width (a CJK character or an emoji
    takes two), so the columns of C{list} line up whatever the script.
    """
    text = shown(text)
    total = sum(_width(c) for c in text)
    if total <= width:
        return text + " " * (width - total)
    kept, used = [], 0
    for char in text:
        w = _width(char)
        if used + w > width - 1:
            break
        kept.append(char)
        used += w
    return "".join(kept) + "…" + " " * (width - 1 - used)


_size = humanSize


def _terminalColumns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80  # not a real terminal (tests): tqdm's own default


class Progress:
    """
    Octets transferred, as a bar on stderr: only when stderr is a terminal,
    and only once a transfer has lasted L{DELAY} seconds (quick ones print
    nothing).  Drawn by C{tqdm}, which also rate-limits the redraws; the
    bar is erased when done.
    """

    DELAY = 1.0
    MININTERVAL = 0.1

    def __init__(self, stream: IO[str], total: Optional[int], description: str) -> None:
        self._stream = stream
        self._description = description
        self._bar: Any = None
        self._active = isTerminal(stream)
        if total is not None:
            self.start(total)

    def start(self, total: Optional[int]) -> None:
        if not self._active or self._bar is not None:
            return
        from tqdm import tqdm

        # A terminal that does not know its size (0x0) would get no bar
        # at all: assume 80x24 then.
        sized = _terminalColumns(self._stream) > 0
        self._bar = tqdm(
            total=total,
            desc=self._description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            delay=self.DELAY,
            mininterval=self.MININTERVAL,
            leave=False,
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,
        )

    def describe(self, description: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(description, refresh=False)

    def update(self, octets: int) -> None:
        if self._bar is not None:
            self._bar.update(octets)

    def counter(self, size: Optional[int]) -> Tuple[Callable[[int], None], Callable[[], None]]:
        """
        Count one message of C{size} octets (from LIST) into the bar: the
        lines received are counted, but never past C{size}, and C{done}
        makes up the difference (protocol lines and line endings make the
        two differ a little).

        @return: C{(update, done)}.
        """
        counted = 0

        def update(octets: int) -> None:
            nonlocal counted
            if size is not None:
                octets = max(0, min(octets, size - counted))
            counted += octets
            self.update(octets)

        def done() -> None:
            if size is not None and counted < size:
                update(size - counted)

        return update, done

    def close(self) -> None:
        if self._bar is not None:
            bar = self._bar
            if bar.last_print_t >= bar.start_t + bar.delay:
                bar.refresh()  # the final count, if the bar was shown at all
            self._bar.close()
            self._bar = None
        self._active = False


# --- local files (run in a thread) ----------------------------------------


def saveAttachments(directory: str, attachments: Sequence[Tuple[str, bytes]]) -> List[Tuple[str, int]]:
    """
    Write attachments into C{directory} and nowhere else: the names were
    made safe (L{mailnet.message.safeFilename}); files are created, never
    overwritten and never followed through symbolic links; a name already
    there gets a numbered variant.

    @return: C{(path, size)} of each file written.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise LocalFileError(path=directory, reason=e.strerror or str(e))
    root = os.path.realpath(directory)
    written = []
    taken: Set[str] = set()
    for name, data in attachments:
        while True:
            candidate = safeFilename(name, taken | {n for n in _listdir(root)})
            path = os.path.join(root, candidate)
            if os.path.dirname(os.path.realpath(path)) != root:  # belt and braces
                raise LocalFileError(path=path, reason="refusing to write outside %s" % (directory,))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:
                taken.add(candidate)
                continue
            except OSError as e:
                raise LocalFileError(path=path, reason=e.strerror or str(e))
            break
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        taken.add(candidate)
        written.append((path, len(data)))
    return written


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def deliverToMaildir(directory: str, data: bytes) -> str:
    """
    Put a message into a local Maildir durably: write into C{tmp/}, fsync,
    rename into C{new/}, fsync C{new/} (the Maildir protocol).

    @return: the new file's path.
    """
    from mailnet.store.maildir import ensureMaildir, fsyncDirectory, uniqueName

    try:
        ensureMaildir(directory)
        name = uniqueName()
        tmp = os.path.join(directory, "tmp", name)
        final = os.path.join(directory, "new", name)
        with open(tmp, "xb") as f:
            f.write(toUnixNewlines(data))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        fsyncDirectory(os.path.join(directory, "new"))
    except OSError as e:
        raise LocalFileError(path=directory, reason=e.strerror or str(e))
    return final


def appendToMbox(path: str, data: bytes, when: datetime.datetime) -> None:
    """
    Append a message to an mbox (mboxrd) file under an exclusive lock, and
    fsync it.
    """
    entry = mboxEntry(data, envelopeSenderOf(data), when)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            try:
                f.write(entry)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError as e:
        raise LocalFileError(path=path, reason=e.strerror or str(e))


# --- errors ---------------------------------------------------------------


def report(error: BaseException, io: Streams, debug: bool, failure: Any = None) -> int:
    """
    The one error dispatcher: an expected error is one line on stderr and
    its exit status; anything else is a bug, shown with its traceback.
    """
    if isinstance(error, BrokenPipeError):
        # Whoever read our output has gone (`mailnet-cli list | head -1`):
        # nothing to say, and no one to say it to.
        return EXIT_PIPE
    code = exitCodeFor(error)
    if code is not None:
        io.err("%s: error: %s" % (PROG, shown(str(error))))
        return code
    if debug:
        if failure is not None:
            io.err(failure.getTraceback())
        else:
            io.err("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    io.err("%s: error: unexpected %s: %s%s" % (PROG, type(error).__name__, error, "" if debug else " (--debug shows details)"))
    return EXIT_ERROR


# --- preparing a run ------------------------------------------------------


def _readBody(options: argparse.Namespace, io: Streams) -> str:
    if options.body is not None:
        return options.body
    if options.body_file is not None:
        try:
            with open(options.body_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise LocalFileError(path=options.body_file, reason=getattr(e, "strerror", None) or str(e))
    isatty = getattr(io.stdin, "isatty", None)
    if isatty is not None and isatty():
        return _editBody(io)
    return io.stdin.read()


def _editBody(io: Streams) -> str:
    editor = io.environ.get("VISUAL") or io.environ.get("EDITOR") or "vi"
    fd, path = tempfile.mkstemp(prefix="mailnet-", suffix=".txt")
    os.close(fd)
    try:
        done = subprocess.run(shlex.split(editor) + [path])
        if done.returncode != 0:
            raise LocalFileError(path=path, reason="the editor %r exited with status %d" % (editor, done.returncode))
        with open(path, encoding="utf-8") as f:
            return f.read()
    finally:
        os.unlink(path)


def parseAddresses(value: str) -> List[Tuple[str, str]]:
    """
    Parse one C{--to}/C{--cc}/C{--bcc} value, or the sender: one or more
    addresses (C{bob@example.test}, C{Bob <bob@example.test>}), separated by
    commas.  The one parser for both the headers and the envelope: what is
    written in To: is exactly what is sent to.

    @return: C{(display name, address)} pairs.
    @raise BadAddress: naming the first bad address and why.
    """
    from email.errors import InvalidHeaderDefect, NonASCIILocalPartDefect
    from email.policy import default

    from mailnet.address import normalizeAddress

    text = value.strip()
    if not any(c in text for c in '<>",()'):
        # The common case, one bare address: the precise reason comes from
        # the address rules themselves ("bob@exa mple.test" has a space).
        for piece in [text] if text else []:
            if ";" in piece:
                raise BadAddress(address=piece, reason="separate addresses with commas, or repeat the option")
            normalizeAddress(piece)
        return [("", text)] if text else []
    try:
        header = default.header_factory("To", text)
        defects = [d for d in header.defects if isinstance(d, InvalidHeaderDefect)
                   and not isinstance(d, NonASCIILocalPartDefect)]
        parsed = [(a.display_name, a.addr_spec) for a in header.addresses]
    except Exception:  # the stdlib parser fails on some garbage (IndexError ...)
        raise BadAddress(address=text, reason="it cannot be read as a list of addresses")
    if defects:
        reason = str(defects[0]) or "it cannot be read as a list of addresses"
        if ";" in text:
            reason = "separate addresses with commas, or repeat the option"
        raise BadAddress(address=text, reason=reason)
    for _name, address in parsed:
        normalizeAddress(address)  # raises BadAddress naming it
    return parsed


def _addresses(values: Sequence[str]) -> List[Tuple[str, str]]:
    """Every address of several option values (see L{parseAddresses})."""
    return [pair for value in values for pair in parseAddresses(value)]


def _formatAddress(pair: Tuple[str, str]) -> str:
    from email.headerregistry import Address

    name, address = pair
    if not name:
        return address
    return str(Address(display_name=name, addr_spec=address))


def _prepareSend(options: argparse.Namespace, connection: Connection, io: Streams, now: datetime.datetime) -> Dict[str, Any]:
    to, cc, bcc = _addresses(options.to), _addresses(options.cc), _addresses(options.bcc)
    if not (to or cc or bcc):
        raise UsageError(problem="send needs at least one --to, --cc or --bcc")
    senders = parseAddresses(options.sender or connection.sender)
    if len(senders) != 1:
        raise UsageError(problem="one sender address is needed: give --from, set from in the account, or use a full address as --user")
    senderAddress = senders[0][1]
    attachments = []
    for path in options.attach:
        try:
            attachments.append(AttachmentFile.fromPath(path))
        except OSError as e:
            raise LocalFileError(path=path, reason=e.strerror or str(e))
    body = _readBody(options, io)
    if not body.strip() and not attachments:
        raise EmptyMessage()
    try:
        message = composeMessage(
            sender=_formatAddress(senders[0]),
            to=[_formatAddress(p) for p in to],
            cc=[_formatAddress(p) for p in cc],
            subject=options.subject,
            body=body,
            attachments=attachments,
            now=now,
        )
    except ValueError as e:
        raise UsageError(problem=str(e))
    return {
        "message": messageBytes(message),
        "recipients": envelopeRecipients([a for _, a in to], [a for _, a in cc], [a for _, a in bcc]),
        "envelopeSender": senderAddress,
    }


def prepare(argv: Sequence[str], io: Streams, prompt: Any = None) -> Any:
    """
    Parse the command line, read the account, get the password and build
    the message: everything that happens before the network.

    @return: an L{Invocation}, or an exit status (help shown, or an error
        already reported).
    """
    parser = makeParser(io.stdout)
    try:
        options = parser.parse_args(list(argv))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK
    except ClientError as e:
        return report(e, io, False)
    if options.command is None:
        # No command: what there is to do, as bare git says.
        _write(io.stdout, commandList())
        return EXIT_USAGE
    try:
        account = loadAccount(configPath(io.environ), options.account)
        connection = resolve(account, options)
        prepared: Dict[str, Any] = {}
        now = datetime.datetime.now(datetime.timezone.utc).astimezone()
        if options.command == "send":
            prepared = _prepareSend(options, connection, io, now)
        if options.insecure:
            io.err(
                "%s: warning: --insecure: the server's certificate is not verified; "
                "anyone on the network path can read and change this session" % (PROG,)
            )
        kwargs = {} if prompt is None else {"prompt": prompt}
        password = getPassword(connection, io.environ, io.stdin, io.stderr, **kwargs)
    except Exception as e:
        return report(e, io, options.debug)
    return Invocation(options, connection, password, io, prepared)


def run(
    reactor: Any,
    argv: Sequence[str],
    *,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    runInThread: Optional[Callable[..., defer.Deferred]] = None,
) -> defer.Deferred:
    """
    Run one command on a running C{reactor} (what tests call).

    @return: Deferred firing with the exit status.
    """
    io = Streams(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr, os.environ if environ is None else environ)
    invocation = prepare(argv, io)
    if isinstance(invocation, int):
        return defer.succeed(invocation)
    invocation.run = runInThread
    return invocation.execute(reactor)


def main(
    argv: Optional[Sequence[str]] = None,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    """
    The C{mailnet-cli} entry point.

    @return: the exit status (the console script passes it to C{sys.exit}).
    """
    io = Streams(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr, os.environ if environ is None else environ)
    try:
        status = _main(sys.argv[1:] if argv is None else argv, io)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except BrokenPipeError:
        status = EXIT_PIPE
    if status == EXIT_INTERRUPTED:
        _interrupted(io)
    elif status == EXIT_PIPE:
        silenceClosedPipe(io.stdout)
    return status


def _interrupted(io: Streams) -> None:
    try:
        if isTerminal(io.stderr):
            io.err("")  # end the line of a prompt or a progress bar
        io.err("%s: interrupted" % (PROG,))
    except (OSError, ValueError):
        pass


def _main(argv: Sequence[str], io: Streams) -> int:
    invocation = prepare(argv, io)
    if isinstance(invocation, int):
        return invocation
    status: List[int] = []

    def go(reactor: Any) -> defer.Deferred:
        def shuttingDown() -> None:
            # Ctrl-C (or SIGTERM) stops the reactor before the command ended.
            if not status:
                invocation.interrupted = True

        reactor.addSystemEventTrigger("before", "shutdown", shuttingDown)
        return invocation.execute(reactor).addCallback(status.append)

    try:
        task.react(go)
    except SystemExit:
        pass
    if invocation.interrupted:
        return EXIT_INTERRUPTED
    return status[0] if status else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
