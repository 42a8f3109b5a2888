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


class MailboxInUse(MailnetError):
    """The mailbox of {address} is in use by another session."""


class MessageGone(MailnetError):
    """Message {uid} was removed by another session."""


class SMTPReply(MailnetError):
    """{code} {text}"""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(code=code, text=text)


class UnknownQueueEntry(MailnetError):
    """There is no queued message {id}; 'mailnet-admin queue list' shows the queue."""
