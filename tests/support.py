"""
Helpers for integration tests: a real mailnet server on 127.0.0.1, ports
chosen by the kernel, state in the test's temporary directory.
"""

import ipaddress
import os
from typing import Any, Dict, Optional, Sequence

import attr
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

from mailnet.config import LISTENERS, Limits, loadConfig
from mailnet.service import MailService

LOOPBACK = "tcp:0:interface=127.0.0.1"


@attr.s(auto_attribs=True)
class RunningServer:
    service: MailService
    ports: Dict[str, int]
    certPath: str
    dataDir: str

    @property
    def accounts(self):
        return self.service.accounts

    @property
    def mailStore(self):
        return self.service.mailStore

    def addUser(self, address: str, password: str) -> None:
        from mailnet.passwords import hashPassword, lowCostHasher

        self.accounts.addUser(address, hashPassword(password, lowCostHasher()))

    def newFiles(self, address: str) -> list:
        """The paths of the messages in a user's C{new/}, oldest first."""
        directory = os.path.join(self.mailStore.pathFor(address), "new")
        if not os.path.isdir(directory):
            return []
        return sorted((os.path.join(directory, n) for n in os.listdir(directory)), key=os.path.getmtime)


def startServer(
    testCase,
    domains: Sequence[str] = ("example.test",),
    listeners: Sequence[str] = LISTENERS,
    limits: Optional[Dict[str, Any]] = None,
    **overrides: Any,
) -> Deferred:
    """
    Start a mailnet server for C{testCase} (stopped at its cleanup).

    @param limits: L{Limits} fields to change; the login failure delay is
        0 unless given.
    @param overrides: flat config keys (C{"tls.allow_plaintext_auth"} ...).
    @return: L{Deferred} firing with a L{RunningServer}.
    """
    dataDir = os.path.abspath(testCase.mktemp())
    settings = {"server.data_dir": dataDir, "server.hostname": "localhost", "server.domain": tuple(domains)}
    # The test clients are on loopback: no SPF/DKIM/DMARC look-ups (tests/test_verdicts.py
    # overrides this, with a DNS server of its own).
    settings["auth.trusted_networks"] = (ipaddress.ip_network("127.0.0.0/8"),)
    for name in LISTENERS:
        settings["listen." + name] = (LOOPBACK,) if name in listeners else ()
    settings.update(overrides)
    config = loadConfig(None, settings)
    config = attr.evolve(config, limits=attr.evolve(Limits(auth_failure_delay=0), **(limits or {})))
    service = MailService(config, reactor, handleSignals=False)
    service.startService()
    testCase.addCleanup(service.stopService)
    return succeed(RunningServer(service, service.ports(), service.tls.certPath, dataDir))
