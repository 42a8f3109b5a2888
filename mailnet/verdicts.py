# -*- test-case-name: tests.test_verdicts -*-
"""
Verdicts on incoming mail: SPF (RFC 7208, by pyspf), DKIM (RFC 6376 and
RFC 8463, by dkimpy), DMARC (RFC 7489, evaluated here) and the
C{Authentication-Results} header field that reports them (RFC 8601,
written here).

Everything here blocks (DNS through L{mailnet.dns.BlockingDNS}, hashing
the whole message) and runs in a worker thread; nothing imports Twisted's
reactor.

DMARC: the policy is looked up at C{_dmarc.<From domain>}; if there is
none, at each parent domain up to the organizational domain (the tree walk
of RFC 7489's successor, bounded by the Public Suffix List that
RFC 7489 §3.2 uses; the packaged copy of the list, never one downloaded).
Identifier alignment is relaxed (same organizational domain) unless the
record says C{adkim=s} / C{aspf=s}.  C{pct=} is not applied (the
successor drops it): a failing message gets the policy in full.  A message
with several author domains (several addresses in From, or several From
fields, which RFC 5322 §3.6 forbids) is judged by the worst of them, so a
second From cannot hide a failing one.
"""

import email.utils
import ipaddress
import re
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.logger import Logger

from mailnet.dns import BlockingDNS, DNSFailure

log = Logger()

#: Verify at most this many DKIM-Signature fields of a message.
MAX_SIGNATURES = 5
#: DMARC policy discovery makes at most this many look-ups.
MAX_DMARC_LOOKUPS = 8
#: pyspf's overall time for one check (seconds).
SPF_TIMEOUT = 20

PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, TEMPERROR, PERMERROR = (
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
)
#: RFC 8601 §2.7.1: signed, but the signature was not acceptable to us:
#: here, not checked at all (a message too large to verify).
POLICY = "policy"


# --- helpers ---------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]{1,255}")


def _value(text: str) -> str:
    """
    An RFC 8601 C{pvalue}: as it is when it is a plain token, else a quoted
    string of printable ASCII (anything else becomes C{?}); never a CR or
    LF, so nothing from the network can add a header line.
    """
    text = text[:255]
    if _TOKEN.fullmatch(text):
        return text
    cleaned = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
    return '"%s"' % (cleaned,)


_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", re.IGNORECASE)


def _domainOf(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _asciiDomain(domain: str) -> Optional[str]:
    """A domain as DNS has it (IDNA A-labels), or L{None} if it cannot be one."""
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    # Only what a host name can hold: nothing else reaches DNS, a reply or the log.
    return domain if len(domain) <= 253 and _HOSTNAME.fullmatch(domain) else None


_psl: Any = None
_pslLock = threading.Lock()


def organizationalDomain(domain: str) -> str:
    """
    RFC 7489 §3.2: the public suffix plus one label, from the Public
    Suffix List packaged with publicsuffixlist; the domain itself when it
    is a public suffix or too short.
    """
    global _psl
    with _pslLock:
        if _psl is None:
            from publicsuffixlist import PublicSuffixList

            _psl = PublicSuffixList()
    domain = domain.rstrip(".").lower()
    return _psl.privatesuffix(domain) or domain


def authorDomains(headerSection: bytes) -> List[str]:
    """
    The domains of every address in every From field (RFC 5322 §3.6.2).
    """
    values = []
    for field in _fields(headerSection):
        name, colon, rest = field[0].partition(b":")
        if colon and name.strip().lower() == b"from":
            values.append([rest] + field[1:])
    domains: Dict[str, None] = {}
    for parts in values:
        text = b" ".join(p.strip() for p in parts).decode("utf-8", "replace")
        for _, address in email.utils.getaddresses([text]):
            domain = _asciiDomain(_domainOf(address)) if "@" in address else None
            if domain:
                domains[domain] = None
    return list(domains)


def splitMessage(message: bytes) -> Tuple[bytes, bytes]:
    """The header section (with its last CRLF) and the rest (blank line and body)."""
    if message.startswith(b"\r\n"):
        return b"", message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 2 :]


