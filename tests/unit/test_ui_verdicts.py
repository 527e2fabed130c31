"""The SPF/DKIM/DMARC badges' parser on its own."""

from __future__ import annotations

from improvmx_archive.ui.verdicts import verdicts

IMPROVMX_AR = ("mx1.improvmx.com; spf=pass (improvmx.com: domain of example.com designates 192.0.2.1 as "
               "permitted sender) smtp.mailfrom=example.com; dkim=pass header.d=example.com; dmarc=fail "
               "(p=REJECT) header.from=example.com")


def states(document):
    return {v.method: (v.state, v.result) for v in verdicts(document)}


def test_improvmx_authentication_results():
    assert states({"headers": {"Authentication-Results": [IMPROVMX_AR]}}) == {
        "spf": ("pass", "pass"), "dkim": ("pass", "pass"), "dmarc": ("fail", "fail")}


def test_raw_header_is_kept_for_the_hover_text():
    [spf, _, _] = verdicts({"headers": {"Authentication-Results": IMPROVMX_AR}})
    assert spf.source == IMPROVMX_AR


def test_nothing_reported_is_none():
    assert states({"headers": {}}) == {m: ("none", "none") for m in ("spf", "dkim", "dmarc")}
    assert states({}) == {m: ("none", "none") for m in ("spf", "dkim", "dmarc")}


def test_received_spf_fills_in_spf():
    document = {"headers": {"Received-SPF": ["softfail (example.com: transitioning) client-ip=192.0.2.1;"]}}
    assert states(document)["spf"] == ("fail", "softfail")


def test_improvmx_verdict_field_wins():
    document = {"extra": {"verdict": {"spf": "fail", "dkim": {"result": "pass"}, "dmarc": "none"}},
                "headers": {"Authentication-Results": [IMPROVMX_AR]}}
    assert states(document) == {"spf": ("fail", "fail"), "dkim": ("pass", "pass"), "dmarc": ("none", "none")}


def test_a_sender_forged_header_does_not_beat_improvmx():
    forged = "evil.example; spf=pass; dkim=pass; dmarc=pass"
    document = {"headers": {"Authentication-Results": [forged, IMPROVMX_AR]}}
    assert states(document)["dmarc"] == ("fail", "fail")


def test_other_authentication_results_are_used_when_nothing_better_exists():
    document = {"headers": {"authentication-results": "mx.google.com; dkim=neutral (no key); spf=temperror"}}
    assert states(document) == {"spf": ("none", "temperror"), "dkim": ("none", "neutral"), "dmarc": ("none", "none")}


def test_property_names_are_not_mistaken_for_methods():
    document = {"headers": {"Authentication-Results": "mx.improvmx.com; header.dkim=pass; x-spf=pass"}}
    assert states(document)["dkim"] == ("none", "none") and states(document)["spf"] == ("none", "none")


def test_odd_shapes_do_not_break_it():
    document = {"headers": {"Authentication-Results": [None, 5, {"x": "spf=pass"}]}, "extra": {"verdict": 3}}
    assert states(document)["spf"] == ("pass", "pass")
