"""Fuzz every operation of the OpenAPI description with schemathesis, in-process (WSGI) on
mongomock: valid and invalid inputs alike must never produce a 5xx or a logged exception,
and every answer must be one the description documents.

Bounded and deterministic: a fixed number of examples per operation and Hypothesis's
derandomized seed, so a failure reproduces on every run.
"""

from __future__ import annotations

import logging

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from improvmx_archive.openapi import build_spec
from improvmx_archive.sample import payload_from_mime, sample_mime

EXAMPLES_PER_OPERATION = 200
PART_NAMES = ["sample.pdf", "pixel.png"]
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, response_headers_conformance]

# POST /import takes a raw message: fuzz it with arbitrary bytes, as for a binary upload.
schemathesis.serializer.alias("message/rfc822", "application/octet-stream")
schema = schemathesis.openapi.from_dict(build_spec())


@pytest.fixture
def fuzz_app(make_app):
    """The app with limits off (the limiter is not under test here) and messages stored, so
    generated requests can reach real messages and parts, not only 404s."""
    app = make_app(RATELIMIT_ENABLED="false")
    client = app.test_client()
    payloads = [payload_from_mime(sample_mime(subject=f"Fuzz seed {n}")) for n in range(3)]
    payloads.append({"to": [{"email": "inbox@example.com"}], "subject": "no parts", "text": "plain"})
    app.config["FUZZ_IDS"] = [client.post("/webhook", json=payload).get_json()["email_id"] for payload in payloads]
    return app


def test_fuzzed_description_is_the_one_the_app_serves(fuzz_app):
    assert fuzz_app.test_client().get("/openapi.json").get_json() == build_spec()


@pytest.mark.slow
@schema.parametrize()
@schema.given(data=st.data())
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_only_documented_answers(case, data, fuzz_app, auth, caplog):
    caplog.set_level(logging.ERROR, logger="improvmx_archive")
    parameters = case.path_parameters or {}
    if "email_id" in parameters and data.draw(st.booleans(), label="use a stored id"):
        case.path_parameters["email_id"] = data.draw(st.sampled_from(fuzz_app.config["FUZZ_IDS"]))
    if "name" in parameters and data.draw(st.booleans(), label="use a stored part name"):
        case.path_parameters["name"] = data.draw(st.sampled_from(PART_NAMES))
    response = case.call(app=fuzz_app, headers=auth)
    case.validate_response(response, checks=CHECKS)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
