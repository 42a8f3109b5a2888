# -*- test-case-name: tests.test_errors -*-
"""
Error classes.  For errors a person sees, the docstring is the message
template: C{str(error)} formats it with the keyword arguments given.
"""

from typing import Any


class MailnetError(Exception):
    """mailnet failed."""

    def __init__(self, **details: Any) -> None:
        self.details = details
        super().__init__(self._message())

    def _message(self) -> str:
        template = (self.__doc__ or self.__class__.__name__).strip()
        try:
            return template.format(**self.details)
        except (KeyError, IndexError):
            return template


class BadAddress(MailnetError):
    """{address!r} is not a valid mail address: {reason}."""


class BadDomain(BadAddress):
    """{address!r} is not a valid domain name."""


class ConfigError(MailnetError):
    """{where}: {problem}"""


class AccountError(MailnetError):
    """An account operation failed."""


class DomainExists(AccountError):
    """Domain {domain} already exists."""


class UnknownDomain(AccountError):
    """Domain {domain} is not a local domain; add it first with 'mailnet-admin domain add {domain}'."""


class UserExists(AccountError):
    """{address} already exists (as a user or an alias)."""


class UnknownUser(AccountError):
    """There is no user {address}."""


class UnknownAlias(AccountError):
    """There is no alias {alias}."""


class AliasExpansionTooLarge(AccountError):
    """The aliases of {address} expand to more than {limit} addresses; split the alias or raise the limit."""


class LookAlikeAddress(AccountError):
    """{address} looks like the existing {existing} (they differ only in case, width or a similar form); choose another name."""


class MailboxInUse(MailnetError):
    """The mailbox of {address} is in use by another session."""


class LoginBusy(MailnetError):
    """Too many login attempts in progress, try again later"""


class MessageGone(MailnetError):
    """Message {uid} was removed by another session."""


class SMTPReply(MailnetError):
    """{code} {text}"""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        # MailnetError.__init__ inlined (a reply is made for every command):
        # the same details and message, without the keyword round trip.
        self.details = {"code": code, "text": text}
        Exception.__init__(self, "%s %s" % (code, text))

    def _message(self) -> str:
        # The docstring's template, without str.format: a reply is made
        # for every command.
        return "%s %s" % (self.code, self.text)


class UnknownQueueEntry(MailnetError):
    """There is no queued message {id}; 'mailnet-admin queue list' shows the queue."""


# --- the mail client (mailnet-cli, mailnet.client) -------------------------
# The docstrings are what mailnet-cli prints after "mailnet-cli: error: ".


class ClientError(MailnetError):
    """{problem}"""


class ConnectFailed(ClientError):
    """cannot connect to {host} port {port}: {reason}"""


class ServerTimeout(ClientError):
    """{host} port {port} did not answer within {seconds} seconds"""


class NoGreeting(ServerTimeout):
    """{host} port {port} sent no greeting within {seconds} seconds; if it is an implicit-TLS port ({implicitPorts}), use --tls implicit"""


class WrongService(ConnectFailed):
    """{host} port {port} is {what}, not {expected} (it greeted with {greeting}); {hint}"""


class TLSFailed(ClientError):
    """TLS with {host} port {port} failed: {reason}"""


class TLSUnavailable(ClientError):
    """{host} port {port} does not offer {command}; not continuing without TLS (try --tls implicit)"""


class PlaintextRefused(ClientError):
    """not sending the password for {user} unencrypted to {host}; use TLS, or --allow-plaintext on a trusted network"""


class AuthenticationFailed(ClientError):
    """{host} refused the login of {user}: {reply}"""


class RecipientsRefused(ClientError):
    """{host} refused {refused}"""


class MessageTooLarge(ClientError):
    """{host} refused the message ({size}) as too large: {reply}; attachments grow by a third when sent (base64), so a file must stay well under the limit"""


class NoSuchMessage(ClientError):
    """there is no message {number} (the mailbox has {count})"""


class ServerError(ClientError):
    """{host} answered {command} with: {reply}"""


class FolderError(MailnetError):
    """A folder operation failed."""


class NoSuchFolder(FolderError):
    """There is no folder named {name!r}."""


class FolderExists(FolderError):
    """A folder named {name!r} already exists."""


class BadFolderName(FolderError):
    """{name!r} cannot name a folder: {reason}."""


class CannotDeleteFolder(FolderError):
    """The folder {name!r} cannot be deleted: {reason}."""
