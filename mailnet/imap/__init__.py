"""mailnet's IMAP4 server."""
