# -*- test-case-name: tests.test_cli -*-
"""
mailnet-cli's account settings: C{$XDG_CONFIG_HOME/mailnet/config.ini}
(C{~/.config/mailnet/config.ini} by default), overridden by the command
line.  Passwords never come from either: see L{getPassword}.

The file::

    [mailnet]
    default = work              ; else the first account

    [account work]              ; or just [work]
    host = mail.example.test
    smtp_port = 587             ; default by tls mode: 587/465
    pop3_port = 110             ; default by tls mode: 110/995
    imap_port = 143             ; default by tls mode: 143/993
    protocol = imap             ; imap or pop3 (default pop3, or imap with an imap_port)
    user = alice@example.test
    tls = starttls              ; starttls, implicit or none
    cafile = ~/certs/ca.pem     ; default: the platform's trust store
    password_command = pass show mail/work
    from = Alice <alice@example.test>
"""

import configparser
import getpass
import os
import subprocess
from typing import IO, Any, Mapping, Optional

import attr

from mailnet.client.tls import DEFAULT_PORTS, ServerEndpoint, TLSMode
from mailnet.errors import ClientError, ConfigError

KEYS = ("host", "smtp_port", "pop3_port", "imap_port", "protocol", "user", "tls", "cafile", "password_command", "from")

#: The retrieval protocols (C{protocol} in the account, C{--protocol}).
PROTOCOLS = ("imap", "pop3")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Account:
    """
    One account's settings as written in the file (all optional).
    """

    name: str = ""
    host: Optional[str] = None
    smtp_port: Optional[int] = None
    pop3_port: Optional[int] = None
    user: Optional[str] = None
    tls: Optional[TLSMode] = None
    cafile: Optional[str] = None
    password_command: Optional[str] = None
    sender: Optional[str] = None
    imap_port: Optional[int] = None
    protocol: Optional[str] = None


def configPath(environ: Mapping[str, str]) -> str:
    """The XDG Base Directory location of the file."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "mailnet", "config.ini")


def _port(where: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 65536:
        raise ConfigError(where=where, problem="a port is a number from 1 to 65535, not %r" % (text,))
    return value


def tlsMode(where: str, text: str) -> TLSMode:
    try:
        return TLSMode(text.strip().lower())
    except ValueError:
        raise ConfigError(where=where, problem="tls is one of starttls, implicit, none; not %r" % (text,))


def loadAccount(path: str, name: Optional[str]) -> Account:
    """
    Read the account C{name} (or the default one) from the file at
    C{path}.  A missing file is an empty account unless C{name} was asked
    for.

    @raise ConfigError: unreadable file, unknown account, unknown key or
        bad value (naming the file, section and key).
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        if name:
            raise ConfigError(where=path, problem="no such file, so no account %r" % (name,))
        return Account()
    except OSError as e:
        raise ConfigError(where=path, problem=e.strerror or str(e))
    except (UnicodeDecodeError, configparser.Error) as e:
        from mailnet.config import describeIniError

        raise describeIniError(path, e)

    sections = {}
    for section in parser.sections():
        if section == "mailnet":
            continue
        accountName = section[len("account ") :].strip() if section.startswith("account ") else section.strip()
        sections[accountName] = section
    if parser.has_section("mailnet"):
        for key in parser["mailnet"]:
            if key != "default":
                raise ConfigError(where="%s [mailnet]" % (path,), problem="unknown key %r" % (key,))
    if not name:
        name = parser.get("mailnet", "default", fallback=None) if parser.has_section("mailnet") else None
        if not name:
            if not sections:
                return Account()
            name = next(iter(sections))
    if name not in sections:
        raise ConfigError(where=path, problem="no account %r (known: %s)" % (name, ", ".join(sections) or "none"))
    proxy = parser[sections[name]]
    where = "%s [%s]" % (path, sections[name])
    values: dict = {"name": name}
    for key, value in proxy.items():
        if key not in KEYS:
            raise ConfigError(where=where, problem="unknown key %r (known: %s)" % (key, ", ".join(KEYS)))
        value = value.strip()
        if key == "protocol" and value.lower() not in PROTOCOLS:
            raise ConfigError(where="%s protocol" % (where,), problem="protocol is imap or pop3, not %r" % (value,))
        if key == "protocol":
            values[key] = value.lower()
        elif key in ("smtp_port", "pop3_port", "imap_port"):
            values[key] = _port("%s %s" % (where, key), value)
        elif key == "tls":
            values[key] = tlsMode("%s tls" % (where,), value)
        elif key == "cafile":
            values[key] = os.path.expanduser(value)
        elif key == "from":
            values["sender"] = value
        else:
            values[key] = value
    return Account(**values)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Connection:
    """
    Everything needed to talk to the servers, resolved from the file and
    the command line.
    """

    user: str
    sender: str
    smtp: ServerEndpoint
    pop3: ServerEndpoint
    #: The IMAP server (also for the copy of a sent message in Sent).
    imap: Optional[ServerEndpoint] = None
    #: C{"imap"} or C{"pop3"}: what list, read, save, delete and fetch use.
    protocol: str = "pop3"
    passwordCommand: Optional[str] = None
    #: Why the account's password_command is not used (the command line
    #: named another user or host), or L{None}.
    passwordCommandSkipped: Optional[str] = None


