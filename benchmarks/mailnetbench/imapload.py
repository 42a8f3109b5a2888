# -*- test-case-name: tests.test_benchmarks -*-
"""
A lean IMAP load client (blocking sockets, one per session) and the
measurements of issue 12, run the same way against any IMAP server:

  - pipelined APPEND of many small messages (LITERAL+ when offered);
  - SELECT of the folder they went into;
  - C{UID FETCH 1:* (FLAGS)};
  - C{FETCH 1:* (BODY.PEEK[HEADER])}: every header;
  - a client's first sync: C{UID FETCH 1:* (UID FLAGS INTERNALDATE
    RFC822.SIZE ENVELOPE)};
  - C{UID SEARCH SUBJECT}, C{UID SEARCH BODY} for a word one message has;
  - the server's memory per IDLE session.

Only the time between sending a command and reading its tagged reply is
measured; the client parses just enough (literals) to find that reply.
"""

import re
import socket
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


class IMAPError(Exception):
    """The server answered NO or BAD."""


class Session:
    """
    One IMAP connection.

    @ivar capabilities: the upper-cased capability atoms last seen.
    """

    def __init__(self, host: str, port: int, timeout: float = 120) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        self._tag = 0
        greeting = self._readLine()
        if not greeting.startswith(b"* OK"):
            raise IMAPError(greeting.decode("ascii", "replace"))
        self.capabilities = self._capabilities(greeting)

    def _readLine(self) -> bytes:
        line = self.file.readline(1 << 20)
        if not line:
            raise IMAPError("the server closed the connection")
        return line

    def _readResponse(self) -> bytes:
        """One response line, literals included (returned inline)."""
        parts = []
        while True:
            line = self._readLine()
            parts.append(line)
            match = _LITERAL.search(line)
            if not match:
                return b"".join(parts)
            parts.append(self.file.read(int(match.group(1))))

    @staticmethod
    def _capabilities(line: bytes) -> frozenset:
        match = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
        return frozenset(match.group(1).upper().split()) if match else frozenset()

    def nextTag(self) -> bytes:
        self._tag += 1
        return b"a%d" % (self._tag,)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def waitFor(self, tag: bytes, untagged: Optional[Callable[[bytes], None]] = None) -> bytes:
        """Read until C{tag}'s reply; C{untagged} sees every other line."""
        while True:
            response = self._readResponse()
            if response.startswith(tag + b" "):
                status = response[len(tag) + 1 :].split(b" ", 1)[0]
                if status != b"OK":
                    raise IMAPError(response.decode("utf-8", "replace").strip())
                return response
            if untagged is not None:
                untagged(response)

    def command(self, text: bytes, untagged: Optional[Callable[[bytes], None]] = None) -> bytes:
        tag = self.nextTag()
        self.send(tag + b" " + text + b"\r\n")
        return self.waitFor(tag, untagged)

    def login(self, user: str, password: str) -> None:
        self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        self.capabilities = self._capabilities(self.command(b"CAPABILITY", self._seeCapability))

    def _seeCapability(self, line: bytes) -> None:
        if line.startswith(b"* CAPABILITY"):
            self.capabilities = self._capabilities(line)

    def close(self) -> None:
        try:
            self.command(b"LOGOUT")
        except (OSError, IMAPError):
            pass
        self.sock.close()


def appendPipelined(session: Session, folder: str, messages: Sequence[bytes], window: int = 64) -> float:
    """
    APPEND every message, keeping up to C{window} commands in flight (with
    LITERAL+; one at a time, waiting for each continuation, without it).

    @return: seconds taken.
    """
    nonSync = b"LITERAL+" in session.capabilities or b"LITERAL-" in session.capabilities
    start = time.perf_counter()
    if not nonSync:
        for message in messages:
            tag = session.nextTag()
            session.send(b"%s APPEND %s {%d}\r\n" % (tag, folder.encode(), len(message)))
            line = session._readLine()
            if not line.startswith(b"+"):
                raise IMAPError(line.decode("utf-8", "replace"))
            session.send(message + b"\r\n")
            session.waitFor(tag)
        return time.perf_counter() - start
    pending: List[bytes] = []
    for message in messages:
        tag = session.nextTag()
        session.send(b"%s APPEND %s {%d+}\r\n%s\r\n" % (tag, folder.encode(), len(message), message))
        pending.append(tag)
        if len(pending) >= window:
            session.waitFor(pending.pop(0))
    for tag in pending:
        session.waitFor(tag)
    return time.perf_counter() - start


