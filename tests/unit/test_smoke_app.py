def test_sample_round_trip(client, auth, sample_payload):
    posted = client.post("/webhook", json=sample_payload)
    assert posted.status_code == 200
    listed = client.get("/emails", headers=auth).get_json()
    assert listed["total"] == 1 and listed["emails"][0]["id"] == posted.get_json()["email_id"]
