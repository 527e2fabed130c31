"""/metrics when MongoDB cannot answer the archive-wide reads: the scrape still answers."""

from __future__ import annotations

import logging

from pymongo.errors import OperationFailure

from improvmx_archive import metrics


def test_a_failed_archive_read_does_not_fail_the_scrape(client, auth, sample_payload, caplog, monkeypatch):
    def refused(database):
        raise OperationFailure("not authorized on webmail_improvmx to execute command", 13)

    monkeypatch.setattr(metrics, "current_usage", refused)
    client.post("/webhook", json=sample_payload)
    with caplog.at_level(logging.WARNING, logger="improvmx_archive.metrics"):
        response = client.get("/metrics", headers=auth)
    assert response.status_code == 200
    assert 'improvmx_webhook_deliveries_total{result="stored"}' in response.get_data(as_text=True)
    assert "archive metrics not refreshed (OperationFailure)" in caplog.text
