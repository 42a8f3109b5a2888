# -*- test-case-name: tests.test_bounce -*-
"""
Delivery status notifications: bounces and delay warnings (RFC 3464).

A notification is a C{multipart/report; report-type=delivery-status}
message (RFC 6522) with three parts: a note for people, the
C{message/delivery-status} fields for programs, and the original header
(C{text/rfc822-headers}).  It is sent from the null sender (RFC 5321 §4.5.5)
so it can never bounce back.
"""

import datetime
import email.policy
import io
import re
import time
from email.generator import BytesGenerator
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid
from typing import List, Optional, Sequence

import attr

from mailnet.escape import asciiEscape, escape

FAILED = "failed"
DELAYED = "delayed"

_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=78)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# The most of the original header section a notification carries: whole
# fields only, never one cut in the middle.
MAX_RETURNED_HEADER = 64 * 1024


@attr.s(frozen=True, auto_attribs=True)
class RecipientResult:
    """
    What happened to one recipient, for a notification.

    @ivar address: the recipient (C{Final-Recipient}).
    @ivar action: L{FAILED} or L{DELAYED} (RFC 3464 §2.3.3).
    @ivar status: the RFC 3463 status code, such as C{"5.1.1"}.
    @ivar diagnostic: the remote server's reply (C{"550 5.1.1 unknown"}), or
        our own explanation; L{None} if there is none.
    @ivar remoteMTA: the host that gave the reply, if any.
    @ivar willRetryUntil: for a delay, when the retries end (seconds since
        the epoch), if known.
    """

    address: str
    action: str
    status: str
    diagnostic: Optional[str] = None
    remoteMTA: Optional[str] = None
    willRetryUntil: Optional[float] = None


def statusFromReply(reply: str, permanent: bool) -> str:
    """
    The RFC 3463 status of an SMTP reply: its enhanced status code if it
    has one (RFC 2034), else a generic one for the reply's class.
    """
    match = _STATUS.search(reply[:20])
    if match:
        return ".".join(match.groups())
    return "5.0.0" if permanent else "4.0.0"


def _text(data: str) -> str:
    """One line of text: no line breaks or control characters can slip in from remote replies."""
    return escape(" ".join(data.split()))


def _fields(pairs: Sequence[tuple]) -> Message:
    block = Message()
    for name, value in pairs:
        if value is not None:
            # RFC 3464 §2.1.2: the fields are ASCII text (a Diagnostic-Code
            # is "smtp; 550 ..."), never RFC 2047 encoded words: anything
            # else is escaped.
            block[name] = asciiEscape(_text(value))
    return block


def wholeFields(headers: bytes, limit: int = MAX_RETURNED_HEADER) -> bytes:
    """
    The header section to return in a notification: up to its blank line,
    at most C{limit} octets, and only whole fields (with their
    continuation lines).  Without a blank line, C{headers} may have been
    cut by whoever read it, so its last field is left out unless it ends
    in a line ending.
    """
    end = headers.find(b"\r\n\r\n")
    if end >= 0:
        headers = headers[: end + 2]
        if len(headers) <= limit:
            return headers
    elif len(headers) <= limit and headers.endswith(b"\r\n") and len(headers) < MAX_RETURNED_HEADER:
        return headers
    # Cut before the last field that starts within the limit: a line
    # ending followed by something other than white space.
    window = headers[: limit + 1]
    cut = len(window)
    while cut > 0:
        cut = window.rfind(b"\r\n", 0, cut - 1)
        if cut < 0:
            return b""
        if window[cut + 2 : cut + 3] not in (b" ", b"\t") and cut + 2 < len(window):
            return window[: cut + 2]
    return b""


def _when(moment: float) -> str:
    # RFC 5322 §3.3: +0000 is UTC (-0000 would mean "zone unknown").
    return format_datetime(datetime.datetime.fromtimestamp(moment, datetime.timezone.utc))


