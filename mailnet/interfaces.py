# -*- test-case-name: tests.test_interfaces -*-
"""
The contracts between mailnet's parts.

Protocols (ESMTP, POP3) talk to storage and authentication only through
these interfaces, so that each side can be replaced by a fake in tests
(see L{mailnet.testing}) and by another implementation in deployments.

Conventions used throughout:
  - An I{address} is a C{str} C{"local@domain"} already validated by
    L{mailnet.address}; stores compare addresses case-insensitively and
    return them lower-cased.
  - Sizes are in octets; message bytes are exactly what goes on the wire
    (CRLF line endings, not dot-stuffed).
  - Methods that touch the disk in a way that may block for long (fsync,
    reading a whole directory) return L{Deferred}s and do that work off the
    reactor thread.  Short SQLite look-ups are synchronous.
"""

from zope.interface import Attribute, Interface


class IAccountStore(Interface):
    """
    Domains, users (with password hashes) and aliases.

    Errors raised are the L{mailnet.errors.AccountError} subclasses named
    below; their docstrings are the text shown to administrators.
    """

    def domains():
        """
        @return: the local domains, sorted.
        @rtype: L{list} of L{str}
        """

    def isLocalDomain(domain):
        """
        @return: whether C{domain} (any case) is one of ours.
        @rtype: L{bool}
        """

    def addDomain(domain):
        """
        Add a local domain.

        @raise mailnet.errors.DomainExists: it is already there.
        @raise mailnet.errors.BadAddress: C{domain} is not a domain name.
        """

    def removeDomain(domain):
        """
        Remove a local domain, with its users and aliases.

        @raise mailnet.errors.UnknownDomain: it is not there.
        """

    def users(domain=None):
        """
        @return: the user addresses, sorted; only C{domain}'s if given.
        @rtype: L{list} of L{str}
        """

    def addUser(address, passwordHash):
        """
        Add a user whose password hash (see L{mailnet.passwords}) is given.

        @raise mailnet.errors.UnknownDomain: the domain is not local.
        @raise mailnet.errors.UserExists: the user (or an alias with that
            address) exists.
        @raise mailnet.errors.BadAddress: C{address} is malformed.
        """

    def setPasswordHash(address, passwordHash):
        """
        @raise mailnet.errors.UnknownUser: no such user.
        """

    def removeUser(address):
        """
        Remove a user (their Maildir is left on disk).

        @raise mailnet.errors.UnknownUser: no such user.
        """

    def passwordHash(address):
        """
        @return: the stored hash for a user, or L{None} if there is no such
            user.  Aliases have no password.
        @rtype: L{str} or L{None}
        """

    def addAlias(alias, targets):
        """
        Make C{alias} deliver to each of C{targets} (addresses, local or
        remote).  C{alias} may be C{"@domain"}: a catch-all for the domain,
        used only for addresses that are neither users nor aliases.

        @raise mailnet.errors.UnknownDomain: the alias's domain is not local.
        @raise mailnet.errors.UserExists: a user has that address.
        @raise mailnet.errors.BadAddress: an address is malformed.
        """

    def removeAlias(alias):
        """
        @raise mailnet.errors.UnknownAlias: no such alias.
        """

    def aliases():
        """
        @return: mapping of alias to its targets, sorted by alias.
        @rtype: L{dict} of L{str} to L{tuple} of L{str}
        """

    def resolve(address):
        """
        Expand an address in a local domain to the final recipients: user
        addresses, and remote addresses that aliases forward to.  Aliases
        are expanded recursively (loops and depth are bounded), duplicates
        removed, order kept.

        @return: the recipients, or L{None} if the address is not
            deliverable here (no user, alias or catch-all).
        @rtype: L{list} of L{str} or L{None}
        """


class IMessageReceiver(Interface):
    """
    One message on its way to durable storage.

    The producer calls L{write} zero or more times, then exactly one of
    L{finish} or L{abort}.
    """

    def write(data):
        """
        Append message bytes (CRLF line endings and no bare CR or LF,
        dot-stuffing already undone).  Must not block for long: buffered file writes only.

        @type data: L{bytes}
        """

    def finish():
        """
        Make the message durable: flush, fsync the file, publish it (rename
        or link into place) and fsync the directories, off the reactor
        thread.  Only when the returned Deferred fires may the server answer
        250.

        @return: a L{Deferred} firing with a short message id (L{str}) for
            logs, or failing if the message could not be stored (the caller
            answers 451 and nothing is published).
        """

    def abort():
        """
        Throw the partial message away (connection lost, size exceeded, bad
        data).  Nothing is published.
        """


