# -*- test-case-name: tests -*-
"""
mailnet: a self-hostable email system on Twisted.

ESMTP (MTA and submission), POP3, Maildir storage, a durable relay queue,
an administration tool and a command-line mail client.
"""

__version__ = "0.1.0"