def _humanText(reportingMTA: str, results: Sequence[RecipientResult], delayed: bool) -> str:
    if delayed:
        lines = [
            "This is the mail system at host %s." % (reportingMTA,),
            "",
            "Your message could not be delivered yet to the recipients below.",
            "It is still in the queue and will be retried; you do not need to",
            "send it again.  You will be told if delivery finally fails.",
            "",
        ]
    else:
        lines = [
            "This is the mail system at host %s." % (reportingMTA,),
            "",
            "Your message could not be delivered to one or more recipients.",
            "It is attached below (header only).",
            "",
        ]
    for result in results:
        lines.append("<%s>: %s" % (escape(result.address), _text(result.diagnostic or result.status)))
    lines.append("")
    return "\n".join(lines)


def makeBounce(
    reportingMTA: str,
    originalSender: str,
    results: Sequence[RecipientResult],
    originalHeaders: bytes,
    arrival: float,
    now: Optional[float] = None,
) -> bytes:
    """
    Build a delivery status notification.

    It is a delay warning when every result's action is L{DELAYED}, else a
    bounce (delayed results are then left out: a bounce reports failures).

    @param reportingMTA: this host's name.
    @param originalSender: the envelope sender of the original message,
        who gets the notification (never the null sender: the caller
        checks).
    @param results: one L{RecipientResult} per recipient reported.
    @param originalHeaders: the original message's header section (CRLF
        line endings).
    @param arrival: when the original arrived (seconds since the epoch).
    @param now: the time of the report (seconds since the epoch).
    @return: the message, with CRLF line endings.
    """
    if now is None:
        now = time.time()
    delayed = all(r.action == DELAYED for r in results)
    if not delayed:
        results = [r for r in results if r.action != DELAYED]

    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@%s>" % (reportingMTA,)
    report["To"] = "<%s>" % (originalSender,)
    report["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = _when(now)
    report["Message-ID"] = make_msgid("dsn", domain=reportingMTA)
    # RFC 3834 §5: automatic responses say so, so nobody replies to them.
    report["Auto-Submitted"] = "auto-replied"
    report.preamble = "This is a MIME-encapsulated message."

    note = _humanText(reportingMTA, results, delayed)
    human = MIMEText(note, "plain", "us-ascii" if note.isascii() else "utf-8")
    human["Content-Description"] = "Notification"
    report.attach(human)

    # RFC 3464 §2.2: per-message fields, then a block per recipient (§2.3).
    status = MIMEBase("message", "delivery-status")
    status["Content-Description"] = "Delivery report"
    blocks: List[Message] = [
        _fields(
            [
                ("Reporting-MTA", "dns; %s" % (reportingMTA,)),
                ("Arrival-Date", _when(arrival)),
            ]
        )
    ]
    for result in results:
        blocks.append(
            _fields(
                [
                    ("Final-Recipient", "rfc822; %s" % (result.address,)),
                    ("Action", result.action),
                    ("Status", result.status),
                    ("Remote-MTA", None if result.remoteMTA is None else "dns; %s" % (result.remoteMTA,)),
                    ("Diagnostic-Code", None if result.diagnostic is None else "smtp; %s" % (result.diagnostic,)),
                    ("Last-Attempt-Date", _when(now)),
                    (
                        "Will-Retry-Until",  # RFC 3464 §2.3.9: delays only
                        _when(result.willRetryUntil)
                        if result.willRetryUntil is not None and result.action == DELAYED
                        else None,
                    ),
                ]
            )
        )
    status.set_payload(blocks)  # type: ignore[arg-type]
    report.attach(status)

    # RFC 6522 §4 / RFC 3462: the original header only, never the body.
    headers = MIMEBase("text", "rfc822-headers")
    headers["Content-Description"] = "Undelivered message header"
    text = wholeFields(originalHeaders).decode("ascii", "surrogateescape")
    if not text.endswith("\n"):
        text += "\n"
    headers.set_payload(text.replace("\r\n", "\n"))
    headers["Content-Transfer-Encoding"] = "7bit" if text.isascii() else "8bit"
    report.attach(headers)

    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(report)
    return _crlf(out.getvalue())


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)

