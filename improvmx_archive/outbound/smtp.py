"""One SMTP transaction with the relay (smtplib), and what its outcome means.

The certificate is always verified (ssl.create_default_context, plus SMTP_CA_FILE). With
SMTP_IP_FAMILY=any each address gets a short connect timeout and the next family is tried,
so an IPv6 route that swallows packets cannot hold a send for minutes.

The transaction is spelled out (MAIL, RCPT each, DATA) instead of smtplib.sendmail so the
caller learns the moment the server said 354: from then on a lost connection leaves it
unknown whether the message was taken (RFC 1047), and the caller must never resend it on
its own. `before_body` runs at that moment and must persist that fact; if it raises, the
transaction is abandoned before a byte of the message is sent.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import SendingSettings, SmtpLogin

SENT, RETRY, FAILED, UNKNOWN = "sent", "retry", "failed", "unknown"
_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass
class Outcome:
    """result: sent | retry | failed | unknown; reply: the server's words for the person."""

    result: str
    reply: str
    refused: dict[str, str] = field(default_factory=dict)


def tls_context(settings: SendingSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_file:
        context.load_verify_locations(cafile=settings.ca_file)
    return context


def _families(choice: str) -> list[int]:
    return {"ipv4": [socket.AF_INET], "ipv6": [socket.AF_INET6]}.get(choice, [socket.AF_INET6, socket.AF_INET])


def connect_socket(host: str, port: int, family: str, connect_timeout: float, timeout: float) -> socket.socket:
    """A connected TCP socket: the addresses of the allowed families in turn (with `any`,
    IPv6 and IPv4 alternate), each given connect_timeout seconds."""
    addresses = []
    for fam in _families(family):
        try:
            addresses.append(socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM))
        except socket.gaierror:
            addresses.append([])
    ordered = [group[i] for i in range(max(map(len, addresses))) for group in addresses if i < len(group)]
    if not ordered:
        raise OSError(f"{host} has no {'address' if family == 'any' else family + ' address'}")
    last_error: OSError | None = None
    for fam, kind, proto, _, address in ordered:
        sock = socket.socket(fam, kind, proto)
        sock.settimeout(connect_timeout)
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        sock.settimeout(timeout)
        return sock
    raise last_error or OSError("connection failed")


class _Plain(smtplib.SMTP):
    def __init__(self, settings: SendingSettings):
        self.settings = settings
        super().__init__(timeout=settings.timeout)
        self._host = settings.host  # what STARTTLS checks the certificate against

    def _get_socket(self, host, port, timeout):
        return connect_socket(host, port, self.settings.ip_family, self.settings.connect_timeout, timeout)


class _Implicit(smtplib.SMTP_SSL):
    def __init__(self, settings: SendingSettings, context: ssl.SSLContext):
        self.settings = settings
        super().__init__(timeout=settings.timeout, context=context)
        self._host = settings.host

    def _get_socket(self, host, port, timeout):
        sock = connect_socket(host, port, self.settings.ip_family, self.settings.connect_timeout, timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


def open_session(settings: SendingSettings, login: SmtpLogin | None) -> smtplib.SMTP:
    """Connected, encrypted (unless plain on loopback) and logged in; raises smtplib/OSError/ssl errors."""
    context = tls_context(settings)
    client = _Implicit(settings, context) if settings.security == "tls" else _Plain(settings)
    try:
        client.connect(settings.host, settings.port)
        client.ehlo()
        if settings.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if login is not None:
            client.login(login.username, login.password)
    except BaseException:
        client.close()
        raise
    return client


def _words(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return f"{code} {' '.join(text.split())}".strip()


def _verdict(code: int) -> str:
    return RETRY if 400 <= code < 500 else FAILED


def deliver(settings: SendingSettings, login: SmtpLogin | None, sender: str, recipients: list[str],
            raw: bytes, before_body: Callable[[], None]) -> Outcome:
    """Send raw to recipients; never raises. Before DATA's 354 anything wrong is retry (4xx,
    network) or failed (5xx); after it, a lost connection is unknown."""
    try:
        client = open_session(settings, login)
    except smtplib.SMTPAuthenticationError as error:
        return Outcome(_verdict(error.smtp_code), "login refused: " + _words(error.smtp_code, error.smtp_error))
    except smtplib.SMTPResponseException as error:
        return Outcome(_verdict(error.smtp_code), _words(error.smtp_code, error.smtp_error))
    except ssl.SSLCertVerificationError as error:
        return Outcome(RETRY, f"the server's certificate was not accepted ({error.verify_message})")
    except (smtplib.SMTPException, OSError) as error:
        return Outcome(RETRY, f"could not reach {settings.host}:{settings.port} ({_network_words(error)})")
    except Exception as error:  # noqa: BLE001 - nothing was sent; the sender must go on
        return Outcome(RETRY, f"could not open a session with {settings.host} ({type(error).__name__})")
    try:
        return _transaction(client, sender, recipients, raw, before_body)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _network_words(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "timed out"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return "connection closed by the server"
    return getattr(error, "strerror", None) or type(error).__name__


def _transaction(client: smtplib.SMTP, sender: str, recipients: list[str], raw: bytes,
                 before_body: Callable[[], None]) -> Outcome:
    try:
        code, reply = client.mail(sender)
        if code != 250:
            return Outcome(_verdict(code), _words(code, reply))
        refused: dict[str, str] = {}
        temporary = False
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = _words(code, reply)
                temporary = temporary or 400 <= code < 500
        if len(refused) == len(recipients):
            client.rset()
            first = next(iter(refused.values()))
            return Outcome(RETRY if temporary else FAILED, f"every recipient was refused: {first}", refused)
        code, reply = client.docmd("data")
        if code != 354:
            return Outcome(_verdict(code), _words(code, reply), refused)
    except (smtplib.SMTPException, OSError) as error:
        return Outcome(RETRY, f"connection lost before the message was sent ({_network_words(error)})")
    try:
        before_body()
    except Exception:  # noqa: BLE001 - could not record that the body goes out: do not send it
        client.close()
        return Outcome(RETRY, "the send was postponed: its state could not be recorded")
    body = _LEADING_DOT.sub(b"..", raw)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    try:
        client.send(body + b".\r\n")
        code, reply = client.getreply()
    except (smtplib.SMTPException, OSError) as error:
        return Outcome(UNKNOWN, "the connection was lost after the message was transmitted "
                                f"({_network_words(error)}); it may or may not have been delivered")
    if code == 250:
        return Outcome(SENT, _words(code, reply), refused)
    return Outcome(_verdict(code), _words(code, reply), refused)
