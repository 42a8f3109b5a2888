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

    def aliasTargets(alias):
        """
        One alias's own targets, not expanded: one cheap look-up.

        @return: the targets, or L{None} if C{alias} (an address, or
            C{"@domain"} for a catch-all) is not an alias.
        @rtype: L{tuple} of L{str} or L{None}
        """

    def resolve(address):
        """
        Expand an address in a local domain to the final recipients: user
        addresses, and remote addresses that aliases forward to.  Aliases
        are expanded recursively (loops and depth are bounded), each alias
        once, duplicates removed, order kept.

        @return: the recipients, or L{None} if the address is not
            deliverable here (no user, alias or catch-all).
        @rtype: L{list} of L{str} or L{None}
        @raise mailnet.errors.AliasExpansionTooLarge: it expands to too
            many addresses (L{mailnet.store.accounts.MAX_ALIAS_EXPANSION}).
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
        thread; or, with a delivery journal (L{IDeliveryJournal}), sync its
        journal record and publish it without syncs.  Only when the
        returned Deferred fires may the server answer 250.

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


class IDeliveryJournal(Interface):
    """
    Makes small messages durable with one cheap sync per batch (see
    L{mailnet.store.journal}): a message is acknowledged once its journal
    record is synced, then published into its Maildirs without syncs, and
    made durable in the Maildirs by a checkpoint within about a second.
    """

    def deliver(record):
        """
        Journal a message and publish it (called on the reactor thread).

        @type record: L{mailnet.store.journal.JournalRecord}
        @return: a L{Deferred} firing (with L{None}) once the record is
            durable and the message published (a failed publish is tried
            again later: the record keeps the message), failing if the
            record could not be written; or L{None} if
            the journal does not take it (stopped, unusable, full, too
            big): the caller then makes the message durable itself.
        """

    def stop():
        """
        Take no more messages; make those taken durable in the Maildirs.

        @rtype: L{Deferred}
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

    def readWhole(info, limit):
        """
        Read a small message whole, wherever it is now, as L{open} would.

        @param limit: the most octets wanted.
        @return: the file's octets (L{bytes}), or L{None} if it holds more
            than C{limit} (then L{open} it and read it in pieces).
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

    def postmaster():
        """
        The address C{RCPT TO:<postmaster>} (no domain) stands for
        (RFC 5321 §4.5.1): the primary local domain's postmaster.

        @rtype: L{str}
        @raise mailnet.errors.SMTPReply: there is none (no local domain).
        """

    def receive(returnPath, recipients):
        """
        Start storing a message accepted for C{recipients} (all of which
        passed L{checkRecipient}); aliases are expanded here.

        @rtype: L{IMessageReceiver}
        """


class IMailAccount(Interface):
    """
    The IMAP avatar: one user's folders (Maildir++ on disk: the inbox is the
    user's Maildir, folder C{a.b} is its subdirectory C{.a.b}).

    Unlike L{IMailbox}, an account is not held exclusively: any number of
    sessions (IMAP, and POP3 on the inbox) may use it at once.  Folder
    names are Unicode (L{mailnet.store.records.DELIMITER} between levels;
    C{"INBOX"} in any case is the inbox); the protocol encodes them (modified
    UTF-7 or UTF-8).  Every method that touches the disk returns a
    L{Deferred} and does that work off the reactor thread.  Errors are the
    L{mailnet.errors.FolderError} subclasses named below.
    """

    address = Attribute("The user's address (L{str}).")

    def listFolders():
        """
        @return: L{Deferred} firing with every folder (L{list} of
            L{mailnet.store.records.FolderInfo}, sorted by name, the inbox
            first), including names that exist only as parents.
        """

    def createFolder(name, specialUse=None):
        """
        Create a folder (and any missing parents), subscribed.

        @raise mailnet.errors.FolderExists: (in the Deferred) it exists.
        @raise mailnet.errors.BadFolderName: an empty level, a name that
            could not be a directory, too long or too deep.
        """

    def deleteFolder(name):
        """
        Delete a folder and its messages; folders below it stay.

        @raise mailnet.errors.NoSuchFolder: (in the Deferred).
        @raise mailnet.errors.CannotDeleteFolder: the inbox.
        """

    def renameFolder(oldName, newName):
        """
        Rename a folder; the folders below it follow.  Renaming the inbox
        moves its messages into a new folder and leaves the inbox empty
        (RFC 9051 §6.3.6).

        @raise mailnet.errors.NoSuchFolder: C{oldName} does not exist.
        @raise mailnet.errors.FolderExists: C{newName} does.
        """

    def setSubscribed(name, subscribed):
        """
        Add a name to the subscription list or remove it (the folder need
        not exist).  Survives restarts.
        """

    def status(name):
        """
        @return: L{Deferred} firing with a
            L{mailnet.store.records.FolderStatus}; the folder is synced with
            the disk first (mail delivered since is counted).
        @raise mailnet.errors.NoSuchFolder: (in the Deferred).
        """

    def openFolder(name):
        """
        @return: L{Deferred} firing with the folder's L{IFolder}, synced
            with the disk.  Sessions of one process that open the same
            folder share one object; each calls L{IFolder.close} when done.
        @raise mailnet.errors.NoSuchFolder: (in the Deferred).
        """

    def append(name, flags, internalDate):
        """
        Start storing a message into a folder (IMAP APPEND).

        @param flags: system flags and keywords to set (L{frozenset} of L{str}).
        @param internalDate: seconds since the epoch, or L{None} for now.
        @return: an L{IMessageReceiver} whose C{write} takes the message as
            the client sent it (line endings normalised by the store, so
            that the stored message, sent back with CRLF, is what its wire
            size says) and whose C{finish} fires with C{(uidValidity, uid)}
            once the message is durable (fsync'd) and visible to every
            session, or fails with L{mailnet.errors.NoSuchFolder}.
        """


class IFolder(Interface):
    """
    One folder, shared by the sessions of a process that have it open.

    It keeps the UIDs, flags and mod-sequences in an index that is a cache
    of the Maildir: it can be rebuilt from the files (a lost index means a
    new UIDVALIDITY, never lost mail).  Flags are written to the file names
    as well (C{:2,} suffix), so other Maildir readers agree.
    """

    name = Attribute("The folder's name (L{str}).")
    uidValidity = Attribute("The folder's UIDVALIDITY (L{int}, 1 to 2**32-1).")

    def sync():
        """
        Take in what changed on disk (mail delivered by SMTP or another
        process, files removed or renamed by other Maildir readers):
        assign UIDs to new messages in delivery order, update flags, drop
        vanished messages.  Cheap when nothing changed.

        @return: L{Deferred} firing with the current
            L{mailnet.store.records.FolderState}.
        """

    def claimRecent():
        """
        IMAP4rev1's C{\\Recent}: the UIDs of messages that no session has
        claimed before (each message is recent for exactly one session).

        @return: L{Deferred} firing with a L{frozenset} of UIDs.
        """

    def watch(callback):
        """
        Call C{callback()} on the reactor thread whenever the folder may
        have changed (another session's STORE/EXPUNGE/APPEND in this
        process at once; other processes' changes within 2 s, by inotify
        where there is one, by polling otherwise).  The callee calls
        L{sync} to see what changed.

        @return: a callable that stops the watch.
        """

    def setFlags(uids, flags, mode, unchangedSince=None):
        """
        STORE.

        @param mode: C{"+"} add, C{"-"} remove, C{""} replace.
        @param unchangedSince: RFC 7162 UNCHANGEDSINCE, or L{None}.
        @return: L{Deferred} firing with C{(changed, refused)}: the
            L{mailnet.store.records.MessageRecord}s whose flags changed
            (with their new modseq), and the UIDs left alone because their
            modseq was above C{unchangedSince}.  UIDs not in the folder are
            ignored.
        """

    def expunge(uids=None):
        """
        Remove the messages flagged C{\\Deleted} (only those among C{uids}
        if given).

        @return: L{Deferred} firing with the L{list} of removed UIDs.
        """

    def copy(uids, target):
        """
        Copy messages, with their flags, into folder C{target} (durably).

        @return: L{Deferred} firing with C{(uidValidity, pairs)}: the
            target's UIDVALIDITY and the (source UID, new UID) pairs, in
            source UID order.
        @raise mailnet.errors.NoSuchFolder: (in the Deferred) no C{target}.
        """

    def move(uids, target):
        """
        Like L{copy}, then the sources are removed from this folder.
        """

    def parsed(uids):
        """
        The parsed form of messages: what ENVELOPE, BODYSTRUCTURE, header
        fetches and header searches need, without reading the files again
        (cached in the index; parsed in a thread the first time).

        @return: L{Deferred} firing with a L{dict} of UID to
            L{mailnet.mime.ParsedMessage}; UIDs gone meanwhile are missing.
        """

    def openMessage(uid):
        """
        @return: L{Deferred} firing with a binary file of the message as
            stored: LF line endings, no CR (the caller turns each LF into
            CRLF; L{mailnet.mime.ParsedMessage} gives the offsets of both
            forms).  The caller closes it and reads it off the reactor
            thread.
        @raise mailnet.errors.MessageGone: (in the Deferred).
        """

    def close():
        """
        One session is done with this folder (the last one frees it).
        """
