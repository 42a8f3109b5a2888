"""
Tests for C{mailnet-admin dkim generate|list|remove} and the DKIM records
of C{mailnet-admin check}.
"""

import base64
import os
import re
import stat

from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailnet import dkim
from mailnet.dkim import KeyStore, txtStrings
from tests.test_admin import AdminTestCase


class DKIMCommandTests(AdminTestCase):
    def setUp(self) -> None:
        super().setUp()
        # RSA 2048 takes a while to make: the size is checked once, below.
        self.patch(dkim, "RSA_BITS", 1024)
        self.ok("domain", "add", "example.test")

    def record(self, out: str) -> str:
        [line] = [line for line in out.splitlines() if "._domainkey." in line]
        return "".join(re.findall(r'"([^"]*)"', line))

    def test_generateRSA(self) -> None:
        """
        RSA 2048 under the default selector, mode 0600; the printed record
        holds the public key, in strings of at most 255 octets.
        """
        self.patch(dkim, "RSA_BITS", 2048)
        out = self.ok("dkim", "generate", "example.test")
        self.assertIn("s1._domainkey.example.test. TXT ", out)
        record = self.record(out)
        self.assertTrue(record.startswith("v=DKIM1; k=rsa; p="), record)
        key = load_der_public_key(base64.b64decode(record.split("p=", 1)[1]))
        self.assertEqual(key.key_size, 2048)
        for string in re.findall(r'"([^"]*)"', out):
            self.assertLessEqual(len(string), 255)
        path = os.path.join(self.dataDir, "dkim", "example.test", "s1.rsa.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn("signed with it from now on", out)

    def test_generateEd25519(self) -> None:
        out = self.ok("dkim", "generate", "example.test", "--type", "ed25519", "--selector", "E1")
        record = self.record(out)
        self.assertTrue(record.startswith("v=DKIM1; k=ed25519; p="), record)
        self.assertEqual(len(base64.b64decode(record.split("p=", 1)[1])), 32)
        self.assertIn("e1._domainkey.example.test.", out)

    def test_refusals(self) -> None:
        """An unknown domain, a taken selector, a bad selector: one error line each, no file."""
        self.assertIn("not a local domain", self.fails("dkim", "generate", "other.test"))
        self.ok("dkim", "generate", "example.test")
        self.assertIn("already has a key with selector s1", self.fails("dkim", "generate", "example.test", "--type", "ed25519"))
        self.assertIn("not a valid DKIM selector", self.fails("dkim", "generate", "example.test", "--selector", "a_b/../x"))
        self.assertEqual(len(KeyStore(self.dataDir).keys()), 1)

    def test_newSelectorWaitsForConfig(self) -> None:
        """
        Rotation: a second RSA key is not used while [dkim] selector names
        an existing one; it is once the selector is changed.
        """
        self.ok("dkim", "generate", "example.test")
        out = self.ok("dkim", "generate", "example.test", "--selector", "s2")
        self.assertIn("still signed with selector s1", out)
        self.assertIn("set [dkim] selector = s2", out)
        self.assertEqual([k.selector for k in KeyStore(self.dataDir, "s1").signingKeys("example.test")], ["s1"])
        self.assertEqual([k.selector for k in KeyStore(self.dataDir, "s2").signingKeys("example.test")], ["s2"])

    def test_listAndRemove(self) -> None:
        self.assertIn("No DKIM keys", self.ok("dkim", "list"))
        self.ok("dkim", "generate", "example.test")
        self.ok("dkim", "generate", "example.test", "--type", "ed25519", "--selector", "e1")
        out = self.ok("dkim", "list")
        self.assertRegex(out, r"example.test  selector s1  rsa 1024  created .*  \(signs mail\)")
        self.assertRegex(out, r"example.test  selector e1  ed25519 256  created .*  \(signs mail\)")
        self.assertEqual(out.count("._domainkey.example.test. TXT"), 2)
        out = self.ok("dkim", "remove", "example.test", "--selector", "e1")
        self.assertIn("Removed the ed25519 key of example.test with selector e1", out)
        self.assertIn("no DKIM key", self.fails("dkim", "remove", "example.test", "--selector", "e1"))
        self.ok("dkim", "remove", "example.test")
        self.assertEqual(KeyStore(self.dataDir).keys(), [])

    def test_checkPrintsRecords(self) -> None:
        out = self.runAdmin("check")[1]
        self.assertIn("(no DKIM key for example.test: 'mailnet-admin dkim generate example.test')", out)
        self.ok("dkim", "generate", "example.test", "--type", "ed25519")
        out = self.runAdmin("check")[1]
        self.assertRegex(out, r'  s1\._domainkey\.example\.test\. TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/=]{44}"\n')

    def test_txtStrings(self) -> None:
        self.assertEqual(txtStrings("a" * 600), ["a" * 255, "a" * 255, "a" * 90])
