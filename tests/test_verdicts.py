"""
Tests for L{mailnet.verdicts}: SPF, DKIM and DMARC verdicts and the
Authentication-Results field, on a DNS made of dicts (the real DNS server
path is in tests/test_judge.py).
"""

from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from mailnet import verdicts
from mailnet.dkim import KeyStore, sign
from mailnet.dns import BlockingDNS, DNSFailure

IP = "192.0.2.10"


class FakeDNS(BlockingDNS):
    """
    Records from a dict: name -> list of (type, value); a name in
    C{failing} fails like a DNS time-out.
    """

    def __init__(self, records: Optional[Dict[str, List[Tuple[str, Any]]]] = None, failing: Tuple[str, ...] = ()) -> None:
        self.data = records or {}
        self.failing = failing
        self.lookups = 0
        self.asked: List[Tuple[str, str]] = []

    def add(self, name: str, kind: str, value: Any) -> None:
        self.data.setdefault(name, []).append((kind, value))

    def records(self, name: str, kind: str) -> List[Tuple[Tuple[str, str], Any]]:
        self.lookups += 1
        name = name.rstrip(".").lower()
        self.asked.append((name, kind))
        if name in self.failing:
            raise DNSFailure("%s: DNSQueryTimeoutError" % (name,))
        out = []
        for recordKind, value in self.data.get(name, []):
            if recordKind == kind:
                out.append(((name, kind), [value.encode()] if kind == "TXT" else value))
        return out


def message(author: str = "alice@a.test", body: bytes = b"Hello\r\n", extra: bytes = b"") -> bytes:
    return (
        b"Received: from client.a.test (192.0.2.10)\r\n\tby mx.example.test; Sat, 5 Dec 2026 23:00:00 +0000\r\n"
        + extra
        + b"From: Alice <" + author.encode() + b">\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\n" + body
    )


_keys: Dict[Tuple[str, str], Any] = {}


def testKey(domain: str, type: str) -> Any:
    """A key per domain and type, made once for the whole run (RSA keys take a while)."""
    if (domain, type) not in _keys:
        import tempfile

        _keys[domain, type] = KeyStore(tempfile.mkdtemp(prefix="mailnet-test-dkim-")).generate(domain, "s1", type)
    return _keys[domain, type]


class SignedMixin:
    def signed(self, dns: FakeDNS, domain: str = "a.test", type: str = "ed25519", text: bytes = b"") -> bytes:
        key = testKey(domain, type)
        dns.add(key.dnsName, "TXT", key.record())
        original = text or message("alice@" + domain)
        return sign(original, [key]) + original


