"""Dev/test only: a real SMTP relay standing in for smtp.improvmx.com, with aiosmtpd.

`make_ca(dir)` writes a throwaway CA and a server certificate for localhost/127.0.0.1
(openssl CLI); `Relay` serves STARTTLS (587-style) or implicit TLS (465-style) with AUTH
on a free port, records every message it accepts, and can be told to misbehave: answer
451 or 550 to DATA, refuse chosen recipients, drop the connection after the body (having
taken the message), or hold a transaction (at RCPT or after the body) until released.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .processes import free_port

USERNAME = "support@example.com"
PASSWORD = "relay-password-123"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_ca(directory: Path) -> Certificates:
    """A CA and a localhost certificate it signed (both valid for two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / name for name in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                                 "server.pem"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=improvmx-archive test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                          "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(extensions))
    return Certificates(ca, cert, key)


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None


@dataclass
class Behaviour:
    """What the relay does next; the test changes it between sends."""

    data_replies: list[str] = field(default_factory=list)  # replies to DATA, one per message, then 250
    refuse: set[str] = field(default_factory=set)  # recipients answered 550 at RCPT
    drop_after_data: int = 0  # this many next messages: taken, then the connection is cut
    hold_at_rcpt: threading.Event | None = None  # RCPT waits until set
    hold_after_data: threading.Event | None = None  # takes the message, then waits until set


class _Handler:
    def __init__(self, relay: "Relay"):
        self.relay = relay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        behaviour = self.relay.behaviour
        if behaviour.hold_at_rcpt is not None:
            self.relay.waiting.set()
            while not behaviour.hold_at_rcpt.is_set():
                await asyncio.sleep(0.05)
        if address.lower() in behaviour.refuse:
            return "550 5.1.1 Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        behaviour = self.relay.behaviour
        if behaviour.data_replies:
            reply = behaviour.data_replies.pop(0)
            if not reply.startswith("250"):
                self.relay.refusals.append(reply)
                return reply
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.relay.deliveries.append(Delivery(envelope.mail_from, list(envelope.rcpt_tos),
                                              bytes(envelope.original_content or envelope.content), login))
        if behaviour.hold_after_data is not None:
            self.relay.waiting.set()
            while not behaviour.hold_after_data.is_set():
                await asyncio.sleep(0.05)
        if behaviour.drop_after_data:
            behaviour.drop_after_data -= 1
            server.transport.abort()
            return "250 OK (never seen: the connection is gone)"
        return "250 2.0.0 Ok: queued"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USERNAME \
        and auth_data.password.decode() == PASSWORD
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class Relay:
    """A running relay: mode "starttls" or "tls"; .deliveries grows as mail is accepted."""

    def __init__(self, certificates: Certificates, mode: str = "starttls", port: int | None = None):
        self.certificates = certificates
        self.mode = mode
        self.port = port or free_port()
        self.behaviour = Behaviour()
        self.deliveries: list[Delivery] = []
        self.refusals: list[str] = []
        self.waiting = threading.Event()
        self._controller: Controller | None = None

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.certificates.cert), str(self.certificates.key))
        return context

    def start(self) -> "Relay":
        handler = _Handler(self)
        common = {"hostname": "127.0.0.1", "port": self.port, "authenticator": _authenticator,
                  "auth_required": True, "server_hostname": "localhost", "ready_timeout": 10}
        if self.mode == "tls":  # aiosmtpd advertises AUTH over implicit TLS only when told (bug #281);
            with warnings.catch_warnings():  # its warning assumes plain text, but this socket is TLS
                warnings.simplefilter("ignore", UserWarning)
                self._controller = Controller(handler, ssl_context=self._context(), auth_require_tls=False,
                                              **common)
        else:
            self._controller = Controller(handler, tls_context=self._context(), require_starttls=True, **common)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")
            time.sleep(0.05)
        return self.deliveries

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
