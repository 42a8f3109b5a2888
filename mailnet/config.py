# -*- test-case-name: tests.test_config -*-
"""
mailnet's configuration: one frozen value built from the ini file and the
command line, validated in one place.

Every key that the ini file accepts is declared in L{SCHEMA}; the commented
example C{etc/mailnet.ini} is kept in step with it by a test.
"""

import configparser
import os
import re
import socket
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import attr

from mailnet.address import normalizeDomain
from mailnet.diskspace import DEFAULT_FREE_SPACE, FreeSpace, parseFreeSpace
from mailnet.errors import BadAddress, ConfigError

LISTENERS = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "http")

DEFAULT_LISTEN = {
    "smtp": "tcp:2525:interface=127.0.0.1",
    "submission": "tcp:2587:interface=127.0.0.1",
    "smtps": "tcp:2465:interface=127.0.0.1",
    "pop3": "tcp:2110:interface=127.0.0.1",
    "pop3s": "tcp:2995:interface=127.0.0.1",
    "imap": "tcp:2143:interface=127.0.0.1",
    "imaps": "tcp:2993:interface=127.0.0.1",
    # Metrics, health and client autoconfiguration (mailnet.web).
    "http": "tcp:2880:interface=127.0.0.1",
}


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Limits:
    """
    Resource limits shared by every protocol.  Times are in seconds, sizes
    in octets.
    """

    max_message_size: int = 26214400
    max_recipients: int = 100
    idle_timeout: int = 300
    pop3_idle_timeout: int = 600
    max_connections: int = 1000
    max_connections_per_client: int = 50
    auth_failure_delay: float = 2.0
    max_auth_failure_delay: float = 30.0
    #: Seconds a successful login is remembered (0: never; see
    #: mailnet.passwords.LoginCache).
    login_cache_ttl: float = 600.0
    max_command_line: int = 2048
    max_errors: int = 20
    command_timeout: int = 300
    max_hops: int = 100
    #: Below this much free space in the data dir, new mail is refused (452 4.3.1).
    min_free_space: FreeSpace = DEFAULT_FREE_SPACE


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class RelaySettings:
    """
    Outbound delivery: next hops and the retry schedule.
    """

    smarthost: Optional[Tuple[str, int]] = None
    smarthost_user: str = ""
    smarthost_password: str = ""
    require_tls: bool = False
    routes: Mapping[str, Tuple[str, int]] = attr.ib(factory=dict)
    retry_initial: int = 60
    retry_max: int = 3600
    give_up_after: int = 5 * 86400
    delay_warning_after: int = 4 * 3600
    max_connections: int = 20
    max_connections_per_domain: int = 4


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class Config:
    """
    Everything the daemon needs to start.
    """

    hostname: str
    data_dir: str = "./mailnet-data"
    domains: Tuple[str, ...] = ()
    listen: Mapping[str, Tuple[str, ...]] = attr.ib(factory=lambda: {k: (v,) for k, v in DEFAULT_LISTEN.items()})
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    allow_plaintext_auth: bool = False
    limits: Limits = attr.ib(factory=Limits)
    relay: RelaySettings = attr.ib(factory=RelaySettings)
    log_json: Optional[str] = None
    # [dkim], [dns], [auth]: signing and the verdicts on incoming mail.
    dkim_selector: str = "s1"
    dns_resolvers: Tuple[Tuple[str, int], ...] = ()
    trusted_networks: Tuple[Any, ...] = ()
    reject_spf_fail: bool = False
    # [server] workers: reactor processes sharing the listeners (mailnet.workers).
    workers: int = 1


def defaultHostname() -> str:
    return socket.getfqdn() or "localhost"


