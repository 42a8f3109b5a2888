# -*- test-case-name: tests.test_autoconfig -*-
"""
Client autoconfiguration, from the running configuration: the documents
mail clients fetch to find their servers, the MTA-STS policy, and the DNS
records that point clients at them.  Pure functions, no Twisted; served
by L{mailnet.web} and printed by C{mailnet-admin check}.

 - Thunderbird's autoconfig (C{config-v1.1.xml},
   U{https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat}).
 - Microsoft's POX autodiscover (C{autodiscover.xml}, MS-OXDSCLI), the
   request answered with IMAP/POP3/SMTP settings.
 - An Apple configuration profile (C{.mobileconfig}, unsigned).
 - The MTA-STS policy (RFC 8461 §3.2) and the DNS records: C{autoconfig}
   and C{autodiscover} host names, RFC 6186 SRV records, C{_mta-sts} TXT.
"""

import hashlib
import plistlib
import re
import uuid
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple
from xml.etree import ElementTree as ET

from mailnet.config import Config

#: Largest autodiscover request body read (it is a few hundred octets).
MAX_REQUEST = 16384

#: Seconds a client may cache the MTA-STS policy (RFC 8461 §3.2: up to a year).
MTA_STS_MAX_AGE = 604800

AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


class Server(NamedTuple):
    """One server a client may use."""

    protocol: str  # "imap", "pop3", "smtp"
    port: int
    implicitTLS: bool  # else STARTTLS (STLS)


# role -> (protocol, implicit TLS); in the order clients should prefer
# (RFC 8314 §3: implicit TLS first, for reading).
_ROLES = (
    ("imaps", "imap", True),
    ("imap", "imap", False),
    ("pop3s", "pop3", True),
    ("pop3", "pop3", False),
    ("submission", "smtp", False),
    ("smtps", "smtp", True),
)


def _port(description: str) -> Optional[int]:
    """The port of a C{tcp:}/C{tcp6:}/C{ssl:} endpoint string, else L{None}."""
    match = re.match(r"(?:tcp6?|ssl):(?:port=)?(\d+)(?::|$)", description.strip())
    if match is None:
        match = re.search(r"(?:^|:)port=(\d+)(?::|$)", description)
    return int(match.group(1)) if match else None


def servers(config: Config, bound: Mapping[str, int] = {}) -> List[Server]:
    """
    The servers a client can use, from the listeners of C{config} (the
    first endpoint of each role).

    @param bound: role -> the port actually bound (for port 0 endpoints).
    """
    result = []
    for role, protocol, implicit in _ROLES:
        endpoints = config.listen.get(role, ())
        if not endpoints:
            continue
        port = bound.get(role) or _port(endpoints[0])
        if port:
            result.append(Server(protocol, port, implicit))
    return result