def authservId(value: bytes) -> str:
    """RFC 8601 §2.2: the authserv-id of an Authentication-Results value (comments and version dropped)."""
    text = value.split(b";", 1)[0].decode("ascii", "replace")
    text = re.sub(r"\([^()]*\)", " ", text)
    words = text.split()
    return words[0].lower().rstrip(".") if words else ""


def _fields(headerSection: bytes) -> List[List[bytes]]:
    """The header section's fields, each a list of its lines (without CRLF)."""
    lines = headerSection.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    fields: List[List[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def removeForgedResults(headerSection: bytes, hostname: str) -> Tuple[bytes, int]:
    """
    RFC 8601 §5: drop C{Authentication-Results} fields that claim to be
    ours (our host name as authserv-id), which only we may write.

    @return: the header section without them, and how many there were.
    """
    if (not headerSection or headerSection.endswith(b"\r\n")) and b"authentication-results" not in headerSection.lower():
        # Nothing to remove (most messages): the fields as they came.
        return headerSection, 0
    ours = hostname.lower().rstrip(".")
    out: List[bytes] = []
    removed = 0
    for field in _fields(headerSection):
        name, colon, rest = field[0].partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            value = b" ".join([rest] + [f.strip() for f in field[1:]])
            if authservId(value) == ours:
                removed += 1
                continue
        out.extend(field)
    return b"".join(line + b"\r\n" for line in out), removed


# --- SPF (RFC 7208) ----------------------------------------------------------------

_spfLocal = threading.local()
_spfInstalled = False
_spfInstallLock = threading.Lock()


def _spfLookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> List[Tuple[Tuple[str, str], Any]]:
    """pyspf's C{DNSLookup}: through the calling thread's L{BlockingDNS}."""
    import spf

    resolver: Optional[BlockingDNS] = getattr(_spfLocal, "dns", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver for this check")
    try:
        return resolver.records(name, qtype)
    except DNSFailure as e:
        raise spf.TempError("DNS %s" % (e,))
    except KeyError:
        return []  # a record type mailnet does not ask for


def _installSPF() -> None:
    """pyspf asks a module-level function: make it ours (once; per-thread resolvers)."""
    global _spfInstalled
    with _spfInstallLock:
        if not _spfInstalled:
            import spf

            spf.DNSLookup = _spfLookup
            _spfInstalled = True


@attr.s(frozen=True, auto_attribs=True)
class SPFResult:
    """
    @ivar result: C{pass}, C{fail}, C{softfail}, C{neutral}, C{none},
        C{temperror} or C{permerror} (RFC 7208 §2.6).
    @ivar identity: C{mailfrom} or C{helo} (RFC 7208 §2.3, §2.4).
    @ivar subject: the address or host name checked.
    """

    result: str
    identity: str
    subject: str

    @property
    def domain(self) -> str:
        return _domainOf(self.subject)


def checkSPF(dns: BlockingDNS, ip: str, mailFrom: str, helo: str) -> SPFResult:
    """
    RFC 7208 §4: C{check_host()} for MAIL FROM, or for the HELO name when
    the reverse path is null (§2.4).
    """
    import spf

    _installSPF()
    if mailFrom:
        identity, subject, sender = "mailfrom", mailFrom, mailFrom
    else:
        identity, subject, sender = "helo", helo, "postmaster@" + helo
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return SPFResult(NONE, identity, subject)
    local, at, domain = sender.rpartition("@")
    asciiDomain = _asciiDomain(domain)
    if not asciiDomain or domain.startswith("["):
        # An address literal (HELO [192.0.2.1]) or a name DNS cannot hold: nothing to check.
        return SPFResult(NONE, identity, subject)
    sender = local + at + asciiDomain
    _spfLocal.dns = dns
    try:
        result = spf.check2(i=ip, s=sender, h=helo, timeout=SPF_TIMEOUT, querytime=SPF_TIMEOUT)[0]
    except Exception:
        # pyspf turns DNS and record trouble into results itself: this is a bug.
        log.failure("SPF check of {subject} failed", subject=subject[:255])
        result = TEMPERROR
    finally:
        _spfLocal.dns = None
    result = str(result).lower()
    if result == "ambiguous":
        result = PERMERROR
    if result not in (PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, TEMPERROR, PERMERROR):
        result = PERMERROR
    return SPFResult(result, identity, subject)


# --- DKIM (RFC 6376, RFC 8463) ----------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class DKIMResult:
    """
    One signature's result (RFC 8601 §2.7.1): C{pass}, C{fail},
    C{temperror}, C{permerror} or C{policy}, with its C{d=}, C{s=},
    C{a=} and the start of C{b=}, and why (a comment in the header field),
    if we say.
    """

    result: str
    domain: str
    selector: str
    algorithm: str
    b: str
    reason: str = ""


def _quietLogger() -> Any:
    import logging

    logger = logging.getLogger("mailnet.dkimpy")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def checkDKIM(message: bytes, dns: BlockingDNS, tooLarge: bool = False) -> List[DKIMResult]:
    """
    Verify each DKIM-Signature (at most L{MAX_SIGNATURES}).

    @param tooLarge: the message is too large to verify: C{message} may be
        its header section alone, and each signature's result is
        C{policy} (RFC 8601 §2.7.1: signed, but not acceptable to us) with
        the reason, never C{none}, which would say it was not signed.
    @return: one result per signature; none for an unsigned message.
    """
    import dkim
    from dkim.util import InvalidTagValueList, parse_tag_value

    from mailnet.dkim import useLightCanonicalization

    useLightCanonicalization()
    try:
        verifier = dkim.DKIM(message, logger=_quietLogger(), minkey=1024)
    except dkim.DKIMException:
        # A header section dkimpy cannot parse (a line without a colon):
        # any signature in it cannot be checked.
        signed = re.search(rb"(?im)^dkim-signature[ \t]*:", splitMessage(message)[0]) is not None
        return [DKIMResult(PERMERROR, "", "", "", "")] if signed else []
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            tags = {}

        def tag(name: bytes, tags: Dict[bytes, bytes] = tags) -> str:
            return tags.get(name, b"").decode("ascii", "replace")

        b = re.sub(r"[^A-Za-z0-9+/]", "", tag(b"b"))[:8]
        if tooLarge:
            results.append(DKIMResult(POLICY, tag(b"d").lower(), tag(b"s"), tag(b"a"), b, "message too large to verify"))
            continue
        noKey: List[bytes] = []

        def dnsfunc(name: bytes, timeout: Any = None, noKey: List[bytes] = noKey) -> Optional[bytes]:
            record = dns.dkimTXT(name)
            if record is None:
                noKey.append(name)
            return record

        try:
            ok = verifier.verify(index, dnsfunc=dnsfunc)
            result = PASS if ok else (PERMERROR if noKey else FAIL)
        except DNSFailure:
            result = TEMPERROR
        except dkim.ValidationError:
            result = FAIL
        except dkim.DKIMException:
            result = PERMERROR
        except Exception:
            # A malformed key or signature dkimpy did not expect.
            log.failure("DKIM check of a signature by {domain} failed", domain=tag(b"d")[:255])
            result = PERMERROR
        results.append(DKIMResult(result, tag(b"d").lower(), tag(b"s"), tag(b"a"), b))
    return results


# --- DMARC (RFC 7489) ---------------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class DMARCPolicy:
    """A parsed DMARC record and where it was found."""

    domain: str
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"


@attr.s(frozen=True, auto_attribs=True)
class DMARCResult:
    """
    @ivar result: C{pass}, C{fail}, C{none}, C{temperror} or C{permerror}.
    @ivar domain: the From domain judged.
    @ivar policy: what its owner asks for failing mail (C{none},
        C{quarantine}, C{reject}), L{None} without a record, or C{"?"}
        when it could not be found out (DNS trouble).
    """

    result: str
    domain: str
    policy: Optional[str] = None


def parseDMARC(domain: str, record: bytes) -> Optional[DMARCPolicy]:
    """RFC 7489 §6.3; L{None} if it is not a DMARC record."""
    text = record.decode("ascii", "replace")
    tags: Dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip().lower())
    if tags.get("v") != "dmarc1" or not text.lstrip().lower().startswith("v"):
        return None
    p = tags.get("p", "none")
    if p not in ("none", "quarantine", "reject"):
        # RFC 7489 §6.6.3: an invalid p= with a valid rua= counts as none.
        p = "none"
    sp = tags.get("sp", p)
    if sp not in ("none", "quarantine", "reject"):
        sp = p
    return DMARCPolicy(
        domain=domain,
        p=p,
        sp=sp,
        adkim="s" if tags.get("adkim") == "s" else "r",
        aspf="s" if tags.get("aspf") == "s" else "r",
    )


def findPolicy(dns: BlockingDNS, domain: str) -> Optional[DMARCPolicy]:
    """
    The DMARC record for C{domain}: its own, else the nearest parent's up
    to the organizational domain.

    @raise DNSFailure: a look-up failed.
    """
    organizational = organizationalDomain(domain)
    labels = domain.split(".")
    candidates = [".".join(labels[i:]) for i in range(len(labels))]
    stop = candidates.index(organizational) + 1 if organizational in candidates else 1
    candidates = candidates[:stop]
    if len(candidates) > MAX_DMARC_LOOKUPS:
        candidates = candidates[:1] + candidates[-(MAX_DMARC_LOOKUPS - 1) :]
    for candidate in candidates:
        records = [r for r in dns.txt("_dmarc." + candidate) if r.lstrip().lower().startswith(b"v=dmarc1")]
        if len(records) != 1:
            continue  # RFC 7489 §6.6.3: none, or several: no policy here
        policy = parseDMARC(candidate, records[0])
        if policy is not None:
            return policy
    return None


def _aligned(identifier: str, author: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict is the same name; relaxed the same organizational domain."""
    if not identifier:
        return False
    if mode == "s":
        return identifier == author
    return organizationalDomain(identifier) == organizationalDomain(author)


def checkDMARC(dns: BlockingDNS, author: str, spf: SPFResult, dkims: Sequence[DKIMResult]) -> DMARCResult:
    """RFC 7489 §6.6: judge one author domain."""
    try:
        policy = findPolicy(dns, author)
    except DNSFailure:
        policy = None
        unknown = True
    else:
        unknown = False
    adkim = policy.adkim if policy else "r"
    aspf = policy.aspf if policy else "r"
    spfAligned = _aligned(spf.domain, author, aspf)
    dkimAligned = [d for d in dkims if _aligned(d.domain, author, adkim)]
    passed = (spf.result == PASS and spfAligned) or any(d.result == PASS for d in dkimAligned)
    if unknown:
        return DMARCResult(PASS if passed else TEMPERROR, author, "?")
    if policy is None:
        return DMARCResult(NONE, author, None)
    requested = policy.p if policy.domain == author else policy.sp
    if passed:
        return DMARCResult(PASS, author, requested)
    if (spf.result == TEMPERROR and spfAligned) or any(d.result == TEMPERROR for d in dkimAligned):
        return DMARCResult(TEMPERROR, author, requested)
    return DMARCResult(FAIL, author, requested)


_SEVERITY = {FAIL: 4, TEMPERROR: 3, PERMERROR: 2, NONE: 1, PASS: 0}
_POLICY_SEVERITY = {"reject": 3, "?": 2, "quarantine": 1, "none": 0, None: 0}


def worst(results: Sequence[DMARCResult]) -> Optional[DMARCResult]:
    """The result that decides: the worst verdict, then the strictest policy."""
    if not results:
        return None
    return max(results, key=lambda r: (_SEVERITY.get(r.result, 0), _POLICY_SEVERITY.get(r.policy, 0)))


# --- the verdict on one message ------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class Refusal:
    """
    The message is not accepted: C{code} and C{text} for the SMTP reply
    (the enhanced status code first).
    """

    code: int
    text: str


@attr.s(frozen=True, auto_attribs=True)
class Verdict:
    spf: SPFResult
    dkim: List[DKIMResult]
    dmarc: Optional[DMARCResult]
    refusal: Optional[Refusal] = None

    def header(self, authservId: str) -> bytes:
        """RFC 8601 §2.2: the C{Authentication-Results} field, folded, with CRLF."""
        parts = ["%s=%s smtp.%s=%s" % ("spf", self.spf.result, self.spf.identity, _value(self.spf.subject))]
        if not self.dkim:
            parts.append("dkim=none")
        for d in self.dkim:
            part = "dkim=%s" % (d.result,)
            if d.reason:
                part += " (%s)" % (d.reason,)
            if d.domain:
                part += " header.d=%s" % (_value(d.domain),)
            if d.selector:
                part += " header.s=%s" % (_value(d.selector),)
            if d.algorithm:
                part += " header.a=%s" % (_value(d.algorithm),)
            if d.b:
                part += " header.b=%s" % (_value(d.b),)
            parts.append(part)
        if self.dmarc is None:
            parts.append("dmarc=none (no author domain)")
        else:
            comment = " (p=%s)" % (self.dmarc.policy,) if self.dmarc.policy not in (None, "?") else ""
            parts.append("dmarc=%s%s header.from=%s" % (self.dmarc.result, comment, _value(self.dmarc.domain)))
        return ("Authentication-Results: %s;\r\n\t%s\r\n" % (authservId, ";\r\n\t".join(parts))).encode("ascii")

    @property
    def quarantine(self) -> bool:
        """RFC 7489 §6.3: DMARC failed and the domain asks to treat the message as suspicious."""
        return self.dmarc is not None and self.dmarc.result == FAIL and self.dmarc.policy == "quarantine"

    def summary(self) -> str:
        """A short line for the log."""
        text = "spf=%s dkim=%s" % (self.spf.result, ",".join(d.result for d in self.dkim) or "none")
        if self.dmarc is not None:
            text += " dmarc=%s" % (self.dmarc.result,)
            if self.dmarc.policy:
                text += " p=%s" % ("unknown" if self.dmarc.policy == "?" else self.dmarc.policy,)
        return text


def judge(
    dns: BlockingDNS, message: bytes, ip: str, helo: str, mailFrom: str, rejectSPFFail: bool = False, tooLarge: bool = False
) -> Verdict:
    """
    SPF, DKIM and DMARC for one message, and the policy decision.  With
    C{tooLarge}, C{message} may be the header section alone: its DKIM
    signatures are C{policy} (not verified), and DMARC rests on SPF
    alignment alone.  The decision:

      - DMARC fail with C{p=reject}: C{550 5.7.1};
      - DMARC unknown for DNS trouble where a C{p=reject} would refuse:
        C{451 4.7.0};
      - SPF fail with C{reject_spf_fail}: C{550 5.7.1} (SPF temperror
        then: C{451 4.7.0}); softfail never refuses;
      - everything else is accepted with its verdict (C{p=quarantine}
        included).
    """
    headers, _ = splitMessage(message)
    spf = checkSPF(dns, ip, mailFrom, helo)
    dkims = checkDKIM(message, dns, tooLarge)
    dmarc = worst([checkDMARC(dns, author, spf, dkims) for author in authorDomains(headers)])
    refusal = None
    if dmarc is not None and dmarc.result == FAIL and dmarc.policy == "reject":
        refusal = Refusal(550, "5.7.1 Message refused: DMARC policy of %s (p=reject) and no aligned SPF or DKIM pass" % (dmarc.domain[:255],))
    elif dmarc is not None and dmarc.result == TEMPERROR and dmarc.policy in ("reject", "?"):
        refusal = Refusal(451, "4.7.0 Temporary DNS failure while checking DMARC for %s, try again later" % (dmarc.domain[:255],))
    elif rejectSPFFail and spf.result == FAIL:
        refusal = Refusal(550, "5.7.1 Message refused: SPF check of %s failed" % (spf.domain[:255] or "?",))
    elif rejectSPFFail and spf.result == TEMPERROR:
        refusal = Refusal(451, "4.7.0 Temporary DNS failure while checking SPF, try again later")
    return Verdict(spf, dkims, dmarc, refusal)