# --- parsing -------------------------------------------------------------


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _positiveInt(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number above 0") from None
    if value <= 0:
        raise ValueError("expected a whole number above 0")
    return value


def _nonNegativeFloat(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of 0 or more (seconds: no unit)") from None
    if value < 0:
        raise ValueError("expected a number of 0 or more")
    return value


def _size(text: str) -> int:
    """Octets, with an optional K/M/G suffix (binary multiples)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if not match:
        raise ValueError("expected a size such as 26214400 or 25M")
    number, unit = match.groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def _text(text: str) -> str:
    return text.strip()


def _domains(text: str) -> Tuple[str, ...]:
    return tuple(normalizeDomain(d.strip()) for d in text.split(",") if d.strip())


def _endpoints(text: str) -> Tuple[str, ...]:
    """Comma-separated endpoint strings; empty turns the listener off."""
    return tuple(e.strip() for e in re.split(r",\s*(?=[a-z0-9]+:)", text) if e.strip())


def hostPort(text: str) -> Tuple[str, int]:
    """Parse C{host:port} (or C{[v6]:port}); the port defaults to 25."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", text)
    if not match:
        raise ValueError("expected host:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 25)
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return host, port


def _selector(text: str) -> str:
    from mailnet.dkim import BadSelector, checkSelector

    try:
        return checkSelector(text.strip())
    except BadSelector as e:
        raise ValueError(str(e))


def _resolvers(text: str) -> Tuple[Tuple[str, int], ...]:
    """C{host:port, ...} of DNS servers (the port defaults to 53)."""
    servers = []
    for item in text.split(","):
        item = item.strip()
        if item:
            host, port = hostPort(item if re.search(r"(\]|^[^:]*):\d+$", item) else item + ":53")
            servers.append((host, port))
    return tuple(servers)


def _networks(text: str) -> Tuple[Any, ...]:
    """Comma-separated networks (C{192.0.2.0/24}, C{2001:db8::/32}) or addresses."""
    import ipaddress

    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in text.split(",") if n.strip())


def _workers(text: str) -> int:
    """A number of processes, or C{auto}: one per CPU."""
    from mailnet.workers import resolveWorkers

    return resolveWorkers(text)


def _optionalHostPort(text: str) -> Optional[Tuple[str, int]]:
    return hostPort(text) if text.strip() else None


# section -> key -> (parser, where it goes)
SCHEMA: Dict[str, Dict[str, Callable[[str], Any]]] = {
    "server": {"hostname": _text, "domain": _domains, "data_dir": _text, "log_json": _text, "workers": _workers},
    "listen": {name: _endpoints for name in LISTENERS},
    "tls": {"cert": _text, "key": _text, "allow_plaintext_auth": _bool},
    "limits": {
        "max_message_size": _size,
        "max_recipients": _positiveInt,
        "idle_timeout": _positiveInt,
        "pop3_idle_timeout": _positiveInt,
        "max_connections": _positiveInt,
        "max_connections_per_client": _positiveInt,
        "auth_failure_delay": _nonNegativeFloat,
        "max_auth_failure_delay": _nonNegativeFloat,
        "login_cache_ttl": _nonNegativeFloat,
        "max_command_line": _positiveInt,
        "max_errors": _positiveInt,
        "command_timeout": _positiveInt,
        "max_hops": _positiveInt,
        "min_free_space": parseFreeSpace,
    },
    "relay": {
        "smarthost": _optionalHostPort,
        "smarthost_user": _text,
        "smarthost_password": _text,
        "require_tls": _bool,
        "retry_initial": _positiveInt,
        "retry_max": _positiveInt,
        "give_up_after": _positiveInt,
        "delay_warning_after": _positiveInt,
        "max_connections": _positiveInt,
        "max_connections_per_domain": _positiveInt,
    },
    "dkim": {"selector": _selector},
    "dns": {"resolvers": _resolvers},
    "auth": {"trusted_networks": _networks, "reject_spf_fail": _bool},
    # [routes] has free-form keys: a domain each.
}


def _lineNumbers(path: str) -> Dict[Tuple[str, str], int]:
    """Find where each section and key stands, for error messages."""
    where: Dict[Tuple[str, str], int] = {}
    section = ""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if stripped.startswith("[") and "]" in stripped:
                section = stripped[1 : stripped.index("]")].strip()
                where.setdefault((section, ""), number)
            elif stripped and stripped[0] not in "#;" and not line[0].isspace():
                key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip().lower()
                where.setdefault((section, key), number)
    return where


def describeIniError(path: str, error: Exception) -> ConfigError:
    """
    A C{configparser} error in words a person can act on, naming the file
    and line (not the parser's own "File contains no section headers").
    """
    line = getattr(error, "lineno", None)
    where = "%s:%d" % (path, line) if line else path
    if isinstance(error, configparser.MissingSectionHeaderError):
        return ConfigError(where=where, problem="a setting before any [section] header; put it under its section")
    if isinstance(error, configparser.DuplicateSectionError):
        return ConfigError(where=where, problem="section [%s] appears a second time; merge the two" % (error.section,))
    if isinstance(error, configparser.DuplicateOptionError):
        return ConfigError(where=where, problem="%r appears a second time in [%s]; keep one" % (error.option, error.section))
    if isinstance(error, configparser.ParsingError) and error.errors:
        number, text = error.errors[0]
        return ConfigError(
            where="%s:%d" % (path, number), problem="%r is not a 'key = value' line" % (str(text).strip()[:80],)
        )
    if isinstance(error, UnicodeDecodeError):
        return ConfigError(where=path, problem="not UTF-8 text")
    return ConfigError(where=path, problem=str(error).replace("\n", " "))


def readIni(path: str) -> Dict[str, Any]:
    """
    Read and validate an ini file.

    @return: a flat mapping of settings (C{"server.hostname"},
        C{"limits.max_recipients"}, C{"routes"} ...) with parsed values.
    @raise ConfigError: naming the file, the line and the key.
    """
    if not os.path.isfile(path):
        raise ConfigError(where=path, problem="no such file")
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True, default_section="\0"
    )
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as e:
        raise describeIniError(path, e)
    lines = _lineNumbers(path)
    settings: Dict[str, Any] = {}
    for section in parser.sections():
        if section == "routes":
            routes = {}
            for key, value in parser.items(section):
                at = "%s:%d" % (path, lines.get((section, key), 0))
                try:
                    routes[normalizeDomain(key)] = hostPort(value)
                except (ValueError, BadAddress) as e:
                    raise ConfigError(where=at, problem="[routes] %s = %r: %s" % (key, value, e))
            settings["routes"] = routes
            continue
        keys = SCHEMA.get(section)
        if keys is None:
            raise ConfigError(
                where="%s:%d" % (path, lines.get((section, ""), 0)),
                problem="unknown section [%s]; known sections: %s"
                % (section, ", ".join("[%s]" % s for s in list(SCHEMA) + ["routes"])),
            )
        for key, value in parser.items(section):
            at = "%s:%d" % (path, lines.get((section, key), 0))
            if key not in keys:
                raise ConfigError(
                    where=at,
                    problem="unknown key %r in [%s]; known keys: %s" % (key, section, ", ".join(keys)),
                )
            try:
                settings["%s.%s" % (section, key)] = keys[key](value)
            except (ValueError, BadAddress) as e:
                raise ConfigError(where=at, problem="bad value for %s in [%s]: %r (%s)" % (key, section, value, e))
    return settings


