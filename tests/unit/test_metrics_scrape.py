"""/metrics on mongomock, which lacks collStats: the scrape still answers, with the counters."""

from __future__ import annotations

import logging


def test_a_failed_archive_read_does_not_fail_the_scrape(client, auth, sample_payload, caplog):
    client.post("/webhook", json=sample_payload)
    with caplog.at_level(logging.WARNING, logger="improvmx_archive.metrics"):
        response = client.get("/metrics", headers=auth)
    assert response.status_code == 200
    assert 'improvmx_webhook_deliveries_total{result="stored"}' in response.get_data(as_text=True)
    assert "archive metrics not refreshed (NotImplementedError)" in caplog.text
