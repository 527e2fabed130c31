"""Rate limits per principal (issue 16, issue 19 item 1): a valid key counts against its
person (all their keys together) or the operator, under RATELIMIT_AUTHENTICATED and the
route's own limit; unauthenticated and failed requests keep RATELIMIT_GLOBAL per address.
memory:// storage; the same over gunicorn workers is tests/integration/test_ratelimit_people.py."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from improvmx_archive.access import passwords
from improvmx_archive.config import ConfigError, Settings
from tests.conftest import API_KEY, OTHER_KEY
from tests.ui_helpers import csrf_token
from tests.unit.test_ratelimit import call, refused

OFFICE = "192.0.2.77"


@pytest.fixture
def limited(make_app):
    """An app with limits on, two members (ana with two keys, bo with one)."""

    def build(**overrides):
        app = make_app(API_KEY=f"{API_KEY},{OTHER_KEY}", **overrides)
        people, keys = app.extensions["people"], app.extensions["keys"]
        tokens = {}
        for name in ("ana", "bo"):
            person = people.add(name, f"{name}@archive.test")
            tokens[name] = keys.create(str(person["_id"]), "laptop", ["read", "write"])[0]
        tokens["ana2"] = keys.create(str(people.by_name("ana")["_id"]), "script", ["read"])[0]
        return app.test_client(), {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}

    return build


def test_a_valid_key_polls_past_the_per_address_global_limit(limited):
    client, auth = limited(RATELIMIT_GLOBAL="5 per hour")
    statuses = [call(client, "/emails", ip=OFFICE, headers=auth["ana"]).status_code for _ in range(12)]
    assert statuses == [200] * 12
    operator = [call(client, "/emails", ip=OFFICE, headers={"Authorization": f"Bearer {API_KEY}"}).status_code
                for _ in range(8)]
    assert operator == [200] * 8


def test_valid_keys_do_not_spend_their_addresses_unauthenticated_budget(limited):
    client, auth = limited(RATELIMIT_GLOBAL="3 per hour")
    for _ in range(10):
        call(client, "/emails", ip=OFFICE, headers=auth["ana"])
    assert [call(client, "/openapi.json", ip=OFFICE).status_code for _ in range(3)] == [200] * 3
    refused(call(client, "/openapi.json", ip=OFFICE), "3 per 1 hour")
    assert call(client, "/emails", ip=OFFICE, headers=auth["bo"]).status_code == 200


def test_wrong_and_revoked_keys_count_against_the_address(limited, make_app):
    client, auth = limited(RATELIMIT_GLOBAL="3 per hour")
    wrong = {"Authorization": "Bearer imxa_guessed0123456789"}
    assert [call(client, "/emails", ip=OFFICE, headers=wrong).status_code for _ in range(3)] == [403] * 3
    refused(call(client, "/emails", ip=OFFICE, headers=wrong), "3 per 1 hour")
    refused(call(client, "/emails", ip=OFFICE), "3 per 1 hour")
    assert call(client, "/emails", ip=OFFICE, headers=auth["ana"]).status_code == 200


def test_two_people_behind_one_address_have_separate_budgets(limited):
    client, auth = limited(RATELIMIT_LIST="3 per minute")
    for _ in range(3):
        assert call(client, "/emails", ip=OFFICE, headers=auth["ana"]).status_code == 200
    refused(call(client, "/emails", ip=OFFICE, headers=auth["ana"]), "3 per 1 minute")
    refused(call(client, "/emails", ip=OFFICE, headers=auth["ana2"]), "3 per 1 minute")  # all her keys together
    assert [call(client, "/emails", ip=OFFICE, headers=auth["bo"]).status_code for _ in range(3)] == [200] * 3


def test_operator_keys_count_together(limited):
    client, _ = limited(RATELIMIT_LIST="2 per minute")
    call(client, "/emails", headers={"Authorization": f"Bearer {API_KEY}"})
    call(client, "/emails", ip="192.0.2.99", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    refused(call(client, "/emails", headers={"Authorization": f"Bearer {OTHER_KEY}"}), "2 per 1 minute")


def test_the_authenticated_limit_has_its_own_setting_and_the_same_429(limited):
    client, auth = limited(RATELIMIT_AUTHENTICATED="4 per hour", RATELIMIT_GLOBAL="1000 per hour")
    assert [call(client, "/emails", headers=auth["ana"]).status_code for _ in range(2)] == [200] * 2
    assert [call(client, "/emails", headers=auth["ana2"]).status_code for _ in range(2)] == [200] * 2
    retry_after = refused(call(client, "/emails", headers=auth["ana"]), "4 per 1 hour")
    assert 1 <= retry_after <= 3600
    assert call(client, "/emails", headers=auth["bo"]).status_code == 200


def test_the_default_fits_a_script_polling_every_minute_all_day():
    """One poll a minute for a day, plus a tour of the docs, stays far inside the default."""
    from limits import parse_many

    limits = {item.GRANULARITY.name: item.amount for item in parse_many(Settings.from_env(
        {"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/"}, dotenv_path=None).limits["RATELIMIT_AUTHENTICATED"])}
    assert limits["hour"] >= 60 * 10 and limits["day"] >= 24 * 60 * 5


def test_a_key_is_looked_up_once_per_request(limited, monkeypatch):
    client, auth = limited(RATELIMIT_GLOBAL="5 per hour")
    from improvmx_archive.access.keys import Keys
    checks = []
    real_check = Keys.check
    monkeypatch.setattr(Keys, "check", lambda self, token: checks.append(token) or real_check(self, token))
    assert call(client, "/emails", headers=auth["ana"]).status_code == 200
    assert len(checks) == 1


def test_invalid_authenticated_limit_stops_start_up():
    with pytest.raises(ConfigError, match="RATELIMIT_AUTHENTICATED is not a rate limit"):
        Settings.from_env({"API_KEY": API_KEY, "MONGO_URI": "mongodb://127.0.0.1:1/", "RATELIMIT_AUTHENTICATED": "lots"}, dotenv_path=None)


def test_the_ui_limit_counts_per_signed_in_person(make_app, monkeypatch):
    monkeypatch.setattr(passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    passwords._dummy_hash.cache_clear()
    app = make_app(RATELIMIT_UI="6 per minute")
    with app.app_context():
        from improvmx_archive.access import team
        for name in ("ana", "bo"):
            team.add_person(team.CLI_ACTOR, name, f"{name}@archive.test")
            team.set_password(team.CLI_ACTOR, name, "a long enough passphrase")
    clients = {}
    for name in ("ana", "bo"):
        client = app.test_client()
        token = csrf_token(client)  # 1 request from the office address
        response = client.post("/ui/login", data={"email": f"{name}@archive.test", "password": "a long enough passphrase",
                                                  "csrf_token": token}, environ_base={"REMOTE_ADDR": OFFICE})
        assert response.status_code == 303
        clients[name] = client
    assert [call(clients["ana"], "/ui/", ip=OFFICE).status_code for _ in range(6)] == [200] * 6
    assert call(clients["ana"], "/ui/", ip=OFFICE).status_code == 429
    assert call(clients["bo"], "/ui/", ip=OFFICE).status_code == 200
    passwords._dummy_hash.cache_clear()