class SPFTests(SynchronousTestCase):
    def check(self, record: Optional[str], mailFrom: str = "alice@a.test", helo: str = "client.a.test") -> str:
        dns = FakeDNS()
        if record is not None:
            dns.add("a.test", "TXT", record)
            dns.add("client.a.test", "TXT", record)
        return verdicts.checkSPF(dns, IP, mailFrom, helo).result

    def test_results(self) -> None:
        """pass, fail, softfail, neutral and none, as the domain's record says."""
        self.assertEqual(self.check("v=spf1 ip4:192.0.2.0/24 -all"), "pass")
        self.assertEqual(self.check("v=spf1 ip4:198.51.100.1 -all"), "fail")
        self.assertEqual(self.check("v=spf1 ip4:198.51.100.1 ~all"), "softfail")
        self.assertEqual(self.check("v=spf1 ?all"), "neutral")
        self.assertEqual(self.check(None), "none")

    def test_nullSenderChecksHelo(self) -> None:
        """RFC 7208 §2.4: with MAIL FROM:<> the HELO name is the identity."""
        dns = FakeDNS()
        dns.add("client.a.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        result = verdicts.checkSPF(dns, IP, "", "client.a.test")
        self.assertEqual((result.result, result.identity, result.subject), ("pass", "helo", "client.a.test"))

    def test_internationalAndLiteral(self) -> None:
        """A UTF-8 domain is looked up by its A-label; an address literal HELO has no SPF (none)."""
        dns = FakeDNS()
        dns.add("xn--caf-dma.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        self.assertEqual(verdicts.checkSPF(dns, IP, "jos\u00e9@caf\u00e9.test", "h.test").result, "pass")
        self.assertEqual(verdicts.checkSPF(dns, IP, "", "[192.0.2.10]").result, "none")
        self.assertEqual(verdicts.checkSPF(dns, "::ffff:192.0.2.10", "a@caf\u00e9.test", "h.test").result, "pass")

    def test_dnsFailureIsTemperror(self) -> None:
        dns = FakeDNS(failing=("a.test",))
        self.assertEqual(verdicts.checkSPF(dns, IP, "alice@a.test", "client.a.test").result, "temperror")

    def test_lookupLimit(self) -> None:
        """RFC 7208 §4.6.4: more than 10 look-ups is permerror, so a record cannot make us query without end."""
        dns = FakeDNS()
        dns.add("a.test", "TXT", "v=spf1 " + " ".join("a:h%d.a.test" % i for i in range(12)) + " -all")
        self.assertEqual(verdicts.checkSPF(dns, IP, "alice@a.test", "x.test").result, "permerror")
        self.assertLessEqual(dns.lookups, 12)


class DKIMTests(SignedMixin, SynchronousTestCase):
    def test_unsignedIsNone(self) -> None:
        """No signature: no results (dkim=none), not a failure."""
        self.assertEqual(verdicts.checkDKIM(message(), FakeDNS()), [])

    def test_pass(self) -> None:
        for type, algorithm in [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")]:
            dns = FakeDNS()
            [result] = verdicts.checkDKIM(self.signed(dns, type=type), dns)
            self.assertEqual((result.result, result.domain, result.selector, result.algorithm), ("pass", "a.test", "s1", algorithm))
            self.assertEqual(len(result.b), 8)

    def test_bodyAlteredFails(self) -> None:
        dns = FakeDNS()
        signed = self.signed(dns)
        [result] = verdicts.checkDKIM(signed.replace(b"Hello", b"Jello"), dns)
        self.assertEqual(result.result, "fail")

    def test_missingKeyIsPermerror(self) -> None:
        dns = FakeDNS()
        signed = self.signed(dns)
        dns.data.clear()
        [result] = verdicts.checkDKIM(signed, dns)
        self.assertEqual(result.result, "permerror")

    def test_dnsFailureIsTemperror(self) -> None:
        dns = FakeDNS()
        signed = self.signed(dns)
        dns.failing = ("s1._domainkey.a.test",)
        [result] = verdicts.checkDKIM(signed, dns)
        self.assertEqual(result.result, "temperror")

    def test_unparsableHeader(self) -> None:
        """A header line without a colon: permerror for a signed message, none for an unsigned one; never an exception."""
        dns = FakeDNS()
        broken = b"no colon here\r\n" + self.signed(dns)
        self.assertEqual([r.result for r in verdicts.checkDKIM(broken, dns)], ["permerror"])
        self.assertEqual(verdicts.checkDKIM(b"no colon here\r\n" + message(), dns), [])
        header = verdicts.judge(dns, broken, IP, "c.test", "a@a.test").header("mx.example.test")
        self.assertIn(b"\tdkim=permerror;\r\n", header)

    def test_signatureCountBounded(self) -> None:
        """Only the first MAX_SIGNATURES signatures cost look-ups."""
        dns = FakeDNS()
        signed = self.signed(dns)
        header, rest = signed.split(b"Received:", 1)
        many = header * 20 + b"Received:" + rest
        self.assertEqual(len(verdicts.checkDKIM(many, dns)), verdicts.MAX_SIGNATURES)


class DMARCTests(SignedMixin, SynchronousTestCase):
    def test_passViaParentPolicy(self) -> None:
        """
        From a sub-domain without a record of its own: the organizational
        domain's policy applies (its sp=), and a DKIM pass by the parent
        domain is aligned (relaxed).
        """
        dns = FakeDNS()
        dns.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
        signed = self.signed(dns, domain="a.test", text=message("alice@news.a.test"))
        verdict = verdicts.judge(dns, signed, IP, "client.a.test", "alice@news.a.test")
        self.assertEqual(verdict.dmarc, verdicts.DMARCResult("pass", "news.a.test", "quarantine"))
        self.assertIsNone(verdict.refusal)
        self.assertIn(("_dmarc.news.a.test", "TXT"), dns.asked)

    def test_rejectRefused(self) -> None:
        """p=reject and neither SPF nor DKIM aligned and passing: 550 5.7.1."""
        dns = FakeDNS()
        dns.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
        dns.add("evil.test", "TXT", "v=spf1 +all")
        verdict = verdicts.judge(dns, message("ceo@bank.test"), IP, "evil.test", "x@evil.test")
        self.assertEqual(verdict.spf.result, "pass")  # but not aligned
        self.assertEqual(verdict.dmarc.result, "fail")
        self.assertEqual((verdict.refusal.code, verdict.refusal.text[:5]), (550, "5.7.1"))

    def test_quarantineDelivered(self) -> None:
        dns = FakeDNS()
        dns.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=quarantine")
        verdict = verdicts.judge(dns, message("ceo@bank.test"), IP, "evil.test", "x@evil.test")
        self.assertEqual((verdict.dmarc.result, verdict.dmarc.policy, verdict.refusal), ("fail", "quarantine", None))
        self.assertTrue(verdict.quarantine)
        dns.add("evil.test", "TXT", "v=spf1 +all")
        dns.add("_dmarc.evil.test", "TXT", "v=DMARC1; p=quarantine")
        self.assertFalse(verdicts.judge(dns, message("ceo@evil.test"), IP, "evil.test", "x@evil.test").quarantine)

    def test_spfAlignedPass(self) -> None:
        dns = FakeDNS()
        dns.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")
        dns.add("mail.a.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        verdict = verdicts.judge(dns, message(), IP, "mail.a.test", "bounce@mail.a.test")
        self.assertEqual(verdict.dmarc.result, "pass")

    def test_strictAlignment(self) -> None:
        """aspf=s: a sub-domain's SPF pass does not count."""
        dns = FakeDNS()
        dns.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject; aspf=s")
        dns.add("mail.a.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")
        verdict = verdicts.judge(dns, message(), IP, "mail.a.test", "bounce@mail.a.test")
        self.assertEqual(verdict.dmarc.result, "fail")
        self.assertIsNotNone(verdict.refusal)

    def test_noPolicy(self) -> None:
        verdict = verdicts.judge(FakeDNS(), message(), IP, "client.a.test", "alice@a.test")
        self.assertEqual((verdict.dmarc.result, verdict.refusal), ("none", None))

    def test_dnsTroubleWhereItDecides(self) -> None:
        """The policy cannot be read and nothing passes: 451 4.7.0, not a guess either way."""
        dns = FakeDNS(failing=("_dmarc.bank.test",))
        verdict = verdicts.judge(dns, message("ceo@bank.test"), IP, "evil.test", "x@evil.test")
        self.assertEqual(verdict.dmarc.result, "temperror")
        self.assertEqual((verdict.refusal.code, verdict.refusal.text[:5]), (451, "4.7.0"))

    def test_dnsTroubleThatDoesNotDecide(self) -> None:
        """An aligned DKIM pass passes DMARC whatever the policy: no DNS trouble refusal."""
        dns = FakeDNS()
        signed = self.signed(dns)
        dns.failing = ("_dmarc.a.test",)
        verdict = verdicts.judge(dns, signed, IP, "client.a.test", "alice@a.test")
        self.assertEqual((verdict.dmarc.result, verdict.refusal), ("pass", None))

    def test_secondFromCannotHide(self) -> None:
        """
        Two From fields (RFC 5322 allows one): the worst verdict counts,
        so a signed From of the attacker's cannot cover a forged one.
        """
        dns = FakeDNS()
        dns.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
        signed = self.signed(dns, domain="evil.test", text=message("me@evil.test", extra=b"From: ceo@bank.test\r\n"))
        verdict = verdicts.judge(dns, signed, IP, "evil.test", "me@evil.test")
        self.assertEqual(verdict.dmarc.domain, "bank.test")
        self.assertEqual(verdict.refusal.code, 550)

    def test_spfFailRefusedOnlyWhenConfigured(self) -> None:
        dns = FakeDNS()
        dns.add("a.test", "TXT", "v=spf1 -all")
        self.assertIsNone(verdicts.judge(dns, message(), IP, "c.test", "alice@a.test").refusal)
        refusal = verdicts.judge(dns, message(), IP, "c.test", "alice@a.test", rejectSPFFail=True).refusal
        self.assertEqual((refusal.code, refusal.text[:5]), (550, "5.7.1"))
        dns.data["a.test"] = [("TXT", "v=spf1 ~all")]
        self.assertIsNone(verdicts.judge(dns, message(), IP, "c.test", "alice@a.test", rejectSPFFail=True).refusal)

    def test_internationalAuthor(self) -> None:
        """A UTF-8 From domain is judged by its A-label."""
        dns = FakeDNS()
        dns.add("_dmarc.xn--caf-dma.test", "TXT", "v=DMARC1; p=reject")
        verdict = verdicts.judge(dns, message("ceo@caf\u00e9.test"), IP, "evil.test", "x@evil.test")
        self.assertEqual((verdict.dmarc.domain, verdict.refusal.code), ("xn--caf-dma.test", 550))

    def test_oddAuthorDomainIgnored(self) -> None:
        """A From domain no host name can be (an ESC sequence) is not looked up and reaches no reply."""
        dns = FakeDNS()
        verdict = verdicts.judge(dns, message("ceo@bank\x1b[31m.test"), IP, "c.test", "x@c.test")
        self.assertIsNone(verdict.dmarc)
        self.assertNotIn("_dmarc.bank\x1b[31m.test", [name for name, _ in dns.asked])

    def test_organizationalDomain(self) -> None:
        """The packaged Public Suffix List: co.uk is a suffix, test is not listed (the default rule)."""
        self.assertEqual(verdicts.organizationalDomain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(verdicts.organizationalDomain("news.a.test"), "a.test")
        self.assertEqual(verdicts.organizationalDomain("co.uk"), "co.uk")


class HeaderTests(SynchronousTestCase):
    def test_format(self) -> None:
        """RFC 8601 §2.2: authserv-id, then one method per clause, dkim per signature."""
        verdict = verdicts.Verdict(
            verdicts.SPFResult("pass", "mailfrom", "alice@a.test"),
            [verdicts.DKIMResult("pass", "a.test", "s1", "rsa-sha256", "AbCd1234")],
            verdicts.DMARCResult("pass", "a.test", "reject"),
        )
        self.assertEqual(
            verdict.header("mx.example.test"),
            b"Authentication-Results: mx.example.test;\r\n"
            b"\tspf=pass smtp.mailfrom=alice@a.test;\r\n"
            b"\tdkim=pass header.d=a.test header.s=s1 header.a=rsa-sha256 header.b=AbCd1234;\r\n"
            b"\tdmarc=pass (p=reject) header.from=a.test\r\n",
        )

    def test_unsignedIsDkimNone(self) -> None:
        verdict = verdicts.Verdict(verdicts.SPFResult("none", "helo", "c.test"), [], None)
        header = verdict.header("mx.example.test")
        self.assertIn(b"spf=none smtp.helo=c.test;", header)
        self.assertIn(b"dkim=none;", header)

    def test_networkTextCannotBreakTheHeader(self) -> None:
        """Values from the network are quoted and cleaned: no CR, LF or quote gets through."""
        verdict = verdicts.Verdict(
            verdicts.SPFResult("none", "mailfrom", 'a"b\r\nX-Evil: 1@a.test'),
            [verdicts.DKIMResult("fail", "a.test;\r\n", "s 1", "rsa-sha256", "")],
            None,
        )
        header = verdict.header("mx.example.test")
        self.assertEqual(header.count(b"\r\n"), 4)
        self.assertNotIn(b"\r\nX-Evil", header)
        self.assertIn(b'smtp.mailfrom="a?b??X-Evil: 1@a.test"', header)

    def test_removeForged(self) -> None:
        """RFC 8601 §5: fields naming our authserv-id go (folded ones too); others stay."""
        section = (
            b"Received: x\r\n"
            b"Authentication-Results: MX.example.test; dkim=pass\r\n"
            b"Authentication-Results:\r\n mx.example.test (forged) 1;\r\n spf=pass\r\n"
            b"Authentication-Results: other.test; spf=fail\r\n"
            b"Subject: hi\r\n"
        )
        cleaned, removed = verdicts.removeForgedResults(section, "mx.example.test")
        self.assertEqual(removed, 2)
        self.assertEqual(cleaned, b"Received: x\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n")

    def test_removeForgedNone(self) -> None:
        """
        Without any such field the section comes back as it is, and a
        section without its last CRLF (a BDAT message with no body) gets
        it, as before.  The field name is found in any case.
        """
        section = b"Received: x\r\nSubject: hi\r\n continued\r\n"
        self.assertEqual(verdicts.removeForgedResults(section, "mx.example.test"), (section, 0))
        self.assertEqual(verdicts.removeForgedResults(b"", "mx.example.test"), (b"", 0))
        self.assertEqual(verdicts.removeForgedResults(b"Subject: hi", "mx.example.test"), (b"Subject: hi\r\n", 0))
        forged = b"AUTHENTICATION-RESULTS: mx.example.test; spf=pass\r\nSubject: hi\r\n"
        self.assertEqual(verdicts.removeForgedResults(forged, "mx.example.test"), (b"Subject: hi\r\n", 1))
