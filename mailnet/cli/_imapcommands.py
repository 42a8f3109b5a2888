# -*- test-case-name: tests.test_cli_imap -*-
"""
mailnet-cli over IMAP: the commands that need folders (C{folders},
C{folder create|rename|delete}, C{move}, C{copy}, C{flag}, C{search},
C{watch}), and C{list}, C{read}, C{save}, C{delete}, C{fetch} when the
account's protocol is IMAP; the copy of a sent message in Sent.

IDs are IMAP UIDs; a command without C{--folder} acts on INBOX.  The
protocol work is in L{mailnet.client.imap}; the options, the error
dispatcher, the output helpers and the local mail files are
L{mailnet.cli.main}'s.
"""

import argparse
import datetime
import json
import os
import re
import shlex
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from mailnet.client.imap import (
    Atom,
    Folder,
    IMAPSession,
    MessageInfo,
    NoSuchFolder,
    ProtocolError,
    ServerBye,
)
from mailnet.errors import (
    AuthenticationFailed,
    ClientError,
    ConfigError,
    ConnectFailed,
    NoSuchMessage,
    PlaintextRefused,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
)
from mailnet.message import decodeMessage, summarize, toUnixNewlines

#: The commands only IMAP can do, one line each (for the help).
COMMANDS = {
    "folders": "list the folders, with message and unseen counts (IMAP)",
    "folder": "create, rename or delete a folder (IMAP)",
    "move": "move messages to another folder (IMAP)",
    "copy": "copy messages to another folder (IMAP)",
    "flag": "set or clear flags: +seen -seen +flagged ... (IMAP)",
    "search": "search a folder on the server (IMAP)",
    "watch": "print (or act on) each new message as it arrives (IMAP IDLE)",
}

#: The commands both protocols have; over IMAP they are here.
SHARED = ("list", "read", "save", "delete", "fetch")

#: Seconds before C{watch} reconnects, doubled after each failed attempt
#: up to L{MAX_BACKOFF}.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
#: IDLE is ended and begun again this often (RFC 2177 §3: before 29
#: minutes), which also notices a connection that died silently.
IDLE_RENEW = 600.0

FLAGS = {"seen": "\\Seen", "flagged": "\\Flagged", "answered": "\\Answered", "deleted": "\\Deleted", "draft": "\\Draft"}
_KEYWORD = re.compile(r"\A[!#$&'+\-.0-9:;<=>?@A-Z^_`a-z|~]{1,100}\Z")


def UsageError(problem: str) -> ClientError:
    """A usage error (exit status 2), as L{mailnet.cli.main.UsageError}."""
    from mailnet.cli.main import UsageError

    return UsageError(problem=problem)


class NeedsIMAP(ClientError):
    """{what} needs IMAP: add --protocol imap (and --imap-port if not 143/993), or set protocol = imap in the account"""


class NoTrash(ClientError):
    """{host} has no Trash folder to move deleted messages to; use delete --expunge to remove them"""


# --- options ------------------------------------------------------------------


