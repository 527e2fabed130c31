"""`flask users ...` and `flask keys ...` on mongomock, and the password module under them."""

from __future__ import annotations

import re

import pytest

from improvmx_archive.access import passwords
from tests.conftest import API_KEY


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(args=list(args), input=input)

    return run


@pytest.fixture
def ana(cli):
    assert cli("users", "add", "ana", "--email", "Ana@Archive.test").exit_code == 0
    return "ana"


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_add_grant_revoke_and_list(app, cli, ana):
    result = cli("users", "grant", "ana", "support@archive.test", "*@shop.test")
    assert result.exit_code == 0 and "support@archive.test, *@shop.test" in result.output
    assert cli("users", "add", "root", "--email", "root@archive.test", "--admin").exit_code == 0
    assert cli("users", "revoke", "ana", "*@shop.test").exit_code == 0
    assert cli("users", "disable", "root").exit_code == 0
    listed = cli("users", "list").output.splitlines()
    assert re.split(r"\s{2,}", listed[0]) == ["NAME", "EMAIL", "ROLE", "GRANTS", "DISABLED", "KEYS"]
    assert re.split(r"\s{2,}", listed[1]) == ["ana", "ana@archive.test", "member", "support@archive.test", "no", "0"]
    assert re.split(r"\s{2,}", listed[2]) == ["root", "root@archive.test", "admin", "-", "yes", "0"]
    assert cli("users", "enable", "root").exit_code == 0
    assert app.extensions["people"].by_name("root")["disabled"] is False
    assert cli("users", "set-role", "ana", "admin").exit_code == 0
    assert app.extensions["people"].by_name("ana")["role"] == "admin"


@pytest.mark.parametrize("args,message", [
    (("users", "grant", "nobody", "a@b.test"), "no person named 'nobody'"),
    (("users", "grant", "ana", "not-an-alias"), "is neither an alias"),
    (("users", "revoke", "nobody", "a@b.test"), "no person named 'nobody'"),
    (("users", "disable", "nobody"), "no person named 'nobody'"),
    (("users", "add", "ana", "--email", "other@archive.test"), "already exists"),
    (("users", "add", "bad name", "--email", "x@archive.test"), "a name is 1 to 64"),
    (("users", "add", "bo", "--email", "nope"), "is not an email address"),
    (("users", "set-password", "nobody"), "no person named 'nobody'"),
    (("keys", "create", "--user", "nobody", "--name", "x"), "no person named 'nobody'"),
    (("keys", "create", "--user", "ana", "--name", "x", "--scope", "read,admin"), "scopes are a comma-separated"),
    (("keys", "create", "--user", "ana", "--name", "x", "--expires", "soon"), "--expires is a number of days"),
    (("keys", "create", "--user", "ana", "--name", "x", "--expires", "0"), "expiry is between"),
    (("keys", "list", "--user", "nobody"), "no person named 'nobody'"),
    (("keys", "revoke", "k_nothing"), "no key with id 'k_nothing'"),
])
def test_bad_requests_are_one_clear_line_and_exit_1(cli, ana, args, message):
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output


def test_set_password_from_stdin_and_its_minimum(app, cli, ana):
    short = cli("users", "set-password", "ana", input="too short\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    assert cli("users", "set-password", "ana", input="correct horse battery\n").exit_code == 0
    stored = app.extensions["people"].by_name("ana")["password_hash"]
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert passwords.verify_password(stored, "correct horse battery")
    assert not passwords.verify_password(stored, "correct horse batterY")


def test_set_password_prompts_twice_hidden_on_a_terminal(app, cli, ana, monkeypatch):
    prompts = []

    def prompt(text, hide_input=False, confirmation_prompt=False):
        prompts.append((text, hide_input, confirmation_prompt))
        return "a long enough passphrase"

    monkeypatch.setattr("improvmx_archive.access.commands._interactive", lambda: True)
    monkeypatch.setattr("click.prompt", prompt)
    assert cli("users", "set-password", "ana").exit_code == 0
    assert prompts == [("New password", True, "Repeat it")]
    assert passwords.verify_password(app.extensions["people"].by_name("ana")["password_hash"], "a long enough passphrase")


def test_keys_create_prints_the_token_once_and_it_works(app, client, cli, ana):
    cli("users", "grant", "ana", "support@archive.test")
    result = cli("keys", "create", "--user", "ana", "--name", "billing script", "--scope", "read", "--expires", "30")
    assert result.exit_code == 0
    token = result.output.splitlines()[0]
    assert token.startswith("imxa_") and "will not be shown again" in result.output
    assert client.get("/emails", headers=_bearer(token)).status_code == 200
    listed = cli("keys", "list").output
    assert "billing script" in listed and "read" in listed and token not in listed
    assert app.extensions["keys"].collection.find_one()["hash"] not in listed
    assert "billing script" in cli("keys", "list", "--user", "ana").output
    key_id = app.extensions["keys"].all()[0]["_id"]
    assert cli("keys", "revoke", key_id).exit_code == 0
    assert client.get("/emails", headers=_bearer(token)).status_code == 401
    row = [line for line in cli("keys", "list").output.splitlines() if key_id in line][0]
    assert row.rstrip().endswith("UTC") or re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d$", row.rstrip())


def test_users_list_counts_live_keys_and_never_shows_a_hash(app, cli, ana):
    cli("users", "set-password", "ana", input="correct horse battery\n")
    cli("keys", "create", "--user", "ana", "--name", "one")
    two = cli("keys", "create", "--user", "ana", "--name", "two").output.splitlines()[0]
    cli("keys", "revoke", app.extensions["keys"].all()[0]["_id"])
    listed = cli("users", "list").output
    assert listed.splitlines()[1].split()[-1] == "1"
    assert "argon2" not in listed and two not in listed


def test_nothing_secret_reaches_the_log(app, cli, ana, caplog):
    cli("users", "set-password", "ana", input="correct horse battery\n")
    token = cli("keys", "create", "--user", "ana", "--name", "x").output.splitlines()[0]
    assert "correct horse" not in caplog.text and token not in caplog.text and "argon2" not in caplog.text
    assert API_KEY not in caplog.text


def test_password_rules():
    with pytest.raises(passwords.PasswordError, match="at least 12"):
        passwords.hash_password("x" * 11)
    with pytest.raises(passwords.PasswordError, match="only spaces"):
        passwords.hash_password(" " * 12)
    with pytest.raises(passwords.PasswordError, match="at most"):
        passwords.hash_password("x" * 1025)
    stored = passwords.hash_password("x" * 1024)
    assert passwords.verify_password(stored, "x" * 1024)
    assert not passwords.verify_password(stored, "x" * 1025)  # never matched on a truncated prefix
    assert not passwords.verify_password(None, "anything at all")
    assert not passwords.verify_password("not a hash", "anything at all")
    assert not passwords.needs_rehash(stored)
    assert passwords._dummy_hash() == passwords._DUMMY_HASH  # ready-made: the first unknown address costs no more
    assert passwords.needs_rehash("$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$9sTbSlTio3Biev89thdrlKKiCaYsjjYVJxGAL3swxpQ")