class IMailStore(Interface):
    """
    Where mail for local users lives: one Maildir per user.
    """

    def maildir(address):
        """
        @return: the L{IMaildir} of a local user, created on disk if needed.
        @raise mailnet.errors.BadAddress: an address that could not be a
            safe path component (C{/}, C{..}, NUL, control characters).
        """

    def receive(returnPath, mailboxes):
        """
        Start a message for local delivery.

        @param returnPath: the envelope sender (C{""} for the null sender);
            a C{Return-Path:} header is prepended on delivery.
        @param mailboxes: the user addresses to deliver to (each gets its
            own copy, atomically per mailbox).
        @rtype: L{IMessageReceiver}
        """


class IMaildir(Interface):
    """
    One user's Maildir (C{cur/ new/ tmp/}).
    """

    path = Attribute("The Maildir's directory (L{str}).")

    def snapshot():
        """
        List the messages in C{new/} and C{cur/}, oldest delivery first.

        @return: L{Deferred} firing with a L{list} of
            L{mailnet.store.maildir.MessageInfo}.  The C{uid} is the
            Maildir unique name (stable across C{new/}->C{cur/} moves and
            restarts; 1-70 characters in 0x21-0x7E); C{size} is the
            message's size with CRLF line endings, which is what POP3 RETR
            sends (the files hold LF line endings).
        """

    def open(info):
        """
        Open a message for reading in binary mode, wherever it is now
        (C{new/} or C{cur/}).

        @return: a binary file object; the caller closes it.
        @raise mailnet.errors.MessageGone: it was removed meanwhile.
        """

    def markSeen(infos):
        """
        Move messages from C{new/} to C{cur/} with the C{S} flag, keeping
        their uid.

        @return: L{Deferred} firing with L{None}.
        """

    def remove(infos):
        """
        Delete messages (already missing ones are ignored), fsync the
        directories.

        @return: L{Deferred} firing with L{None}.
        """


class IMailbox(Interface):
    """
    The POP3 avatar: a logged-in user's mailbox, held exclusively until
    logout.
    """

    address = Attribute("The user's address (L{str}).")
    maildir = Attribute("The user's L{IMaildir}.")


class ISender(Interface):
    """
    The SMTP submission avatar: who an authenticated client may send as.
    """

    address = Attribute("The authenticated user's address (L{str}).")

    def maySendAs(address):
        """
        @return: whether MAIL FROM / C{From:} C{address} belongs to this user
            (their own address or an alias that delivers to them).
        @rtype: L{bool}
        """


class IAuthenticator(Interface):
    """
    Logs clients in through the shared L{twisted.cred.portal.Portal},
    throttling failures per client address and per (client, account) pair
    across every protocol, and bounding the logins in progress per client
    and overall.
    """

    def login(credentials, peerHost, interface):
        """
        Check credentials.  A client that owes a failure delay waits for it
        before its password is checked (the returned L{Deferred} fires
        later).  At most one login is in progress per session: a protocol
        reads no further command until it fires.

        @param credentials: an L{twisted.cred.credentials.IUsernamePassword}.
        @param peerHost: the client's IP address (L{str}), for throttling
            (IPv6 clients count by their /64).
        @param interface: L{IMailbox} (POP3) or L{ISender} (SMTP).
        @return: L{Deferred} firing with C{(interface, avatar, logout)}, or
            failing with:
              - L{twisted.cred.error.UnauthorizedLogin}: wrong credentials
                -- after the failure delay, and the same whether the user
                exists or not;
              - L{mailnet.errors.MailboxInUse}: right credentials, but
                another session holds the mailbox;
              - L{mailnet.errors.LoginBusy}: too many logins in progress
                (from this client, or overall), after a short delay;
                nothing was checked or counted, and the client may retry:
                answer with a temporary
                error (SMTP C{454 4.7.0}, POP3 C{-ERR [SYS/TEMP]}, IMAP
                C{NO [UNAVAILABLE]}) and keep the connection;
              - anything else: a fault of the server (a temporary error).
            Cancelling it drops the answer (the client left).
        """


class IRelayQueue(Interface):
    """
    Durable outbound queue for mail to remote recipients.
    """

    def receive(returnPath, recipients):
        """
        Start a message for relay to C{recipients} (remote addresses).

        @rtype: L{IMessageReceiver}; its C{finish} makes the message and its
            envelope durable and schedules delivery.
        """


class IDeliveryAgent(Interface):
    """
    The SMTP server's view of what happens to mail: recipient policy and
    where accepted messages go (local Maildirs and/or the relay queue).
    """

    def checkRecipient(address, sender):
        """
        Decide RCPT TO.

        @param address: the validated recipient address.
        @param sender: the authenticated L{ISender}, or L{None}.
        @raise mailnet.errors.SMTPReply: the refusal (e.g. 550 5.1.1 unknown
            user, 554 5.7.1 relay denied, 451 4.3.0 temporary).
        """

    def receive(returnPath, recipients):
        """
        Start storing a message accepted for C{recipients} (all of which
        passed L{checkRecipient}); aliases are expanded here.

        @rtype: L{IMessageReceiver}
        """