def buildConfig(settings: Mapping[str, Any], overrides: Mapping[str, Any] = {}) -> Config:
    """
    Combine ini settings (from L{readIni}) with command-line overrides (same
    flat keys; a value of L{None} means "not given").

    @raise ConfigError: for combinations that cannot work.
    """
    merged = dict(settings)
    merged.update({k: v for k, v in overrides.items() if v is not None})

    def section(name: str) -> Dict[str, Any]:
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}

    listen = {name: (DEFAULT_LISTEN[name],) for name in LISTENERS}
    listen.update(section("listen"))
    relay = section("relay")
    relay["routes"] = merged.get("routes", {})
    tls = section("tls")
    if bool(tls.get("cert")) != bool(tls.get("key")):
        raise ConfigError(where="[tls]", problem="cert and key must be given together")
    server = section("server")
    return Config(
        hostname=server.get("hostname") or defaultHostname(),
        data_dir=server.get("data_dir") or "./mailnet-data",
        domains=tuple(dict.fromkeys(server.get("domain", ()))),
        listen=listen,
        tls_cert=tls.get("cert") or None,
        tls_key=tls.get("key") or None,
        allow_plaintext_auth=tls.get("allow_plaintext_auth", False),
        limits=Limits(**section("limits")),
        relay=RelaySettings(**relay),
        log_json=server.get("log_json") or None,
        dkim_selector=merged.get("dkim.selector") or "s1",
        dns_resolvers=tuple(merged.get("dns.resolvers", ())),
        trusted_networks=tuple(merged.get("auth.trusted_networks", ())),
        reject_spf_fail=bool(merged.get("auth.reject_spf_fail", False)),
        workers=server.get("workers") or 1,
    )


def loadConfig(path: Optional[str], overrides: Mapping[str, Any] = {}) -> Config:
    """
    Read C{path} (if given) and apply C{overrides}.

    @raise ConfigError: the file is missing or bad.
    """
    return buildConfig(readIni(path) if path else {}, overrides)


def iterKeys() -> Iterable[Tuple[str, str]]:
    """Every (section, key) the ini file accepts, for docs and tests."""
    for section, keys in SCHEMA.items():
        for key in keys:
            yield section, key


def listenerNames() -> List[str]:
    return list(LISTENERS)
