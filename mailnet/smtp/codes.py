# -*- test-case-name: tests.test_smtp_server -*-
"""
The SMTP reply vocabulary: basic reply codes (RFC 5321 §4.2) and enhanced
status codes (RFC 3463, used as RFC 2034 says), each with the section that
defines it, and L{reply} to build a L{mailnet.errors.SMTPReply} from them.

Enhanced status codes go on every reply except the greeting, the EHLO/HELO
lines and the 3xx intermediate replies (RFC 3463 §2 defines classes 2, 4
and 5 only).
"""

from mailnet.errors import SMTPReply

# --- basic reply codes, RFC 5321 §4.2.2 (by number) and §4.2.3 ------------

HELP = 214  # RFC 5321 §4.2.2: help message
SERVICE_READY = 220  # RFC 5321 §4.2.2; also STARTTLS go-ahead, RFC 3207 §4
SERVICE_CLOSING = 221  # RFC 5321 §4.2.2: answer to QUIT
AUTH_SUCCEEDED = 235  # RFC 4954 §6
OK = 250  # RFC 5321 §4.2.2: requested mail action okay, completed
CANNOT_VRFY = 252  # RFC 5321 §3.5.3: cannot VRFY user, but will accept
AUTH_CHALLENGE = 334  # RFC 4954 §4: server challenge (base64)
START_MAIL_INPUT = 354  # RFC 5321 §4.2.2: end with <CRLF>.<CRLF>
SERVICE_UNAVAILABLE = 421  # RFC 5321 §4.2.2: closing transmission channel
LOCAL_ERROR = 451  # RFC 5321 §4.2.2: local error in processing
INSUFFICIENT_STORAGE = 452  # RFC 5321 §4.5.3.1.10: too many recipients
TEMPORARY_AUTH_FAILURE = 454  # RFC 4954 §6
SYNTAX_ERROR = 500  # RFC 5321 §4.2.2: command unrecognized, line too long
ARGUMENT_SYNTAX_ERROR = 501  # RFC 5321 §4.2.2: syntax error in parameters
NOT_IMPLEMENTED = 502  # RFC 5321 §4.2.4: recognised but not implemented
BAD_SEQUENCE = 503  # RFC 5321 §4.2.2: bad sequence of commands
PARAMETER_NOT_IMPLEMENTED = 504  # RFC 5321 §4.2.2; RFC 4954 §4 unknown mechanism
AUTH_REQUIRED = 530  # RFC 4954 §6
AUTH_INVALID = 535  # RFC 4954 §6: credentials invalid
ENCRYPTION_REQUIRED = 538  # RFC 4954 §6: encryption required for mechanism
MAILBOX_UNAVAILABLE = 550  # RFC 5321 §4.2.2: requested action not taken
EXCEEDED_STORAGE = 552  # RFC 5321 §4.2.2; RFC 1870 §6 message size
MAILBOX_NAME_NOT_ALLOWED = 553  # RFC 5321 §4.2.2
TRANSACTION_FAILED = 554  # RFC 5321 §4.2.2
PARAMETERS_NOT_RECOGNIZED = 555  # RFC 5321 §4.2.2: MAIL/RCPT parameters

# --- enhanced status codes, RFC 3463 §3 (class.subject.detail) ------------

S_OK = "2.0.0"  # RFC 3463 §3.1: other or undefined status (success)
S_SENDER_OK = "2.1.0"  # RFC 3463 §3.2: other address status
S_RECIPIENT_OK = "2.1.5"  # RFC 3463 §3.2: destination address valid
S_CANNOT_VRFY = "2.5.0"  # RFC 3463 §3.6
S_AUTH_OK = "2.7.0"  # RFC 4954 §6
T_LOCAL_ERROR = "4.3.0"  # RFC 3463 §3.4: other mail system status
T_SYSTEM_STORAGE = "4.3.1"  # RFC 3463 §3.4: mail system full
T_MAILBOX_FULL = "4.2.2"  # RFC 3463 §3.3: mailbox full
T_IDLE_TIMEOUT = "4.4.2"  # RFC 3463 §3.5: bad connection
T_TOO_MANY_RECIPIENTS = "4.5.3"  # RFC 3463 §3.6
T_POLICY = "4.7.0"  # RFC 3463 §3.8: other security/policy status
P_BAD_DESTINATION = "5.1.1"  # RFC 3463 §3.2: bad destination mailbox address
P_BAD_DESTINATION_SYNTAX = "5.1.3"  # RFC 3463 §3.2
P_BAD_SENDER_SYNTAX = "5.1.7"  # RFC 3463 §3.2
P_MAILBOX_FULL = "5.2.2"  # RFC 3463 §3.3: mailbox full (the message can never fit)
P_MESSAGE_TOO_BIG = "5.3.4"  # RFC 3463 §3.4: message too big for system
P_INVALID_COMMAND = "5.5.1"  # RFC 3463 §3.6
P_SYNTAX_ERROR = "5.5.2"  # RFC 3463 §3.6
P_INVALID_ARGUMENTS = "5.5.4"  # RFC 3463 §3.6
P_AUTH_LINE_TOO_LONG = "5.5.6"  # RFC 4954 §6
P_ROUTING_LOOP = "5.4.6"  # RFC 3463 §3.5: routing loop detected (RFC 5321 §6.3)
P_MEDIA_ERROR = "5.6.0"  # RFC 3463 §3.7: other or undefined media error
P_NON_ASCII_ADDRESS = "5.6.7"  # RFC 6531 §3.7.4.1: non-ASCII needs SMTPUTF8
P_OTHER = "5.0.0"  # RFC 3463 §3.1 (AUTH cancelled, RFC 4954 §4)
P_POLICY = "5.7.0"  # RFC 3463 §3.8; RFC 4954 §6 authentication required
P_NOT_AUTHORIZED = "5.7.1"  # RFC 3463 §3.8: delivery not authorized
P_AUTH_INVALID = "5.7.8"  # RFC 4954 §6
P_ENCRYPTION_REQUIRED = "5.7.11"  # RFC 5248 / RFC 4954 §6 (538)


def reply(code: int, status: str, text: str) -> SMTPReply:
    """
    Build a reply carrying an enhanced status code.

    @param code: the basic reply code (above).
    @param status: the enhanced status code (above), or C{""} for none.
    @param text: the human part; C{"\\n"} separates the lines of a
        multi-line reply.
    """
    if status:
        if "\n" in text:
            text = "\n".join("%s %s" % (status, line) for line in text.split("\n"))
        else:
            text = status + " " + text
    return SMTPReply(code, text)
