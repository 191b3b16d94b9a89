"""A Python service and a person with grpcurl, against the real binary."""

import json

import grpc
import pytest

from fakes import details_of, grpcurl
from messenger.v1 import messenger_pb2 as pb
from messenger.v1 import messenger_pb2_grpc as rpc

DEMO = "17841400000000000"
OUTSIDE_WINDOW = "10000000000000001"
RATE_LIMITED = "10000000000000004"
# The sandbox plays two accounts, so each call names one.
SHOP = "shop"


@pytest.fixture
def stub(gateway):
    with grpc.insecure_channel(gateway.target) as channel:
        yield rpc.MessengerStub(channel)


def test_python_client_sends_and_graph_receives_the_starter_kit_body(gateway, stub):
    reply = stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=DEMO, text="Hello from Python"), timeout=10)
    assert reply.message_id
    assert reply.recipient_id == DEMO
    assert reply.graph_calls == 1
    bodies = [m["body"] for m in gateway.sandbox_messages()]
    assert {"recipient": {"id": DEMO}, "message": {"text": "Hello from Python"}} in bodies


def test_python_client_reads_error_info_from_a_graph_refusal(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=OUTSIDE_WINDOW, text="late"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = details_of(caught.value)
    (info,) = details["ErrorInfo"]
    assert info.reason == "OUTSIDE_MESSAGING_WINDOW"
    assert info.domain == "messenger-gateway"
    assert info.metadata["graphCode"] == "10"
    assert info.metadata["graphSubcode"] == "2534022"
    assert info.metadata["fbtraceId"]


def test_python_client_gets_retry_info_on_rate_limits(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=RATE_LIMITED, text="hi"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_of(caught.value)
    assert details["ErrorInfo"][0].reason == "RATE_LIMITED"
    delay = details["RetryInfo"][0].retry_delay
    assert delay.seconds + delay.nanos / 1e9 > 0.5


def test_python_client_sees_each_bad_field(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Send(pb.SendRequest(account_id=SHOP, recipient_id="jane.doe", text="€" * 334), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(caught.value)
    assert details["ErrorInfo"][0].reason == "INVALID_REQUEST"
    fields = [v.field for v in details["BadRequest"][0].field_violations]
    assert fields == ["recipient_id", "text"]


def test_python_client_sends_a_typing_indicator(gateway, stub):
    reply = stub.SendAction(
        pb.SendActionRequest(account_id=SHOP, recipient_id=DEMO, action=pb.SENDER_ACTION_TYPING_ON), timeout=10
    )
    assert reply.recipient_id == DEMO
    bodies = [m["body"] for m in gateway.sandbox_messages()]
    assert {"recipient": {"id": DEMO}, "sender_action": "typing_on"} in bodies


# ---- grpcurl: the real binary, speaking reflection ----



def test_grpcurl_lists_services_through_reflection(gateway):
    out = grpcurl("-plaintext", gateway.target, "list")
    assert out.returncode == 0, out.stderr
    services = out.stdout.split()
    assert "messenger.v1.Messenger" in services
    assert "grpc.health.v1.Health" in services


def test_grpcurl_describes_the_contract(gateway):
    out = grpcurl("-plaintext", gateway.target, "describe", "messenger.v1.SendRequest")
    assert out.returncode == 0, out.stderr
    assert "string recipient_id = 1;" in out.stdout
    assert "string text = 2;" in out.stdout


def test_grpcurl_minimal_call_from_the_issue_succeeds(gateway):
    out = grpcurl(
        "-plaintext",
        "-d",
        '{"account_id":"shop","recipient_id":"17841400000000000","text":"Hello from my app"}',
        gateway.target,
        "messenger.v1.Messenger/Send",
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["recipientId"] == DEMO
    assert reply["messageId"]
    bodies = [m["body"] for m in gateway.sandbox_messages()]
    assert {"recipient": {"id": DEMO}, "message": {"text": "Hello from my app"}} in bodies


def test_grpcurl_prints_the_error_info_decoded(gateway):
    out = grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"account_id": SHOP, "recipient_id": OUTSIDE_WINDOW, "text": "late"}),
        gateway.target,
        "messenger.v1.Messenger/Send",
    )
    assert out.returncode != 0
    assert "Code: FailedPrecondition" in out.stderr
    assert '"reason":"OUTSIDE_MESSAGING_WINDOW"' in out.stderr.replace(" ", "")
    assert "google.rpc.ErrorInfo" in out.stderr


def test_grpcurl_checks_health(gateway):
    out = grpcurl("-plaintext", gateway.target, "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "SERVING"


def test_python_sees_an_inbound_message_on_subscribe_and_the_window_open(gateway, stub):
    person = "17841400000000777"
    assert stub.GetWindow(pb.GetWindowRequest(account_id=SHOP, recipient_id=person), timeout=10).state == pb.WINDOW_STATE_UNKNOWN
    said = gateway.say(person, "Hello from Instagram")
    assert said["webhook_status"] == 200
    events = stub.Subscribe(pb.SubscribeRequest(after=0), timeout=10)
    for event in events:
        if event.sender_id == person:
            assert event.WhichOneof("event") == "message"
            assert event.message.text == "Hello from Instagram"
            assert event.seq > 0
            events.cancel()
            break
    window = stub.GetWindow(pb.GetWindowRequest(account_id=SHOP, recipient_id=person), timeout=10)
    assert window.state == pb.WINDOW_STATE_OPEN
    assert window.standard_closes_at.seconds - window.last_inbound_at.seconds == 24 * 3600
    assert window.human_agent_closes_at.seconds - window.last_inbound_at.seconds == 7 * 24 * 3600
    reply = stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=person, text="Hi back"), timeout=10)
    assert reply.message_id


def test_python_is_refused_outside_the_window_with_the_closing_time(gateway, stub):
    person = "17841400000000888"
    gateway.say(person, "an old message", age="2d")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=person, text="too late"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = details_of(caught.value)["ErrorInfo"][0]
    assert info.reason == "OUTSIDE_MESSAGING_WINDOW"
    assert info.metadata["windowClosedAt"].endswith("Z")
    assert "graphCode" not in info.metadata


def test_python_repeats_with_a_request_id_send_once(gateway, stub):
    request = pb.SendRequest(account_id=SHOP, recipient_id=DEMO, text="exactly once from Python", request_id="py-6b1f0c2e")
    first = stub.Send(request, timeout=10)
    second = stub.Send(request, timeout=10)
    assert first.message_id == second.message_id
    bodies = [m["body"] for m in gateway.sandbox_messages()]
    assert sum(1 for b in bodies if b.get("message", {}).get("text") == "exactly once from Python") == 1
    with pytest.raises(grpc.RpcError) as caught:
        stub.Send(pb.SendRequest(account_id=SHOP, recipient_id=DEMO, text="different", request_id="py-6b1f0c2e"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details_of(caught.value)["BadRequest"][0].field_violations] == ["request_id"]


def test_grpcurl_reads_the_window_and_the_event_stream(gateway):
    person = "17841400000000999"
    gateway.say(person, "grpcurl can see me")
    out = grpcurl("-plaintext", "-d", json.dumps({"account_id": SHOP, "recipient_id": person}), gateway.target,
                  "messenger.v1.Messenger/GetWindow")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "WINDOW_STATE_OPEN"
    # A stream never ends by itself: read for a moment, then stop.
    out = grpcurl("-plaintext", "-max-time", "3", "-d", "{}", gateway.target,
                  "messenger.v1.Messenger/Subscribe")
    assert "grpcurl can see me" in out.stdout, out.stderr


def test_python_lists_the_accounts_and_follows_one_of_them(gateway, stub):
    import time

    deadline = time.monotonic() + 10
    while True:
        accounts = stub.ListAccounts(pb.ListAccountsRequest(), timeout=10).accounts
        # The gateway checks (and refreshes) each token with the sandbox at start.
        if all(a.token_state == pb.TOKEN_STATE_VALID for a in accounts) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(a.id, a.name) for a in accounts] == [("17841400000000001", "shop"), ("17841400000000002", "support")]
    assert all(a.token_state == pb.TOKEN_STATE_VALID for a in accounts), accounts
    assert all(a.HasField("last_refresh_at") and a.username.startswith("sandbox_") for a in accounts)

    reply = stub.Send(pb.SendRequest(account_id="support", recipient_id=DEMO, text="from support"), timeout=10)
    assert reply.account_id == "17841400000000002"
    with pytest.raises(grpc.RpcError) as refused:
        stub.Send(pb.SendRequest(recipient_id=DEMO, text="which one?"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Send(pb.SendRequest(account_id="nobody", recipient_id=DEMO, text="hi"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert details_of(unknown.value)["ErrorInfo"][0].reason == "ACCOUNT_NOT_FOUND"


def test_a_broadcast_streams_from_python_and_from_grpcurl(gateway, stub):
    people = [DEMO, OUTSIDE_WINDOW, DEMO]

    def broadcast():
        for i, igsid in enumerate(people):
            yield pb.SendRequest(account_id=SHOP, recipient_id=igsid, text="Spring sale", request_id=f"py-sale-{i}")

    results = sorted(stub.SendStream(broadcast(), timeout=30), key=lambda r: r.index)
    assert [r.request_id for r in results] == ["py-sale-0", "py-sale-1", "py-sale-2"]
    assert [r.WhichOneof("result") for r in results] == ["response", "error", "response"]
    assert results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "outside" in results[1].error.message.lower()

    lines = "\n".join(
        json.dumps({"account_id": SHOP, "recipient_id": igsid, "text": "Spring sale", "request_id": f"curl-sale-{i}"})
        for i, igsid in enumerate(people)
    )
    out = grpcurl("-plaintext", "-d", "@", gateway.target, "messenger.v1.Messenger/SendStream", stdin=lines)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"messageId"') == 2, out.stdout
    assert "OUTSIDE_MESSAGING_WINDOW" in out.stdout or "outside" in out.stdout.lower(), out.stdout