def timed(session: Session, text: bytes) -> Tuple[float, int]:
    """@return: seconds for one command, and how many untagged lines came."""
    count = [0]

    def seen(line: bytes) -> None:
        count[0] += 1

    start = time.perf_counter()
    session.command(text, seen)
    return time.perf_counter() - start, count[0]


def makeMessages(count: int, size: int, marker: Tuple[int, str]) -> List[bytes]:
    """
    C{count} messages of about C{size} octets (CRLF), each with its own
    subject; message C{marker[0]} has the word C{marker[1]} in its subject
    and body, so that searches find exactly one.
    """
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu\r\n"
    messages = []
    for i in range(count):
        word = marker[1].encode() if i == marker[0] else b"ordinary"
        head = (
            b"From: Load <load@sender.test>\r\nTo: <user@bench.test>\r\nSubject: message %d %s\r\n"
            b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <%d.bench@sender.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" % (i, word, i)
        )
        body = line * max(1, (size - len(head)) // len(line) - 1) + b"word: " + word + b"\r\n"
        messages.append(head + body)
    return messages


def openIdle(host: str, port: int, user: str, password: str, count: int) -> List[Session]:
    """C{count} sessions, logged in, INBOX selected, in IDLE."""
    sessions = []
    for _ in range(count):
        session = Session(host, port)
        session.login(user, password)
        session.command(b"SELECT INBOX")
        tag = session.nextTag()
        session.send(tag + b" IDLE\r\n")
        line = session._readLine()
        if not line.startswith(b"+"):
            raise IMAPError(line.decode("utf-8", "replace"))
        session.idleTag = tag  # type: ignore[attr-defined]
        sessions.append(session)
    return sessions


def closeIdle(sessions: Sequence[Session]) -> None:
    for session in sessions:
        try:
            session.send(b"DONE\r\n")
            session.waitFor(session.idleTag)  # type: ignore[attr-defined]
        except (OSError, IMAPError):
            pass
        session.close()


def measure(host: str, port: int, user: str, password: str, count: int, size: int) -> Dict[str, float]:
    """
    One round of every figure but IDLE memory, on a fresh folder.

    @return: figure name -> seconds (C{append_per_s} is a rate).
    """
    marker = (count // 2, "zanzibar%d" % (int(time.time() * 1000) % 100000,))
    messages = makeMessages(count, size, marker)
    folder = "bench%d" % (int(time.time() * 1e6) % 10**9,)
    session = Session(host, port)
    session.login(user, password)
    session.command(b"CREATE " + folder.encode())
    seconds = appendPipelined(session, folder, messages)
    session.close()
    results = {"append_per_s": count / seconds}
    # A new session, as a client that opens the folder later.
    session = Session(host, port)
    session.login(user, password)
    results["select"], _ = timed(session, b"SELECT " + folder.encode())
    results["fetch_flags"], n = timed(session, b"UID FETCH 1:* (FLAGS)")
    assert n >= count, (n, count)
    results["fetch_headers"], _ = timed(session, b"FETCH 1:* (BODY.PEEK[HEADER])")
    results["first_sync"], _ = timed(session, b"UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)")
    found: List[bytes] = []
    start = time.perf_counter()
    session.command(b"UID SEARCH SUBJECT " + marker[1].encode(), found.append)
    results["search_subject"] = time.perf_counter() - start
    start = time.perf_counter()
    session.command(b"UID SEARCH BODY " + marker[1].encode(), found.append)
    results["search_body"] = time.perf_counter() - start
    hits = [line for line in found if line.startswith(b"* SEARCH")]
    assert all(len(line.split()) == 3 for line in hits), hits
    session.command(b"CLOSE")
    session.command(b"DELETE " + folder.encode())
    session.close()
    return results
