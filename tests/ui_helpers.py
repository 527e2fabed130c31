"""Signing in to the web UI from a Flask test client, as a browser would."""

from __future__ import annotations

import re

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
