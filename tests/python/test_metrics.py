"""The admin port, read the way Prometheus reads it: the reference parser
(prometheus_client) takes the whole exposition, and counters move with
real traffic through the real binary."""

import json
import time
import urllib.error
import urllib.request

import grpc
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic

from conftest import start_gateway
from messenger.v1 import messenger_pb2 as pb
from messenger.v1 import messenger_pb2_grpc as rpc

DEMO = "17841400000000000"


def scrape(admin):
    with urllib.request.urlopen(f"{admin}/metrics") as r:
        assert r.status == 200
        return r.read().decode()


def samples(text, name):
    """name's samples as {frozenset(labels): value}, by the OpenMetrics parser."""
    found = {}
    for family in openmetrics(text):
        for s in family.samples:
            if s.name == name:
                found[frozenset(s.labels.items())] = s.value
    return found


def test_metrics_parse_and_move_with_traffic_and_probes_answer():
    running = start_gateway(["--listen", "127.0.0.1:0", "--sandbox"])
    try:
        admin = running.line("admin at ").split()[2]
        with urllib.request.urlopen(f"{admin}/livez") as r:
            assert r.status == 200
        # Ready once the gRPC port serves, a moment after the banner: an
        # orchestrator polls, and so does this test.
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{admin}/readyz") as r:
                    assert r.status == 200
                    break
            except urllib.error.HTTPError as e:
                assert e.code == 503
                time.sleep(0.05)
        else:
            raise AssertionError("never ready")

        before = scrape(admin)
        # Both parsers take the whole exposition.
        assert "messenger_gateway_build_info" in {f.name for f in openmetrics(before)}
        list(classic(before))

        with grpc.insecure_channel(running.target) as channel:
            stub = rpc.MessengerStub(channel)
            for _ in range(3):
                stub.Send(pb.SendRequest(account_id="shop", recipient_id=DEMO, text="hi"), timeout=10)
            stub.Send(pb.SendRequest(account_id="support", recipient_id=DEMO, text="hi"), timeout=10)

        base = running.line("sandbox Graph API at ").split()[4].rsplit("/", 1)[0]
        request = urllib.request.Request(
            f"{base}/sandbox/inbound",
            data=json.dumps({"sender_id": DEMO, "text": "hello", "account": "support"}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as r:
            assert json.load(r)["webhook_status"] == 200

        after = scrape(admin)
        assert "messenger_gateway_sends" in {f.name for f in classic(after)}
        sends = samples(after, "messenger_gateway_sends_total")
        shop = frozenset({"account": "17841400000000001", "kind": "message", "outcome": "OK"}.items())
        support = frozenset({"account": "17841400000000002", "kind": "message", "outcome": "OK"}.items())
        assert sends[shop] == 3 and sends[support] == 1, sends
        calls = samples(after, "messenger_gateway_graph_request_duration_seconds_count")
        assert sum(calls.values()) >= 4
        stored = samples(after, "messenger_gateway_events_stored_total")
        assert stored[frozenset({"account": "17841400000000002", "kind": "message"}.items())] == 1
        deliveries = samples(after, "messenger_gateway_webhook_deliveries_total")
        assert deliveries[frozenset({"result": "stored"}.items())] == 1
        waits = samples(after, "messenger_gateway_queue_wait_seconds_count")
        assert sum(waits.values()) >= 4, "pacing is on by default: every send took a turn"
    finally:
        running.stop()
