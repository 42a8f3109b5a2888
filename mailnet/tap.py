# -*- test-case-name: tests.test_tap -*-
"""
C{twistd mailnet}: command-line options and the service they make.
"""

import sys
from typing import IO, Any, Dict, Optional

from twisted.python import usage

from mailnet.config import DEFAULT_LISTEN, LISTENERS, Config, loadConfig
from mailnet.errors import BadAddress, ConfigError

_LISTENER_HELP = {
    "smtp": "MTA listener: mail for local domains; relays only for authenticated clients",
    "submission": "submission listener (RFC 6409): STARTTLS, then AUTH required",
    "smtps": "submission over implicit TLS (RFC 8314)",
    "pop3": "POP3 listener with STLS",
    "pop3s": "POP3 over implicit TLS",
    "imap": "IMAP4 listener with STARTTLS (LOGINDISABLED before TLS)",
    "imaps": "IMAP4 over implicit TLS",
    "http": "/metrics (Prometheus), /healthz, client autoconfiguration",
}


class Options(usage.Options):
    """
    Options for C{twistd mailnet}.  Listener options take Twisted server
    endpoint strings and may be repeated; the ini file given with
    C{--config} supplies anything not given here.
    """

    synopsis = "[options]"
    longdesc = (
        "Runs the mailnet email server: ESMTP for local domains, authenticated submission "
        "(STARTTLS and implicit TLS), and POP3 (STLS and implicit TLS), storing mail in Maildirs "
        "under the data dir. With no options it listens on 127.0.0.1 only, on unprivileged ports "
        "(SMTP 2525, submission 2587, SMTPS 2465, POP3 2110, POP3S 2995, IMAP 2143, IMAPS 2993; HTTP 2880 for metrics, health and client autoconfiguration), "
        "keeps its state in "
        "./mailnet-data and generates a self-signed certificate there. Add users with mailnet-admin."
    )

    optParameters = [
        ["config", "c", None, "ini file (see etc/mailnet.ini); command-line options override it"],
        ["data-dir", "d", None, "directory for all state: accounts, maildirs, queue, certificate [default: ./mailnet-data]"],
        ["hostname", None, None, "name in the greeting, EHLO and Received headers [default: this machine's FQDN]"],
        ["tls-cert", None, None, "PEM certificate (chain allowed) [default: self-signed, generated into the data dir]"],
        ["tls-key", None, None, "PEM private key for --tls-cert"],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["domain"] = []
        for name in LISTENERS:
            self[name] = []
            self["no-" + name] = False

    #: Where configuration errors are written (L{None}: C{sys.stderr}).
    stderr: Optional[IO[str]] = None

    def opt_version(self) -> None:
        """Print mailnet's version and exit."""
        import twisted

        from mailnet import __version__

        print("mailnet %s (Twisted %s)" % (__version__, twisted.__version__))
        raise SystemExit(0)

    def opt_domain(self, domain: str) -> None:
        """A local domain (repeatable)."""
        self["domain"].append(domain)

    def postOptions(self) -> None:
        for name in LISTENERS:
            if self[name] and self["no-" + name]:
                raise usage.UsageError("--%s and --no-%s cannot be used together" % (name, name))
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key must be given together")
        # Validate the ini file here, before twistd starts anything.  A
        # configuration error is one line and exit status 1, not twistd's
        # page of usage with the one useful line at its end.
        try:
            self.mailnetConfig = loadConfig(self["config"], self.overrides())
        except ConfigError as e:
            stderr = self.stderr or sys.stderr
            stderr.write("mailnet: error: %s\n" % (e,))
            stderr.flush()
            raise SystemExit(1)

    def overrides(self) -> Dict[str, Any]:
        """The command line as flat config keys (see L{mailnet.config.buildConfig})."""
        result: Dict[str, Any] = {
            "server.data_dir": self["data-dir"],
            "server.hostname": self["hostname"],
            "tls.cert": self["tls-cert"],
            "tls.key": self["tls-key"],
        }
        if self["domain"]:
            from mailnet.address import normalizeDomain

            try:
                result["server.domain"] = tuple(normalizeDomain(d) for d in self["domain"])
            except BadAddress as e:
                raise usage.UsageError("--domain: %s" % (e,))
        for name in LISTENERS:
            if self["no-" + name]:
                result["listen." + name] = ()
            elif self[name]:
                result["listen." + name] = tuple(self[name])
        return result

    def config(self) -> Config:
        """
        @raise usage.UsageError: the ini file or a value is bad.
        """
        try:
            config = loadConfig(self["config"], self.overrides())
        except ConfigError as e:
            raise usage.UsageError(str(e))
        return config


def _listenerOption(name: str):
    def opt(self: Options, description: str) -> None:
        self[name].append(description)

    opt.__doc__ = "%s (repeatable) [default: %s]" % (_LISTENER_HELP[name], DEFAULT_LISTEN[name])
    return opt


def _noListenerOption(name: str):
    def noOpt(self: Options) -> None:
        self["no-" + name] = True

    noOpt.__doc__ = "turn the %s listener off" % (name,)
    return noOpt


def _addListenerOptions() -> None:
    for name in LISTENERS:
        setattr(Options, "opt_" + name, _listenerOption(name))
        setattr(Options, "opt_no_" + name, _noListenerOption(name))


_addListenerOptions()


def makeService(options: Options, reactor: Optional[Any] = None):
    """
    Build the mail service from parsed options.

    @raise SystemExit: the configuration cannot work (the reason is on stderr).
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    from mailnet.service import MailService

    config = getattr(options, "mailnetConfig", None) or options.config()
    try:
        return MailService(config, reactor)
    except ConfigError as e:
        # twistd would show a traceback for any exception raised here.
        sys.stderr.write("mailnet: error: %s\n" % (e,))
        raise SystemExit(1)