def resolve(account: Account, options: Any) -> Connection:
    """
    Combine the account with the command-line C{options} (which win).

    @raise ConfigError: no user known.
    """
    host = options.host or account.host or "localhost"
    mode = TLSMode(options.tls) if options.tls else (account.tls or TLSMode.starttls)
    user = options.user or account.user
    if not user:
        raise NoUser()
    cafile = options.cafile or account.cafile
    common = dict(host=host, tls=mode, cafile=cafile, insecure=options.insecure, allowPlaintext=options.allow_plaintext)
    smtpPort = options.smtp_port or account.smtp_port or DEFAULT_PORTS[("smtp", mode)]
    pop3Port = options.pop3_port or account.pop3_port or DEFAULT_PORTS[("pop3", mode)]
    imapPort = getattr(options, "imap_port", None) or account.imap_port or DEFAULT_PORTS[("imap", mode)]
    protocol = getattr(options, "protocol", None) or account.protocol
    if protocol is None:
        protocol = "imap" if (getattr(options, "imap_port", None) or account.imap_port) else "pop3"
    sender = account.sender or user
    # The account's password belongs to the account's user on the account's
    # host: never send it for another login or to another server.
    passwordCommand, skipped = account.password_command, None
    if passwordCommand and options.user and options.user.lower() != (account.user or "").lower():
        passwordCommand, skipped = None, "--user %s is not the account's user" % (options.user,)
    elif passwordCommand and options.host and options.host.lower().rstrip(".") != (account.host or "localhost").lower().rstrip("."):
        passwordCommand, skipped = None, "--host %s is not the account's host" % (options.host,)
    if account.sender and options.user and options.user.lower() != (account.user or "").lower():
        sender = user  # the account's From belongs to the account's user
    return Connection(
        user=user,
        sender=sender,
        smtp=ServerEndpoint(port=smtpPort, **common),
        pop3=ServerEndpoint(port=pop3Port, **common),
        imap=ServerEndpoint(port=imapPort, **common),
        protocol=protocol,
        passwordCommand=passwordCommand,
        passwordCommandSkipped=skipped,
    )


class NoUser(ClientError):
    """no user: give --user, or set user in the account (see mailnet-cli --help)"""


class NoPassword(ClientError):
    """no password for {user}: set MAILNET_PASSWORD, password_command in the account, or run interactively{why}"""


class PasswordCommandFailed(ClientError):
    """the password_command failed: {reason}"""


def getPassword(
    connection: Connection, environ: Mapping[str, str], stdin: IO[str], stderr: IO[str], prompt: Any = getpass.getpass
) -> str:
    """
    The password, from (in this order) C{MAILNET_PASSWORD}, the account's
    C{password_command} (its first line of output), or a prompt on the
    terminal.  Never from the command line, never written anywhere.

    What the person gave for this run wins over what the account file
    says; the account's command is not used at all when the command line
    named another user or host (L{resolve}), so that one account's
    password never goes to another login or server.
    """
    if environ.get("MAILNET_PASSWORD"):
        return environ["MAILNET_PASSWORD"]
    if connection.passwordCommand:
        try:
            done = subprocess.run(
                connection.passwordCommand,
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(environ),
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PasswordCommandFailed(reason=str(e))
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise PasswordCommandFailed(
                reason="exit status %d%s" % (done.returncode, (": " + message[0]) if message else "")
            )
        lines = done.stdout.decode("utf-8", "replace").splitlines()
        if not lines or not lines[0]:
            raise PasswordCommandFailed(reason="it printed nothing")
        return lines[0]
    isatty = getattr(stdin, "isatty", None)
    if isatty is not None and isatty():
        return prompt("Password for %s at %s: " % (connection.user, connection.smtp.host), stream=stderr)
    why = ""
    if connection.passwordCommandSkipped:
        why = " (the account's password_command is not used: %s)" % (connection.passwordCommandSkipped,)
    raise NoPassword(user=connection.user, why=why)
