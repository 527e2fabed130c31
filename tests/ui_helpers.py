"""Signing in to the web UI from a Flask test client as a browser would, and test mail."""

from __future__ import annotations

import re
from email.message import EmailMessage

from improvmx_archive.sample import payload_from_mime
from tests.conftest import API_KEY

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client, path: str = "/ui/login") -> str:
    """The CSRF token of the form on `path` (this also sets the client's CSRF cookie)."""
    page = client.get(path).get_data(as_text=True)
    return _CSRF.search(page).group(1)


def sign_in(client, key: str = API_KEY, ip: str = "192.0.2.10"):
    token = csrf_token(client)
    return client.post("/ui/login", data={"key": key, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": ip})


def post_form(client, path: str, data: dict, page: str = "/ui/"):
    """POST a form with the token a signed-in page carries."""
    return client.post(path, data={**data, "csrf_token": csrf_token(client, page)})


def page(client, path):
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def mime(subject: str, sender: str = "alice@example.org", to: str = "sales@archive.test", html: str | None = None,
         text: str = "Hello", attachment: tuple[bytes, str, str, str] | None = None) -> dict:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment:
        data, maintype, subtype, name = attachment
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return payload_from_mime(message.as_bytes())
