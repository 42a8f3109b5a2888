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


# SEARCH criteria (sent with CHARSET UTF-8); the answers go to dovecot-search.json.
SEARCHES = [
    b'BODY "the inner one"',
    b'TEXT "the inner one"',
    b'BODY "inner epilogue"',
    b'BODY "--inner"',
    b'BODY "preamble"',
    b'TEXT "preamble"',
    b'BODY "Content-Type: text/html"',
    b'TEXT "Content-Language"',
    b'BODY "caf=E9"',
    b'SUBJECT "caf\xc3\xa9"',
    b'FROM "m\xc3\xbcller"',
    b'BODY "caf\xc3\xa9"',
    b'BODY "accentu\xc3\xa9"',
    b'TEXT "d\xc3\xa9j\xc3\xa0"',
    b"SUBJECT inner",
    b'SUBJECT "gr\xc3\xbc\xc3\x9fe"',
    b"SUBJECT hello",
    b"FROM example.test",
    b"FROM joerg",
    b'FROM "Ren\xc3\xa9"',
    b"TO bob",
    b'TO "carol, c."',
    b"CC boss",
    b"BCC jones",
    b'BCC "a group"',
    b'HEADER X-Nothing ""',
    b"HEADER Content-Type multipart",
    b'HEADER MIME-Version ""',
    b"BODY plain",
    b'BODY "sch\xc3\xb6ne"',
    b'BODY "deep text"',
    b"BODY VCALENDAR",
    b'BODY "inner html"',
    b'BODY "img src"',
    b"BODY menu",
    b"TEXT inner",
    b"TEXT nobody",
    b'TEXT "MIME-Version"',
    b"SENTON 4-Dec-2026",
    b"SENTBEFORE 1-Jan-2004",
    b"SENTSINCE 5-Dec-2026",
    b"SENTON 1-Jul-2003",
    b"NOT SENTSINCE 1-Jan-1970",
    b'SUBJECT ""',
    b"BODY iVBORw0KGgo",
    b"BODY forwarded",
    b'HEADER subject "no body"',
    b'TEXT "digest entry"',
    b'BODY "digest body"',
    b'BODY "Reporting-MTA"',
    b'BODY "Final-Recipient"',
    b'BODY "To: nobody"',
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
    names = sorted(result)
    searches = {}
    for query in SEARCHES:
        r, ok = c.cmd(b"SEARCH CHARSET UTF-8 " + query)
        assert b" OK " in ok, ok
        numbers = r.split(b"* SEARCH", 1)[1].split()
        searches[query.decode("utf-8")] = [names[int(n) - 1] for n in numbers]
    json.dump(searches, open(os.path.join(samples, "dovecot-search.json"), "w"), indent=1, sort_keys=True, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
