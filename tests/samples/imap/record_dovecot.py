"""
Record what Dovecot answers for the sample messages of this directory: the
oracle that C{tests/test_imap_render} compares mailnet's ENVELOPE,
BODYSTRUCTURE and sections with.  It writes C{dovecot.json}.

    python tests/samples/imap/record_dovecot.py tests/samples/imap PORT

against a private Dovecot (Debian's dovecot-imapd, 2.3.19 for the recorded
file) on 127.0.0.1, started with C{dovecot -F -c dovecot.conf}, with user
C{test} and password C{pw}; a configuration that works as root:

    base_dir = /tmp/dv/run
    state_dir = /tmp/dv/state
    protocols = imap
    listen = 127.0.0.1
    ssl = no
    disable_plaintext_auth = no
    log_path = /tmp/dv/dovecot.log
    default_internal_user = dovecot
    default_login_user = dovenull
    mail_location = maildir:/tmp/dv/mail/%u
    service imap-login {
      inet_listener imap {
        address = 127.0.0.1
        port = 14399
      }
    }
    passdb {
      driver = passwd-file
      args = scheme=PLAIN /tmp/dv/passwd    # "test:{PLAIN}pw"
    }
    userdb {
      driver = static
      args = uid=65534 gid=65534 home=/tmp/dv/mail/%u
    }

Every message of INBOX is deleted first.
"""

import glob
import json
import os
import re
import socket
import sys

SECTIONS = [
    "BODY[]",
    "BODY[HEADER]",
    "BODY[TEXT]",
    "BODY[1]",
    "BODY[2]",
    "BODY[1.MIME]",
    "BODY[2.MIME]",
    "BODY[1.1]",
    "BODY[1.2]",
    "BODY[1.2.MIME]",
    "BODY[2.HEADER]",
    "BODY[2.TEXT]",
    "BODY[2.1]",
    "BODY[3.1]",
    "BODY[3.1.HEADER]",
    "BODY[3.1.TEXT]",
    "BODY[4]",
    "BODY[HEADER.FIELDS (FROM SUBJECT)]",
    "BODY[HEADER.FIELDS.NOT (SUBJECT from)]",
    "BODY[1]<2.5>",
    "BODY[]<10000.5>",
]


class C:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")
        self.n = 0
        self.f.readline()

    def cmd(self, text, literal=None):
        self.n += 1
        tag = b"T%d" % self.n
        if literal is None:
            self.s.sendall(tag + b" " + text + b"\r\n")
        else:
            self.s.sendall(tag + b" " + text + b" {%d}\r\n" % len(literal))
            self.f.readline()
            self.s.sendall(literal + b"\r\n")
        out = b""
        while True:
            line = self.f.readline()
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                line += self.f.read(int(m.group(1)))
                out += line
                continue
            if line.startswith(tag + b" "):
                return out, line
            out += line


def item(resp, name):
    m = re.match(rb"\* \d+ FETCH \(", resp)
    body = resp[m.end() :]
    assert body.endswith(b")\r\n"), resp
    body = body[:-3]
    i = body.index(b" ")  # after the item label
    label = body[:i]
    return label.decode(), body[i + 1 :]


def main(samples, port):
    c = C(port)
    c.cmd(b"LOGIN test pw")
    c.cmd(b"SELECT INBOX")
    c.cmd(b"STORE 1:* +FLAGS (\\Deleted)")
    c.cmd(b"EXPUNGE")
    result = {}
    for n, path in enumerate(sorted(glob.glob(os.path.join(samples, "*.eml"))), 1):
        data = open(path, "rb").read()
        wire = re.sub(rb"(?<!\r)\n", b"\r\n", data)
        r, ok = c.cmd(b"APPEND INBOX", wire)
        assert b"OK" in ok, ok
        name = os.path.basename(path)
        d = result[name] = {}
        for what in ["BODYSTRUCTURE", "BODY", "ENVELOPE", "RFC822.SIZE"] + SECTIONS:
            r, ok = c.cmd(b"FETCH %d %s" % (n, what.encode()))
            label, value = item(r, what)
            d[what] = [label, value.decode("latin-1")]
    json.dump(result, open(os.path.join(samples, "dovecot.json"), "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
