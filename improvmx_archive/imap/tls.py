"""The IMAP server's TLS context: read from IMAP_TLS_CERT/IMAP_TLS_KEY, reloaded on SIGHUP.

Twisted asks getContext() for every new connection (and every STARTTLS), so a reload
reaches the next connection without a restart; a renewal that does not load (a half-written
file, a key that does not match) keeps the previous context and logs why.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

log = logging.getLogger(__name__)


def load_context(cert: Path, key: Path) -> SSL.Context:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.use_certificate_chain_file(str(cert))
    context.use_privatekey_file(str(key))
    context.check_privatekey()
    return context


def certificate_expiry(cert: Path) -> datetime:
    """When the first certificate in the chain file expires (UTC)."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    return certificate.not_valid_after_utc.astimezone(timezone.utc)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingContextFactory:
    """Twisted's TLS connection creator (and old-style context factory, for STARTTLS) whose
    context a reload() replaces."""

    def __init__(self, cert: Path, key: Path):
        self.cert = cert
        self.key = key
        self._context = load_context(cert, key)

    def getContext(self) -> SSL.Context:
        return self._context

    def serverConnectionForTLS(self, tls_protocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        try:
            self._context = load_context(self.cert, self.key)
        except (OSError, SSL.Error) as error:
            log.error("imap: certificate reload failed, keeping the previous one (%s)", type(error).__name__)
            return False
        log.info("imap: certificate reloaded from %s (expires %s)", self.cert,
                 certificate_expiry(self.cert).isoformat())
        return True