def _sub(parent: ET.Element, tag: str, text: Optional[str] = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def thunderbird(hostname: str, domain: str, available: Sequence[Server]) -> bytes:
    """
    Thunderbird's C{config-v1.1.xml} for C{domain}'s users (the login is
    the full address, C{%EMAILADDRESS%}).
    """
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", "%s mail" % (domain,))
    _sub(provider, "displayShortName", domain)
    for server in available:
        tag = "outgoingServer" if server.protocol == "smtp" else "incomingServer"
        element = _sub(provider, tag, type=server.protocol)
        _sub(element, "hostname", hostname)
        _sub(element, "port", str(server.port))
        _sub(element, "socketType", "SSL" if server.implicitTLS else "STARTTLS")
        _sub(element, "authentication", "password-cleartext")
        _sub(element, "username", "%EMAILADDRESS%")
    return _xml(root)


class BadRequest(Exception):
    """The autodiscover request is not one we can answer."""


def autodiscoverAddress(body: bytes) -> str:
    """
    The e-mail address of an autodiscover request (C{<EMailAddress>}).

    @raise BadRequest: too large, not XML, a DTD (no entity tricks), or no
        address.
    """
    if len(body) > MAX_REQUEST:
        raise BadRequest("request too large")
    if b"<!" in body:
        raise BadRequest("DTDs and comments are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise BadRequest("not XML")
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "EMailAddress" and element.text:
            address = element.text.strip()
            if len(address) <= 254 and re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
                return address
            raise BadRequest("bad address")
    raise BadRequest("no EMailAddress")


def autodiscover(hostname: str, address: str, available: Sequence[Server]) -> bytes:
    """Microsoft's POX autodiscover response for C{address}."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE)
    response = _sub(root, "Response", xmlns=OUTLOOK_RESPONSE)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    # Outlook takes the first protocol of each type: implicit TLS for
    # reading, STARTTLS submission (then 465) for sending.
    done = set()
    for server in available:
        if server.protocol in done:
            continue
        done.add(server.protocol)
        protocol = _sub(account, "Protocol")
        _sub(protocol, "Type", server.protocol.upper())
        _sub(protocol, "Server", hostname)
        _sub(protocol, "Port", str(server.port))
        _sub(protocol, "LoginName", address)
        _sub(protocol, "DomainRequired", "off")
        _sub(protocol, "SPA", "off")
        if server.implicitTLS:
            _sub(protocol, "SSL", "on")
        else:
            _sub(protocol, "Encryption", "TLS")
        _sub(protocol, "AuthRequired", "on")
    return _xml(root)


def mobileconfig(hostname: str, address: str, available: Sequence[Server]) -> bytes:
    """
    An Apple configuration profile (unsigned) with one mail account for
    C{address}; its password is asked for on the device.
    """
    incoming = next((s for s in available if s.protocol != "smtp"), None)
    outgoing = next((s for s in available if s.protocol == "smtp"), None)
    if incoming is None or outgoing is None:
        raise BadRequest("no incoming or no outgoing server is configured")
    seed = "%s %s" % (hostname, address)
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": "mailnet.%s.account" % (hostname,),
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, "mailnet account " + seed)).upper(),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": "mailnet.%s" % (hostname,),
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, "mailnet profile " + seed)).upper(),
        "PayloadDisplayName": "Mail on %s" % (hostname,),
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile)


def mtaSTSMode(config: Config) -> str:
    """C{enforce} with a configured certificate, C{testing} with the self-signed one."""
    return "enforce" if config.tls_cert else "testing"


def mtaSTSPolicy(config: Config) -> bytes:
    """The MTA-STS policy file (RFC 8461 §3.2): our host is the MX."""
    lines = [
        "version: STSv1",
        "mode: %s" % (mtaSTSMode(config),),
        "mx: %s" % (config.hostname.rstrip("."),),
        "max_age: %d" % (MTA_STS_MAX_AGE,),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def mtaSTSId(config: Config) -> str:
    """The policy's C{id} (RFC 8461 §3.1): changes whenever the policy does."""
    return hashlib.sha256(mtaSTSPolicy(config)).hexdigest()[:20]


def dnsRecords(config: Config, domain: str) -> List[Tuple[str, str, str]]:
    """
    The records that make clients (and MTA-STS senders) find C{domain}'s
    settings: (name, type, value) with absolute names.
    """
    host = config.hostname.rstrip(".")
    rows = [
        ("autoconfig.%s." % domain, "CNAME", "%s." % host),
        ("autodiscover.%s." % domain, "CNAME", "%s." % host),
        ("mta-sts.%s." % domain, "CNAME", "%s." % host),
        ("_mta-sts.%s." % domain, "TXT", '"v=STSv1; id=%s"' % (mtaSTSId(config),)),
    ]
    # RFC 6186 §3: priority weight port target; "." for a service not offered.
    wanted = {"submission": "_submission._tcp", "imaps": "_imaps._tcp", "pop3s": "_pop3s._tcp", "imap": "_imap._tcp"}
    for role, service in wanted.items():
        endpoints = config.listen.get(role, ())
        if not endpoints:
            if role != "imap":
                rows.append(("%s.%s." % (service, domain), "SRV", "0 0 0 ."))
            continue
        port = _port(endpoints[0])
        if port:  # not port 0 (chosen at start) or a UNIX socket
            rows.append(("%s.%s." % (service, domain), "SRV", "0 1 %d %s." % (port, host)))
    return rows


def domainOf(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip().lower().rstrip(".")

