"""Imported first by the reference receivers' processes (bench/harness.py puts this directory
on their PYTHONPATH): they run as their operators install them, from virtualenvs holding only
their own requirements. This repository's virtualenv also has pyOpenSSL (Twisted's TLS for
the IMAP view), and pymongo would load it, with cryptography and service_identity, into every
reference worker: ~10 MiB a worker the original receiver never had. The same line as the
archive's own (improvmx_archive/__init__.py) keeps pymongo on the standard library's ssl."""

import sys

sys.modules.setdefault("pymongo.pyopenssl_context", None)  # type: ignore[assignment]
