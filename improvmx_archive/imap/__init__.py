"""The IMAP view: the archive as read-only mailboxes for ordinary mail programs.

A separate process (`python -m improvmx_archive.imap`, unit improvmx-imap.service) on
Twisted's IMAP4 server: numbering.py gives messages their UIDs, mailboxes.py reads through
ScopedArchive, search.py compiles SEARCH, message.py builds FETCH items, server.py speaks
the protocol, login.py checks keys and is the audit seam, tls.py holds the certificate.
"""
