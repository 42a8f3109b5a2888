# -*- test-case-name: tests.test_benchmarks -*-
"""
The messages the load generator sends, and how the driver finds them on
disk again: each carries a unique C{X-Bench-Id} header near its top.
"""

import os
import re
from typing import Dict, Iterable, Iterator, Tuple

SENDER = "load@sender.test"

# Maildir files hold LF line endings (mailnet, Postfix, Dovecot) or CRLF.
_ID = re.compile(rb"\r?\nX-Bench-Id: ([!-~]+)\r?\n")
_WIRE_SIZE = re.compile(r",W=(\d+)")

# Headers precede the body; the server adds Return-Path and Received, so
# the id is always within the first few kilobytes.
_HEAD = 16384


def makeBody(size: int) -> bytes:
    """
    A body of C{size} octets (at least one line): 78-octet lines of
    printable text, CRLF-terminated, none starting with a dot, so that the
    wire form and the stored form are the same (RFC 5321 §4.5.2).
    """
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstu\r\n"
    assert len(line) == 78
    whole, rest = divmod(max(size, 2), len(line))
    if rest == 1:
        # No line of one octet: lengthen the last full line instead.
        return line * (whole - 1) + b"y" + line
    body = line * whole
    if rest:
        body += b"y" * (rest - 2) + b"\r\n"
    return body


def header(ident: str, recipient: str) -> bytes:
    """The message's header section (RFC 5322), ending with the blank line."""
    return (
        "From: <%s>\r\nTo: <%s>\r\nSubject: benchmark %s\r\nMessage-ID: <%s@sender.test>\r\n"
        "X-Bench-Id: %s\r\n\r\n" % (SENDER, recipient, ident, ident, ident)
    ).encode("ascii")


def findIds(paths: Iterable[str]) -> Iterator[Tuple[str, str]]:
    """
    @return: C{(id, path)} for each message file that carries an id.
    """
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD)
        except FileNotFoundError:
            continue
        match = _ID.search(head)
        if match:
            yield match.group(1).decode("ascii"), path


def wireSize(path: str) -> int:
    """
    A stored message's size as it was sent (CRLF line endings): the C{W=}
    field of a Dovecot-style file name, else the file's size.
    """
    match = _WIRE_SIZE.search(os.path.basename(path).split(":", 1)[0])
    return int(match.group(1)) if match else os.path.getsize(path)


def messageFiles(maildir: str) -> Iterator[str]:
    """Every message file in a Maildir's C{new/} and C{cur/}."""
    for sub in ("new", "cur"):
        directory = os.path.join(maildir, sub)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                yield os.path.join(directory, name)


def idsOnDisk(maildirs: Iterable[str]) -> Dict[str, int]:
    """How many copies of each id are stored in C{maildirs}."""
    found: Dict[str, int] = {}
    for maildir in maildirs:
        for ident, _ in findIds(messageFiles(maildir)):
            found[ident] = found.get(ident, 0) + 1
    return found