def _uid(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or len(text) > 10:
        raise argparse.ArgumentTypeError("%r is not a message ID (a UID from 'list')" % (text,))
    return int(text)


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a date (YYYY-MM-DD)" % (text,))


def extendParser(commands: Any, parsers: Dict[str, argparse.ArgumentParser]) -> None:
    """
    Add the IMAP options to the shared commands (C{parsers}, by name) and
    register the IMAP-only commands on the subparsers C{commands}.
    """
    for name in ("list", "read", "save", "delete"):
        parsers[name].add_argument("--folder", metavar="F", help="the folder (IMAP; default INBOX)")
    parsers["list"].add_argument("--unseen", action="store_true", help="only messages not yet read (IMAP)")
    parsers["list"].add_argument("--since", type=_date, metavar="DATE", help="only messages that arrived on or after DATE, YYYY-MM-DD (IMAP)")
    parsers["read"].add_argument("--peek", action="store_true", help="do not mark the message read (IMAP)")
    parsers["delete"].add_argument("--expunge", action="store_true", help="remove at once instead of moving to Trash (IMAP)")
    parsers["fetch"].add_argument("--folder", action="append", default=[], metavar="F", help="fetch this folder (IMAP; repeatable; default INBOX)")
    parsers["fetch"].add_argument("--all-folders", action="store_true", help="fetch every folder, each into a Maildir++ subfolder (IMAP)")
    parsers["send"].add_argument("--no-save-sent", action="store_true", help="do not store a copy in the Sent folder (with IMAP)")
    for name in ("delete", "fetch"):
        if not any("--json" in action.option_strings for action in parsers[name]._actions):
            parsers[name].add_argument("--json", action="store_true", help="print JSON (IMAP)")
            _IMAP_ONLY.add((name, "json"))

    def command(name: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=COMMANDS[name],
            description=description,
            epilog="examples:\n" + "\n".join("  mailnet-cli " + e for e in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    folders = command("folders", "List the folders: name, special use (\\Sent, \\Trash ...), messages and unseen.",
                      ["folders", "folders --json"])
    folders.add_argument("--json", action="store_true", help="print JSON")

    folder = command("folder", "Create, rename or delete a folder.  Names are Unicode; a hierarchy uses the server's "
                     "separator (see 'folders').",
                     ["folder create Projects", "folder rename Projects Archive/2026", "folder delete Archive/2026"])
    folder.add_argument("action", choices=("create", "rename", "delete"), help="what to do")
    folder.add_argument("name", metavar="NAME", help="the folder")
    folder.add_argument("new", nargs="?", metavar="NEW", help="the new name (rename)")
    folder.add_argument("--json", action="store_true", help="print JSON")

    for name, verb in (("move", "Move"), ("copy", "Copy")):
        parser = command(name, "%s messages (UIDs from 'list') to another folder." % (verb,),
                         ["%s 12 13 Archive" % (name,), "%s --folder Archive 7 INBOX" % (name,)])
        parser.add_argument("ids", type=_uid, nargs="+", metavar="ID", help="message IDs (UIDs)")
        parser.add_argument("target", metavar="FOLDER", help="where to")
        parser.add_argument("--folder", metavar="F", help="the folder they are in (default INBOX)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    flag = command("flag", "Set (+) or clear (-) flags: seen, flagged, answered, deleted, draft, or a keyword.  "
                   "Options go before the IDs.",
                   ["flag 12 +seen", "flag 12 13 -seen +flagged", "flag --folder Work 4 +urgent"])
    flag.add_argument("--folder", metavar="F", help="the folder (default INBOX)")
    flag.add_argument("--json", action="store_true", help="print JSON")
    flag.add_argument("items", nargs=argparse.REMAINDER, metavar="ID... +FLAG|-FLAG...", help="message IDs, then flags")

    search = command("search", "Search a folder on the server (SEARCH, UTF-8).  Terms: from:X to:X cc:X subject:X "
                     "body:X since:DATE before:DATE on:DATE unseen seen flagged unflagged answered; other words "
                     "search the whole text.  All terms must match; quote a term with spaces.",
                     ["search from:alice subject:report", "search 'subject:\"weekly report\"' since:2026-11-01 unseen",
                      "search --folder Archive invoice --json"])
    search.add_argument("query", nargs="+", metavar="TERM", help="search terms")
    search.add_argument("--folder", metavar="F", help="the folder (default INBOX)")
    search.add_argument("--limit", type=_uid, default=50, metavar="N", help="show at most N, newest first (default 50)")
    search.add_argument("--json", action="store_true", help="print JSON")

    watch = command("watch", "Wait for new messages (IMAP IDLE) and print a line for each as it arrives, or run "
                    "--exec CMD for it (with MAILNET_UID, MAILNET_FOLDER, MAILNET_FROM, MAILNET_SUBJECT, MAILNET_DATE "
                    "in its environment).  Reconnects after a lost connection; Ctrl-C ends it (exit status 130).",
                    ["watch", "watch --folder Alerts --json", "watch --exec 'notify-send \"$MAILNET_FROM\" \"$MAILNET_SUBJECT\"'"])
    watch.add_argument("--folder", metavar="F", help="the folder (default INBOX)")
    watch.add_argument("--exec", dest="exec_", metavar="CMD", help="run this shell command for each new message")
    watch.add_argument("--json", action="store_true", help="print one JSON object a line")


#: C{(command, option)} added here that only IMAP honours.
_IMAP_ONLY: Set[Tuple[str, str]] = set()


def wanted(options: argparse.Namespace, protocol: str) -> bool:
    """
    Whether the command runs here (over IMAP) rather than over POP3.

    @raise NeedsIMAP: an option only IMAP has, with POP3.
    """
    if options.command in COMMANDS:
        return True
    if protocol == "imap":
        return options.command in SHARED or options.command == "send"
    options_ = ["folder", "unseen", "since", "peek", "expunge", "all_folders"]
    options_ += [option for command, option in _IMAP_ONLY if command == options.command]
    for option in options_:
        if getattr(options, option, None):
            raise NeedsIMAP(what="--" + option.replace("_", "-"))
    return False


# --- state: UIDVALIDITY seen, what fetch saved ------------------------------------


def statePath(environ: Any, user: str, host: str, port: int) -> str:
    """C{$XDG_STATE_HOME/mailnet/imap/USER@HOST:PORT.json}."""
    from urllib.parse import quote

    base = environ.get("XDG_STATE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    key = "%s@%s:%d" % (user, host.lower(), port)
    return os.path.join(base, "mailnet", "imap", quote(key, safe="@.+-_:") + ".json")


class State:
    """
    What the client remembers per login and server: each folder's
    UIDVALIDITY as last seen, and what C{fetch} saved (UIDVALIDITY and
    last UID per folder).  The methods do file I/O: run them in a thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: Dict[str, Any]) -> None:
        from mailnet.cli.main import LocalFileError

        tmp = self.path + ".tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise LocalFileError(path=self.path, reason=e.strerror or str(e))


# --- searching ------------------------------------------------------------------

_STRING_KEYS = {"from": b"FROM", "to": b"TO", "cc": b"CC", "subject": b"SUBJECT", "body": b"BODY", "text": b"TEXT"}
_DATE_KEYS = {"since": b"SINCE", "before": b"BEFORE", "on": b"ON"}
_FLAG_KEYS = {"unseen": b"UNSEEN", "seen": b"SEEN", "flagged": b"FLAGGED", "unflagged": b"UNFLAGGED",
              "answered": b"ANSWERED", "unanswered": b"UNANSWERED", "all": b"ALL"}


def imapDate(day: datetime.date) -> Atom:
    """RFC 3501 date: C{1-Dec-2026}."""
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return Atom(b"%d-%s-%d" % (day.day, months[day.month - 1].encode(), day.year))


def searchCriteria(terms: Sequence[str]) -> Tuple[List[Any], bool]:
    """
    Turn C{search} terms into SEARCH criteria.

    @return: the criteria, and whether they need C{CHARSET UTF-8}.
    @raise UsageError: a bad term.
    """
    words: List[str] = []
    for term in terms:
        try:
            words += shlex.split(term)
        except ValueError as e:
            raise UsageError(problem="search: %s in %r" % (e, term))
    criteria: List[Any] = []
    for word in words:
        key, colon, value = word.partition(":")
        key = key.lower()
        if colon and key in _STRING_KEYS:
            if not value:
                raise UsageError(problem="search: %s: needs something to look for" % (key,))
            criteria += [Atom(_STRING_KEYS[key]), value]
        elif colon and key in _DATE_KEYS:
            try:
                day = datetime.date.fromisoformat(value)
            except ValueError:
                raise UsageError(problem="search: %s: takes a date YYYY-MM-DD, not %r" % (key, value))
            criteria += [Atom(_DATE_KEYS[key]), imapDate(day)]
        elif not colon and key in _FLAG_KEYS:
            criteria.append(Atom(_FLAG_KEYS[key]))
        elif word:
            criteria += [Atom(b"TEXT"), word]
    if not criteria:
        raise UsageError(problem="search: nothing to search for")
    return criteria, any(not isinstance(c, Atom) and not c.isascii() for c in criteria)


def parseFlagItems(items: Sequence[str]) -> Tuple[List[int], List[Tuple[str, str]], Optional[str], bool]:
    """
    C{flag}'s arguments: IDs, then C{+name}/C{-name}; C{--folder F} and
    C{--json} may come among them.

    @return: C{(uids, [(sign, flag)], folder, json)}.
    """
    uids: List[int] = []
    changes: List[Tuple[str, str]] = []
    folder: Optional[str] = None
    asJSON = False
    items = list(items)
    while items:
        item = items.pop(0)
        if item == "--json":
            asJSON = True
        elif item == "--folder":
            if not items:
                raise UsageError(problem="flag: --folder needs a folder name")
            folder = items.pop(0)
        elif item == "--":
            continue
        elif item[:1] in "+-" and len(item) > 1:
            name = item[1:]
            flag = FLAGS.get(name.lower().lstrip("\\"))
            if flag is None:
                if not _KEYWORD.match(name):
                    raise UsageError(problem="flag: %r is not a flag or keyword" % (name,))
                flag = name
            changes.append((item[0], flag))
        else:
            try:
                uids.append(_uid(item))
            except argparse.ArgumentTypeError as e:
                raise UsageError(problem="flag: %s" % (e,))
    if not uids:
        raise UsageError(problem="flag: which messages? (flag ID... +seen -flagged ...)")
    if not changes:
        raise UsageError(problem="flag: which flags? (+seen -seen +flagged -flagged +answered +deleted +draft, or a keyword)")
    return uids, changes, folder, asJSON


# --- the commands ---------------------------------------------------------------


class IMAPCommands:
    """The IMAP side of one L{mailnet.cli.main.Invocation}."""

    def __init__(self, invocation: Any, reactor: Any) -> None:
        self.inv = invocation
        self.reactor = reactor
        self.options = invocation.options
        self.io = invocation.io
        self.connection = invocation.connection
        endpoint = self.connection.imap
        self.state = State(statePath(self.io.environ, self.connection.user, endpoint.host, endpoint.port))

    @property
    def folder(self) -> str:
        return getattr(self.options, "folder", None) or "INBOX"

    async def run(self) -> int:
        name = self.options.command
        if name == "send":
            return await self.do_send()
        return await getattr(self, "do_" + name)()

    # -- sessions --

    async def session(self) -> IMAPSession:
        endpoint = self.connection.imap
        try:
            session = await IMAPSession.connect(self.reactor, endpoint, transcript=self.inv._debug())
        except ConnectFailed as e:
            if type(e) is ConnectFailed and e.details.get("reason") == "connection refused":
                raise ConnectFailed(host=endpoint.host, port=endpoint.port, reason="connection refused (no IMAP server on this port? "
                                    "check --imap-port: usually 143, or 993 with --tls implicit)")
            raise
        try:
            await session.login(self.connection.user, self.inv.password)
        except BaseException:
            await session.abort()
            raise
        return session

    async def withSession(self, work: Callable[[IMAPSession], Any]) -> int:
        session = await self.session()
        try:
            code = await work(session)
        except BaseException:
            await session.abort()
            raise
        await session.logout()
        return code

    def json(self, document: Any) -> None:
        self.io.out(json.dumps(document, ensure_ascii=False, indent=2))

    async def noteValidity(self, folder: str, validity: Optional[int]) -> Optional[int]:
        """
        Remember C{folder}'s UIDVALIDITY.

        @return: the one remembered before when it differs (the IDs of
            earlier listings are void), else L{None}.
        """
        if validity is None:
            return None
        data = await self.inv._inThread(self.reactor, self.state.load)
        known = data.setdefault("uidvalidity", {})
        before = known.get(folder)
        if before == validity:
            return None
        known[folder] = validity
        await self.inv._inThread(self.reactor, self.state.save, data)
        return before if isinstance(before, int) else None

    async def select(self, session: IMAPSession, folder: str, readOnly: bool) -> Any:
        selected = await session.select(folder, readOnly=readOnly)
        before = await self.noteValidity(folder, selected.uidValidity)
        if before is not None and not getattr(self.options, "json", False):
            from mailnet.cli.main import PROG

            self.io.err("%s: note: the IDs of %s changed (UIDVALIDITY %s, was %s): IDs from earlier lists no longer apply"
                        % (PROG, shownName(folder), selected.uidValidity, before))
        selected.validityChanged = before is not None  # type: ignore[attr-defined]
        return selected

    async def checkUIDs(self, session: IMAPSession, uids: Sequence[int]) -> None:
        """Every ID must exist before any is acted on (a typo must not hit the others)."""
        present = set(await session.search(Atom(b"UID"), Atom(b",".join(b"%d" % (u,) for u in sorted(set(uids))))))
        for uid in uids:
            if uid not in present:
                raise NoSuchUIDInFolder(uid=uid, folder=self.folder)

    # -- folders --

    async def do_folders(self) -> int:
        async def work(session: IMAPSession) -> int:
            folders = await session.folders()
            rows = []
            for folder in folders:
                counts: Dict[str, int] = {}
                if folder.selectable:
                    try:
                        counts = await session.status(folder.name, ("MESSAGES", "UNSEEN"))
                    except NoSuchFolder:
                        counts = {}
                rows.append((folder, counts))
            if self.options.json:
                self.json([
                    {"name": f.name, "special_use": f.specialUse, "messages": c.get("MESSAGES"), "unseen": c.get("UNSEEN"),
                     "delimiter": f.delimiter, "attributes": list(f.attributes)}
                    for f, c in rows
                ])
                return 0
            from mailnet.cli.main import fit

            for f, c in rows:
                shownCounts = "%6s  %6s" % (c.get("MESSAGES", "-"), c.get("UNSEEN", "-"))
                self.io.out("%s  %s  %s" % (fit(f.name, 30), fit(f.specialUse or "", 9), shownCounts))
            return 0

        return await self.withSession(work)

    async def do_folder(self) -> int:
        action, name, new = self.options.action, self.options.name, self.options.new
        if (action == "rename") != (new is not None):
            raise UsageError(problem="folder rename takes NAME and NEW; create and delete take only NAME")

        async def work(session: IMAPSession) -> int:
            if action == "create":
                await session.create(name)
                done = "created %s" % (shownName(name),)
            elif action == "rename":
                await session.rename(name, new)
                done = "renamed %s to %s" % (shownName(name), shownName(new))
            else:
                await session.delete(name)
                done = "deleted %s" % (shownName(name),)
            if self.options.json:
                self.json({"action": action, "folder": name, "new": new})
            else:
                self.io.out(done)
            return 0

        return await self.withSession(work)

    # -- listing and searching --

    async def do_list(self) -> int:
        criteria: List[Any] = [Atom(b"ALL")]
        if self.options.unseen:
            criteria.append(Atom(b"UNSEEN"))
        if self.options.since:
            criteria += [Atom(b"SINCE"), imapDate(self.options.since)]
        limit, page = self.options.limit, self.options.page
        return await self.withSession(lambda session: self.listing(session, criteria, limit, page))

    async def do_search(self) -> int:
        criteria, utf8 = searchCriteria(self.options.query)
        return await self.withSession(lambda session: self.listing(session, criteria, self.options.limit, 1, utf8, search=True))

    async def listing(self, session: IMAPSession, criteria: List[Any], limit: int, page: int, utf8: bool = False, search: bool = False) -> int:
        selected = await self.select(session, self.folder, readOnly=True)
        uids = await session.search(*criteria, charset="UTF-8" if utf8 else None)
        uids.sort(reverse=True)
        shownUIDs = uids[(page - 1) * limit : page * limit]
        infos = await session.summaries(shownUIDs)
        pages = max(1, -(-len(uids) // limit))
        if self.options.json:
            document: Dict[str, Any] = {
                "folder": self.folder,
                "uidvalidity": selected.uidValidity,
                "uidvalidity_changed": selected.validityChanged,
                "total": len(uids),
            }
            if not search:
                document.update({"page": page, "pages": pages, "limit": limit, "next_page": page + 1 if page < pages else None})
            document["messages"] = [messageJSON(info) for info in infos]
            self.json(document)
            return 0
        if not uids:
            self.io.out("no messages" if not search else "nothing found")
        elif not infos:
            self.io.out("no page %d: %d message%s, %d page%s" % (page, len(uids), _s(len(uids)), pages, _s(pages)))
        for info in infos:
            self.io.out(summaryLine(info))
        if infos and len(uids) > limit:
            if search:
                self.io.out("%d of %d found (--limit shows more)" % (len(infos), len(uids)))
            else:
                self.io.out("page %d of %d (%d messages)" % (page, pages, len(uids)))
        return 0

    # -- one message --

    async def fetchOne(self, session: IMAPSession, uid: int, peek: bool) -> bytes:
        from mailnet.cli.main import Progress

        await self.select(session, self.folder, readOnly=peek)
        [info] = (await session.summaries([uid])) or [None]
        if info is None:
            raise NoSuchUIDInFolder(uid=uid, folder=self.folder)
        progress = Progress(self.io.stderr, info.size, "reading")
        try:
            data = await session.fetchMessage(uid, peek=peek, progress=progress.update)
        finally:
            progress.close()
        return data

    async def do_read(self) -> int:
        async def work(session: IMAPSession) -> int:
            data = await self.fetchOne(session, self.options.number, self.options.peek or self.options.raw)
            if self.options.raw:
                self.io.outBytes(toUnixNewlines(data))
                return 0
            decoded = decodeMessage(data)
            if self.options.json:
                document = decoded.asJSON()
                document["uid"] = self.options.number
                document["folder"] = self.folder
                self.json(document)
                return 0
            from mailnet.cli.main import _size

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
            return 0

        return await self.withSession(work)

    async def do_save(self) -> int:
        from mailnet.cli.main import _size, saveAttachments

        async def work(session: IMAPSession) -> int:
            data = await self.fetchOne(session, self.options.number, True)
            decoded = decodeMessage(data)
            if not decoded.attachments:
                self.io.out("message %d has no attachments" % (self.options.number,))
                return 0
            saved = await self.inv._inThread(self.reactor, saveAttachments, self.options.attachments,
                                             [(a.filename or a.safeName, a.data) for a in decoded.attachments])
            for path, size in saved:
                self.io.out("saved %s (%s)" % (path, _size(size)))
            return 0

        return await self.withSession(work)

    # -- changing messages --

    async def trashFolder(self, session: IMAPSession) -> Optional[str]:
        folders = await session.folders()
        for f in folders:
            if (f.specialUse or "").lower() == "\\trash":
                return f.name
        for f in folders:
            if f.name.lower() in ("trash", "deleted items", "deleted messages"):
                return f.name
        return None

    async def do_delete(self) -> int:
        uids = list(dict.fromkeys(self.options.numbers))
        done: List[str] = []
        self._movedTo: Optional[str] = None

        async def work(session: IMAPSession) -> int:
            trash = None if self.options.expunge else await self.trashFolder(session)
            await self.select(session, self.folder, readOnly=False)
            await self.checkUIDs(session, uids)
            if self.options.expunge or (trash is not None and trash == self.folder):
                await session.store(uids, "+", ["\\Deleted"])
                await session.expunge(uids)
                done.append("removed")
            elif trash is None:
                raise NoTrash(host=self.connection.imap.host)
            else:
                await session.move(uids, trash)
                self._movedTo = trash
                done.append("moved to %s" % (shownName(trash),))
            return 0

        code = await self.withSession(work)
        if getattr(self.options, "json", False):
            self.json({"folder": self.folder, "uids": uids, "removed": done[0] == "removed", "moved_to": self._movedTo})
            return code
        for uid in uids:
            self.io.out("deleted %d (%s)" % (uid, done[0]))
        return code

    async def do_move(self) -> int:
        return await self._transfer("move")

    async def do_copy(self) -> int:
        return await self._transfer("copy")

    async def _transfer(self, verb: str) -> int:
        uids = list(dict.fromkeys(self.options.ids))
        target = self.options.target

        async def work(session: IMAPSession) -> int:
            await self.select(session, self.folder, readOnly=verb == "copy")
            await self.checkUIDs(session, uids)
            await (session.move if verb == "move" else session.copy)(uids, target)
            if self.options.json:
                self.json({"action": verb, "folder": self.folder, "target": target, "uids": uids})
            else:
                self.io.out("%s %d message%s to %s" % ("moved" if verb == "move" else "copied", len(uids), _s(len(uids)), shownName(target)))
            return 0

        return await self.withSession(work)

    async def do_flag(self) -> int:
        uids, changes, folder, asJSON = parseFlagItems(self.options.items)
        self.options.folder = folder or self.options.folder
        self.options.json = asJSON or self.options.json
        uids = list(dict.fromkeys(uids))

        async def work(session: IMAPSession) -> int:
            await self.select(session, self.folder, readOnly=False)
            await self.checkUIDs(session, uids)
            for sign in "+-":
                flags = [f for s, f in changes if s == sign]
                if flags:
                    await session.store(uids, sign, flags)
            infos = await session.summaries(uids)
            if self.options.json:
                self.json([{"uid": i.uid, "flags": list(i.flags)} for i in infos])
            else:
                for i in infos:
                    self.io.out("%d  %s" % (i.uid, " ".join(i.flags) or "(no flags)"))
            return 0

        return await self.withSession(work)

    # -- fetch --

    async def do_fetch(self) -> int:
        from mailnet.cli.main import PROG, Progress

        progress = Progress(self.io.stderr, None, "fetching")
        counts = {"saved": 0, "skipped": 0, "folders": 0}

        async def work(session: IMAPSession) -> int:
            if self.options.all_folders:
                names = [f.name for f in await session.folders() if f.selectable]
            else:
                names = list(dict.fromkeys(self.options.folder)) or ["INBOX"]
            data = await self.inv._inThread(self.reactor, self.state.load)
            memory = data.setdefault("fetched", {})
            plan = []
            for name in names:
                selected = await session.select(name, readOnly=not self.options.delete)
                known = memory.get(name) if not self.options.all else None
                last = 0
                if isinstance(known, dict) and known.get("uidvalidity") == selected.uidValidity:
                    last = int(known.get("last") or 0)
                elif isinstance(known, dict) and known.get("uidvalidity") is not None:
                    self.io.err("%s: note: the IDs of %s changed (UIDVALIDITY %s, was %s): fetching all of it again"
                                % (PROG, shownName(name), selected.uidValidity, known.get("uidvalidity")))
                uids = [u for u in await session.search(Atom(b"UID"), Atom(b"%d:*" % (last + 1,))) if u > last]
                if selected.exists == 0:
                    uids = []
                counts["skipped"] += len(await session.search(Atom(b"UID"), Atom(b"1:%d" % (last,)))) if last else 0
                plan.append((name, selected.uidValidity, last, uids))
            infos: Dict[Tuple[str, int], MessageInfo] = {}
            for name, _validity, _last, uids in plan:
                if not uids:
                    continue
                await session.select(name, readOnly=not self.options.delete)
                for info in await session.summaries(uids):
                    infos[(name, info.uid)] = info
            progress.start(sum(i.size for i in infos.values()))
            total = sum(len(p[3]) for p in plan)
            index = 0
            for name, validity, last, uids in plan:
                if not uids:
                    memory[name] = {"uidvalidity": validity, "last": last}
                    continue
                counts["folders"] += 1
                await session.select(name, readOnly=not self.options.delete)
                saved: List[int] = []
                for uid in uids:
                    index += 1
                    progress.describe("fetching %d/%d" % (index, total))
                    info = infos.get((name, uid))
                    update, done = progress.counter(info.size if info is not None else None)
                    if self.options.to_maildir:
                        target = maildirFor(self.options.to_maildir, name, self.options.all_folders)
                        writer = MaildirWriter(target)
                        await self.inv._inThread(self.reactor, writer.open)
                        try:
                            await session.fetchMessage(uid, sink=self._writing(writer), progress=update)
                            await self.inv._inThread(self.reactor, writer.close)
                        except BaseException:
                            await self.inv._inThread(self.reactor, writer.discard)
                            raise
                    else:
                        spool = MboxWriter(self.options.to_mbox)
                        await self.inv._inThread(self.reactor, spool.open)
                        try:
                            await session.fetchMessage(uid, sink=self._writing(spool), progress=update)
                            await self.inv._inThread(self.reactor, spool.close, self.inv.now())
                        finally:
                            await self.inv._inThread(self.reactor, spool.discard)
                    done()
                    saved.append(uid)
                    counts["saved"] += 1
                    memory[name] = {"uidvalidity": validity, "last": max(uid, last)}
                    await self.inv._inThread(self.reactor, self.state.save, data)
                if self.options.delete and saved:
                    await session.store(saved, "+", ["\\Deleted"])
                    await session.expunge(saved)
            await self.inv._inThread(self.reactor, self.state.save, data)
            return 0

        try:
            code = await self.withSession(work)
        finally:
            progress.close()
        target = self.options.to_maildir or self.options.to_mbox
        saved = counts["saved"]
        if getattr(self.options, "json", False):
            self.json({"target": target, "fetched": saved, "skipped": counts["skipped"], "deleted": saved if self.options.delete else 0})
            return code
        line = "fetched %d %smessage%s into %s%s" % (
            saved, "new " if counts["skipped"] else "", _s(saved), target,
            ", deleted from the server" if self.options.delete and saved else "")
        if counts["skipped"]:
            line += "; %d fetched before were skipped (--all fetches them again)" % (counts["skipped"],)
        self.io.out(line)
        return code

    def _writing(self, writer: Any) -> Callable[[bytes], defer.Deferred]:
        return lambda chunk: self.inv._inThread(self.reactor, writer.write, chunk)

    # -- send: the copy in Sent --

    async def do_send(self) -> int:
        from mailnet.cli.main import PartialDelivery

        try:
            code = await self.inv.do_send(self.reactor)
        except PartialDelivery:
            await self.saveSent()
            raise
        await self.saveSent()
        return code

    async def saveSent(self) -> None:
        from mailnet.cli.main import PROG

        if getattr(self.options, "no_save_sent", False):
            return
        data = sentCopy(self.inv.prepared["message"], getattr(self.options, "bcc", []))

        async def work(session: IMAPSession) -> int:
            folders = await session.folders()
            sent = next((f.name for f in folders if (f.specialUse or "").lower() == "\\sent"), None)
            sent = sent or next((f.name for f in folders if f.name.lower() in ("sent", "sent items", "sent messages")), "Sent")
            try:
                await session.append(sent, data, ["\\Seen"])
            except NoSuchFolder:
                await session.create(sent)
                await session.append(sent, data, ["\\Seen"])
            return 0

        try:
            await self.withSession(work)
        except ClientError as e:
            from mailnet.cli.main import shown

            self.io.err("%s: warning: the message was sent, but its copy in Sent was not stored: %s (--no-save-sent skips the copy)"
                        % (PROG, shown(str(e))))

    # -- watch --

    async def do_watch(self) -> int:
        from mailnet.cli.main import PROG

        folder = self.folder
        last: Optional[int] = None
        validity: Optional[int] = None
        backoff = FIRST_BACKOFF
        first = True
        while True:
            try:
                session = await self.session()
            except (AuthenticationFailed, TLSFailed, TLSUnavailable, PlaintextRefused, ConfigError):
                raise
            except ClientError as e:
                if first:
                    raise
                self.io.err("%s: %s; trying again in %g s" % (PROG, _shownError(e), backoff))
                await task.deferLater(self.reactor, backoff, lambda: None)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            try:
                selected = await session.select(folder, readOnly=True)
                if validity != selected.uidValidity or last is None:
                    if last is not None:
                        self.io.err("%s: note: the IDs of %s changed (UIDVALIDITY %s): watching from now on" % (PROG, shownName(folder), selected.uidValidity))
                    validity = selected.uidValidity
                    existing = await session.search(Atom(b"ALL"))
                    last = max(existing, default=0)
                    if selected.uidNext:
                        last = max(last, selected.uidNext - 1)
                if first:
                    self.io.err("%s: watching %s on %s (Ctrl-C to stop)" % (PROG, shownName(folder), self.connection.imap.host))
                else:
                    self.io.err("%s: connected again" % (PROG,))
                first = False
                backoff = FIRST_BACKOFF
                while True:
                    last = await self.announceNew(session, last)
                    await self.idleOnce(session)
            except (ConnectFailed, ServerTimeout, ProtocolError, ServerBye) as e:
                await session.abort()
                if self.inv.interrupted:
                    raise  # Ctrl-C closed the connection: nothing to report
                self.io.err("%s: %s; reconnecting in %g s" % (PROG, _shownError(e), backoff))
                await task.deferLater(self.reactor, backoff, lambda: None)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except BaseException:
                await session.abort()
                raise

    async def announceNew(self, session: IMAPSession, last: int) -> int:
        uids = [u for u in await session.search(Atom(b"UID"), Atom(b"%d:*" % (last + 1,))) if u > last]
        if not uids:
            return last
        for info in await session.summaries(uids):
            await self.announce(info)
        return max(uids)

    async def announce(self, info: MessageInfo) -> None:
        document = messageJSON(info)
        document["folder"] = self.folder
        if self.options.exec_:
            from mailnet.cli.main import PROG

            environ = dict(self.io.environ)
            environ.update({
                "MAILNET_UID": str(info.uid), "MAILNET_FOLDER": self.folder,
                "MAILNET_FROM": _clean(document["from"]), "MAILNET_SUBJECT": _clean(document["subject"]),
                "MAILNET_DATE": _clean(document["date"]),
            })
            environ.pop("MAILNET_PASSWORD", None)
            status = await runCommand(self.reactor, self.options.exec_, environ, (json.dumps(document) + "\n").encode("ascii"), self.io)
            if status != 0:
                self.io.err("%s: warning: --exec exited with status %s for message %d" % (PROG, status, info.uid))
            return
        if self.options.json:
            self.io.out(json.dumps(document, ensure_ascii=False))
        else:
            self.io.out(summaryLine(info))

    async def idleOnce(self, session: IMAPSession) -> None:
        """IDLE until something arrives (or L{IDLE_RENEW} passes), then DONE."""
        if b"IDLE" not in session.capabilities:
            await task.deferLater(self.reactor, 30, lambda: None)
            await session.noop()
            return
        event: defer.Deferred = defer.Deferred()

        def wake(result: Any = None) -> Any:
            if not event.called:
                event.callback(None)
            return result

        idling = session.idle(lambda response: wake() if response.kind in (b"EXISTS", b"RECENT", b"BYE") else None)
        idling.ended.addBoth(wake)
        await idling.started
        timer = self.reactor.callLater(IDLE_RENEW, wake)
        try:
            await event
        finally:
            if timer.active():
                timer.cancel()
        if not idling.ended.called:
            await idling.done()
        if idling.error is not None:
            raise idling.error


class _Command(ProcessProtocol):
    def __init__(self, stdin: bytes, io: Any) -> None:
        self.stdin = stdin
        self.io = io
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        stream = self.io.stdout if childFD == 1 else self.io.stderr
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        self.ended.callback(getattr(value, "exitCode", None) if getattr(value, "signal", None) is None else "signal %s" % (value.signal,))


def runCommand(reactor: Any, command: str, environ: Dict[str, str], stdin: bytes, io: Any) -> defer.Deferred:
    """
    Run C{command} with C{/bin/sh}: the message's JSON on its standard
    input, its output straight to ours (when ours are real files).

    @return: Deferred firing with its exit status.
    """
    childFDs: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}
    for fd, stream in ((1, io.stdout), (2, io.stderr)):
        try:
            stream.flush()
            if stream.fileno() == fd:
                childFDs[fd] = fd
        except (AttributeError, OSError, ValueError):
            pass
    protocol = _Command(stdin, io)
    reactor.spawnProcess(protocol, "/bin/sh", ["/bin/sh", "-c", command], env=environ, childFDs=childFDs)
    return protocol.ended


class NoSuchUIDInFolder(NoSuchMessage):
    """there is no message with ID {uid} in {folder} ('list' shows the IDs)"""


# --- output helpers ---------------------------------------------------------------


def shownName(name: str) -> str:
    from mailnet.cli.main import shown

    return shown(name)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _clean(text: str) -> str:
    return re.sub("[\x00-\x1f\x7f]", " ", text)


def _shownError(error: BaseException) -> str:
    from mailnet.cli.main import shown

    return shown(str(error))


def messageJSON(info: MessageInfo) -> Dict[str, Any]:
    summary = summarize(info.uid, info.size, info.headers, str(info.uid))
    return {
        "uid": info.uid,
        "from": summary.sender,
        "subject": summary.subject,
        "date": summary.date,
        "size": info.size,
        "flags": list(info.flags),
        "unseen": "\\Seen" not in info.flags,
    }


def summaryLine(info: MessageInfo) -> str:
    from mailnet.cli.main import _size, fit

    summary = summarize(info.uid, info.size, info.headers)
    mark = ("N" if "\\Seen" not in info.flags else " ") + ("!" if "\\Flagged" in info.flags else " ")
    return "%6d %s %s  %s  %s  %s" % (info.uid, mark, fit(summary.sender, 28), fit(summary.subject, 40), fit(summary.date, 31), _size(info.size))


def sentCopy(message: bytes, bcc: Sequence[str]) -> bytes:
    """
    The copy of a sent message for the Sent folder: the message, with a
    C{Bcc:} field naming the hidden recipients (only the sender's copy
    says who they were, as mail programs keep it).
    """
    from mailnet.cli.main import _addresses, _formatAddress

    pairs = _addresses(bcc)
    if not pairs:
        return message
    from email.policy import SMTP

    field = SMTP.header_factory("Bcc", ", ".join(_formatAddress(p) for p in pairs))
    return SMTP.fold_binary("Bcc", field) + message


# --- local Maildir, written in pieces ------------------------------------------------


def maildirFor(root: str, folder: str, allFolders: bool) -> str:
    """INBOX into C{root}; with C{--all-folders} others into Maildir++ C{root/.Name}."""
    if not allFolders or folder == "INBOX":
        return root
    from mailnet.message import safeFilename

    name = safeFilename(folder.replace("/", ".").replace(os.sep, "."), set())
    return os.path.join(root, "." + name.lstrip("."))


class MaildirWriter:
    """
    One message into a local Maildir, written as it arrives: into C{tmp/}
    piece by piece (CRLF made LF, also across pieces), then fsync, rename
    into C{new/}, fsync C{new/}.  The methods do file I/O: run them in a
    thread.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._file: Any = None
        self._tmp = self._final = ""
        self._carry = b""

    def _error(self, e: OSError) -> Exception:
        from mailnet.cli.main import LocalFileError

        return LocalFileError(path=self.directory, reason=e.strerror or str(e))

    def open(self) -> None:
        from mailnet.store.maildir import ensureMaildir, uniqueName

        try:
            ensureMaildir(self.directory)
            name = uniqueName()
            self._tmp = os.path.join(self.directory, "tmp", name)
            self._final = os.path.join(self.directory, "new", name)
            self._file = open(self._tmp, "xb")
        except OSError as e:
            raise self._error(e)

    def write(self, chunk: bytes) -> None:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        try:
            self._file.write(data.replace(b"\r\n", b"\n"))
        except OSError as e:
            raise self._error(e)

    def close(self) -> None:
        from mailnet.store.maildir import fsyncDirectory

        try:
            self._file.write(self._carry)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._tmp, self._final)
            fsyncDirectory(os.path.join(self.directory, "new"))
        except OSError as e:
            raise self._error(e)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            try:
                os.unlink(self._tmp)
            except OSError:
                pass


_QUOTED_FROM = re.compile(rb">*From ")


class MboxWriter:
    """
    One message appended to an mbox (mboxrd) file without holding it in
    memory: the pieces are spooled to a temporary file as they arrive, then
    copied line by line (C{>*From } quoted, LF line endings) under an
    exclusive lock, synced; a failed append is cut off again.  The methods
    do file I/O: run them in a thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._spool: Any = None

    def _error(self, e: OSError) -> Exception:
        from mailnet.cli.main import LocalFileError

        return LocalFileError(path=self.path, reason=e.strerror or str(e))

    def open(self) -> None:
        import tempfile

        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            self._spool = tempfile.TemporaryFile(dir=directory if os.path.isdir(directory) else None)
        except OSError as e:
            raise self._error(e)

    def write(self, chunk: bytes) -> None:
        try:
            self._spool.write(chunk)
        except OSError as e:
            raise self._error(e)

    def close(self, when: datetime.datetime) -> None:
        import fcntl

        from mailnet.message import envelopeSenderOf

        spool = self._spool
        spool.seek(0)
        sender = envelopeSenderOf(spool.read(65536)) or "MAILER-DAEMON"
        spool.seek(0)
        separator = "From %s %s\n" % (re.sub(r"\s", "_", sender), when.strftime("%a %b %e %H:%M:%S %Y"))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "ab") as f:
                fcntl.lockf(f, fcntl.LOCK_EX)
                start = os.fstat(f.fileno()).st_size
                try:
                    f.write(separator.encode("utf-8"))
                    last = b"\n"
                    for line in spool:
                        line = line.replace(b"\r\n", b"\n")
                        if _QUOTED_FROM.match(line):
                            line = b">" + line
                        f.write(line)
                        last = line
                    f.write(b"\n" if last.endswith(b"\n") else b"\n\n")
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    f.flush()
                    os.ftruncate(f.fileno(), start)  # no half message left behind
                    raise
                finally:
                    fcntl.lockf(f, fcntl.LOCK_UN)
        except OSError as e:
            raise self._error(e)

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


async def execute(invocation: Any, reactor: Any) -> int:
    """Run C{invocation}'s command over IMAP.  @return: the exit status."""
    return await IMAPCommands(invocation, reactor).run()


__all__ = ["COMMANDS", "extendParser", "wanted", "execute", "Folder", "Failure"]
