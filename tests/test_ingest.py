"""The http_ingest source against real HTTP requests on loopback and a real log on disk."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import orjson
import pytest

import wal
from agent.change import Change, decode_change
from agent.config import HttpIngestSourceConfig
from agent.errors import AgentError, ConfigError
from agent.sources.ingest import HttpIngestSource, ListenError

WAIT_S = 30.0
NDJSON = {"Content-Type": "application/x-ndjson"}


def config(**options) -> HttpIngestSourceConfig:
    options.setdefault("listen", "127.0.0.1:0")
    return HttpIngestSourceConfig(name="app", type="http_ingest", table="app.events", **options)


@pytest.fixture
def log(open_log):
    return open_log(fsync="always")


@pytest.fixture
def start():
    """Start sources (stopped at the end of the test) and give back (source, base URL)."""
    started: list[HttpIngestSource] = []

    def _start(log_, environ=None, **options) -> tuple[HttpIngestSource, str]:
        source = HttpIngestSource(config(**options), log_, environ=environ if environ is not None else {})
        source.start()
        started.append(source)
        host, port = source.address
        return source, f"http://{host}:{port}"

    yield _start
    for source in started:
        source.stop()


@pytest.fixture
def client():
    with httpx.Client(timeout=WAIT_S) as client_:
        yield client_


def logged(log_: wal.Log) -> list[tuple[int, Change]]:
    return [(record.seq, decode_change(record.payload)) for record in log_.read()]


def ndjson(*items: object) -> bytes:
    return b"\n".join(orjson.dumps(item) for item in items) + b"\n"


def assert_rejected(response: httpx.Response, status: int, code: str, *in_reason: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "reason"} and body["error"] == code
    assert "\n" not in body["reason"]
    for part in in_reason:
        assert part in body["reason"], body["reason"]
    return body


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- accepting ------------------------------------------------------------------------------


def test_a_json_object_is_answered_202_with_the_seqs_the_log_holds(log, start, client):
    _, url = start(log)
    response = client.post(f"{url}/ingest", json={"event": "signup", "user": 7})
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "first_seq": 1, "last_seq": 1, "seqs": [1]}
    assert int(response.headers["content-length"]) == len(response.content)
    second = client.post(f"{url}/ingest", json={"event": "login"})
    assert second.json()["seqs"] == [2]
    assert logged(log) == [
        (1, Change(table="app.events", op="message", source="app", message={"event": "signup", "user": 7})),
        (2, Change(table="app.events", op="message", source="app", message={"event": "login"})),
    ]
    assert log.durable_seq == 2  # answered only once durable


def test_an_ndjson_batch_is_one_append_in_order_with_blank_lines_ignored(log, start, client):
    _, url = start(log)
    client.post(f"{url}/ingest", json={"n": 0})
    body = b'{"n": 1}\r\n\n   \n{"n": 2}\n{"n": 3}'  # CRLF, blank lines, no final newline
    response = client.post(f"{url}/ingest", content=body, headers=NDJSON)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "first_seq": 2, "last_seq": 4, "seqs": [2, 3, 4]}
    assert [(seq, change.message) for seq, change in logged(log)][1:] == [
        (2, {"n": 1}),
        (3, {"n": 2}),
        (4, {"n": 3}),
    ]
    timestamps = {record.timestamp_ms for record in log.read(from_seq=2)}
    assert len(timestamps) == 1  # one append_batch stamps all of them at once


def test_a_change_record_passes_through_unchanged(log, start, client):
    _, url = start(log)
    record = {
        "op": "update",
        "table": "public.orders",
        "source": "billing",
        "key": {"id": 5},
        "after": {"id": 5, "total": "12.50"},
        "before": {"id": 5, "total": "10.00"},
        "commit_ts": "2026-11-23T10:00:00.000000Z",
        "txn_index": 3,
    }
    plain = {"op_name": "not a change", "table_like": True}
    response = client.post(f"{url}/ingest", content=ndjson(record, plain), headers=NDJSON)
    assert response.status_code == 202
    assert logged(log) == [
        (1, Change.from_dict(record)),
        (2, Change(table="app.events", op="message", source="app", message=plain)),
    ]


def test_a_chunked_body_is_read_to_its_end(log, start, client):
    _, url = start(log)

    def chunks():
        yield b'{"n": 1}\n{"n"'
        yield b": 2}\n"

    response = client.post(f"{url}/ingest", content=chunks(), headers=NDJSON)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 202 and response.json()["seqs"] == [1, 2]
    assert [change.message for _, change in logged(log)] == [{"n": 1}, {"n": 2}]


def test_large_batches_answer_first_and_last_seq_only(log, start, client):
    _, url = start(log)
    body = ndjson(*({"n": i} for i in range(1500)))
    response = client.post(f"{url}/ingest", content=body, headers=NDJSON)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1500, "first_seq": 1, "last_seq": 1500}
    assert len(logged(log)) == 1500


def test_a_connection_is_kept_alive_across_accepted_and_rejected_requests(log, start):
    source, _ = start(log)
    with socket.create_connection(source.address, timeout=WAIT_S) as sock:
        stream = sock.makefile("rb")

        def exchange(request: bytes) -> tuple[int, dict]:
            sock.sendall(request)
            status = int(stream.readline().split()[1])
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert "connection" not in headers
            return status, orjson.loads(stream.read(int(headers["content-length"])))

        body = b'{"a": 1}'
        post = (
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        )
        assert exchange(post % (b"/elsewhere", len(body), body))[0] == 404  # its body is read past
        assert exchange(post % (b"/ingest", len(body), body)) == (
            202,
            {"accepted": 1, "first_seq": 1, "last_seq": 1, "seqs": [1]},
        )
        bad = b"{"
        assert exchange(post % (b"/ingest", len(bad), bad))[0] == 422
        assert exchange(post % (b"/ingest", len(body), body))[1]["seqs"] == [2]
    assert [change.message for _, change in logged(log)] == [{"a": 1}, {"a": 1}]


# -- rejecting ------------------------------------------------------------------------------


def test_a_body_over_max_body_bytes_is_refused_before_it_is_read(log, start, client):
    _, url = start(log, max_body_bytes=100)
    response = client.post(
        f"{url}/ingest",
        content=b'{"pad": "' + b"x" * 200 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert_rejected(response, 413, "PAYLOAD_TOO_LARGE", "211 bytes", "100", "max_body_bytes")
    assert response.headers["connection"] == "close"
    assert client.post(f"{url}/ingest", json={"small": 1}).status_code == 202  # a new connection
    assert [seq for seq, _ in logged(log)] == [1]


def test_a_chunked_body_over_max_body_bytes_is_refused_while_reading(log, start, client):
    _, url = start(log, max_body_bytes=100)

    def chunks():
        for _ in range(5):
            yield b'{"pad": "' + b"x" * 30 + b'"}\n'

    response = client.post(f"{url}/ingest", content=chunks(), headers=NDJSON)
    assert_rejected(response, 413, "PAYLOAD_TOO_LARGE", "chunked", "100")
    assert logged(log) == []


def test_more_lines_than_max_records_per_request_are_refused(log, start, client):
    _, url = start(log, max_records_per_request=3)
    response = client.post(
        f"{url}/ingest", content=ndjson({"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}), headers=NDJSON
    )
    assert_rejected(response, 413, "TOO_MANY_RECORDS", "4 records", "3", "max_records_per_request")
    assert logged(log) == []
    three = b'{"n": 1}\n\n\n{"n": 2}\n\n{"n": 3}\n\n'  # blank lines do not count
    assert client.post(f"{url}/ingest", content=three, headers=NDJSON).json()["accepted"] == 3


def test_invalid_json_names_the_line_and_nothing_of_the_request_is_appended(log, start, client):
    _, url = start(log)
    body = b'{"n": 1}\n{"n": 2}\n{"n": 3,}\n{"n": 4}\n'
    response = client.post(f"{url}/ingest", content=body, headers=NDJSON)
    assert_rejected(response, 422, "INVALID_JSON", "line 3:", "trailing comma")
    assert logged(log) == []
    single = client.post(
        f"{url}/ingest", content=b'{\n  "a": 1,\n  "b": nope\n}', headers={"Content-Type": "application/json"}
    )
    assert_rejected(single, 422, "INVALID_JSON", "line 3:")
    assert logged(log) == []
    assert client.post(f"{url}/ingest", json={"ok": True}).json()["seqs"] == [1]  # nothing was reserved


def test_an_invalid_change_record_names_the_line_and_the_problem(log, start, client):
    _, url = start(log)
    good = {"op": "insert", "table": "public.t", "source": "app", "after": {"id": 1}}
    cases = [
        ({"op": "upsert", "table": "public.t", "source": "app"}, "unknown op 'upsert'"),
        ({"op": "insert", "table": "public.t"}, "lacks required field(s): source"),
        (
            {"op": "insert", "table": "public.t", "source": "app", "colour": 1},
            "unknown change field(s): colour",
        ),
        ({"op": "insert", "table": "public.t", "source": "app", "xid": "7"}, "'xid' has the wrong type"),
    ]
    for bad, problem in cases:
        response = client.post(f"{url}/ingest", content=ndjson(good, {"plain": 1}, bad, good), headers=NDJSON)
        assert_rejected(response, 422, "INVALID_RECORD", "line 3:", problem)
    response = client.post(f"{url}/ingest", content=ndjson(good, [1, 2]), headers=NDJSON)
    assert_rejected(response, 422, "INVALID_RECORD", "line 2:", "expected a JSON object, not an array")
    response = client.post(f"{url}/ingest", content=b"\n\n", headers=NDJSON)
    assert_rejected(response, 422, "INVALID_RECORD", "no records")
    assert logged(log) == []


def test_a_record_larger_than_the_log_takes_is_refused(open_log, start, client):
    small = open_log(fsync="always", max_record_bytes=400)
    _, url = start(small)
    response = client.post(f"{url}/ingest", content=ndjson({"n": 1}, {"pad": "x" * 500}), headers=NDJSON)
    assert_rejected(response, 413, "RECORD_TOO_LARGE", "line 2:", "max_record_bytes")
    assert logged(small) == []


def test_an_unknown_content_type_is_refused(log, start, client):
    _, url = start(log)
    response = client.post(f"{url}/ingest", content=b'{"a": 1}', headers={"Content-Type": "text/plain"})
    assert_rejected(response, 415, "UNSUPPORTED_MEDIA_TYPE", "'text/plain'", "application/x-ndjson")
    charset = client.post(
        f"{url}/ingest", content=b'{"a": 1}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert charset.status_code == 202


def test_wrong_methods_and_unknown_paths(log, start, client):
    _, url = start(log)
    response = client.get(f"{url}/ingest")
    assert_rejected(response, 405, "METHOD_NOT_ALLOWED", "GET", "POST")
    assert response.headers["allow"] == "POST"
    response = client.delete(f"{url}/ingest/decisions")
    assert_rejected(response, 405, "METHOD_NOT_ALLOWED", "DELETE")
    assert response.headers["allow"] == "GET, HEAD"
    assert_rejected(client.post(f"{url}/ingest/more", json={}), 404, "NOT_FOUND", "/ingest/more")
    assert_rejected(client.get(f"{url}/"), 404, "NOT_FOUND")
    assert logged(log) == []


def test_a_malformed_request_line_is_answered_in_json_and_the_connection_closed(log, start):
    source, _ = start(log)
    with socket.create_connection(source.address, timeout=WAIT_S) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after answering
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
    assert orjson.loads(body)["error"] == "BAD_REQUEST"


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(log, start, client):
    _, url = start(log, rate_limit_per_client=0.01, rate_burst=2)
    assert [client.post(f"{url}/ingest", json={"n": i}).status_code for i in range(2)] == [202, 202]
    response = client.post(f"{url}/ingest", json={"n": 2})
    assert_rejected(response, 429, "ENQUEUE_RATE_EXCEEDED", "127.0.0.1", "rate_limit_per_client")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 100  # 1 token / 0.01 per s, rounded up
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=WAIT_S) as other:
        assert other.post(f"{url}/ingest", json={"other": 1}).status_code == 202
    assert [change.message for _, change in logged(log)] == [{"n": 0}, {"n": 1}, {"other": 1}]


def test_a_bearer_token_is_required_when_token_env_is_set(log, start, client):
    _, url = start(log, token_env="INGEST_TOKEN", environ={"INGEST_TOKEN": "s3cret"})
    missing = client.post(f"{url}/ingest", json={"a": 1})
    assert_rejected(missing, 401, "UNAUTHORIZED", "Bearer")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post(f"{url}/ingest", json={"a": 1}, headers={"Authorization": "Bearer guess"})
    assert_rejected(wrong, 401, "UNAUTHORIZED", "wrong")
    basic = client.post(f"{url}/ingest", json={"a": 1}, headers={"Authorization": "Basic czNjcmV0"})
    assert_rejected(basic, 401, "UNAUTHORIZED")
    assert_rejected(client.get(f"{url}/ingest/decisions"), 401, "UNAUTHORIZED")
    right = {"Authorization": "Bearer s3cret"}
    assert client.post(f"{url}/ingest", json={"a": 1}, headers=right).status_code == 202
    assert client.get(f"{url}/ingest/decisions", headers=right).json()["counts"]["UNAUTHORIZED"] == 4
    assert [seq for seq, _ in logged(log)] == [1]


def test_token_env_naming_an_unset_variable_fails_at_start_up(log):
    with pytest.raises(ConfigError, match="INGEST_TOKEN is not set"):
        HttpIngestSource(config(token_env="INGEST_TOKEN"), log, environ={"OTHER": "x"})


def test_a_full_log_answers_503_log_full_with_retry_after(open_log, start, client):
    full = open_log(fsync="always", max_unarchived_bytes=400, on_full="error", auto_archive=False)
    _, url = start(full)
    answers = [client.post(f"{url}/ingest", json={"pad": "x" * 100, "n": i}) for i in range(10)]
    statuses = [response.status_code for response in answers]
    assert 202 in statuses and 503 in statuses, statuses
    first_full = statuses.index(503)
    assert set(statuses[first_full:]) == {503}
    rejected = assert_rejected(answers[first_full], 503, "LOG_FULL", "max_unarchived_bytes")
    assert rejected["reason"].startswith("the log is full")
    assert answers[first_full].headers["retry-after"] == "5"
    assert [seq for seq, _ in logged(full)] == list(range(1, first_full + 1))


def test_a_closed_log_answers_503_shutting_down(open_log, start, client):
    closing = open_log(fsync="always")
    _, url = start(closing)
    assert client.post(f"{url}/ingest", json={"a": 1}).status_code == 202
    closing.close()
    response = client.post(f"{url}/ingest", json={"a": 2})
    assert_rejected(response, 503, "SHUTTING_DOWN", "closed")


def test_rejections_are_counted_kept_newest_first_and_logged(log, start, client, caplog):
    caplog.set_level(logging.INFO, logger="agent.source.ingest")
    source, url = start(log, decisions_kept=2, max_body_bytes=50)
    client.get(f"{url}/nowhere")
    client.post(f"{url}/ingest", content=b"{", headers={"Content-Type": "application/json"})
    client.post(f"{url}/ingest", content=b"{", headers={"Content-Type": "application/json"})
    client.post(f"{url}/ingest", content=b"x" * 60, headers={"Content-Type": "application/json"})
    client.post(f"{url}/ingest", json={"ok": 1})
    answer = client.get(f"{url}/ingest/decisions")
    assert answer.status_code == 200
    decisions = answer.json()
    assert decisions["counts"] == {"INVALID_JSON": 2, "NOT_FOUND": 1, "PAYLOAD_TOO_LARGE": 1}
    assert [entry["code"] for entry in decisions["recent"]] == ["PAYLOAD_TOO_LARGE", "INVALID_JSON"]
    newest = decisions["recent"][0]
    assert set(newest) == {"time", "client", "status", "code", "reason"}
    assert newest["client"] == "127.0.0.1" and newest["status"] == 413 and "60 bytes" in newest["reason"]
    assert newest["time"].endswith("Z") and newest["time"] >= decisions["recent"][1]["time"]
    assert decisions["accepted"] == {"requests": 1, "records": 1}
    assert source.decisions() == decisions
    events = [
        r for r in caplog.records if r.name == "agent.source.ingest" and r.getMessage() == "ingest.rejected"
    ]
    assert [r.code for r in events] == ["NOT_FOUND", "INVALID_JSON", "INVALID_JSON", "PAYLOAD_TOO_LARGE"]
    assert events[0].client == "127.0.0.1" and events[0].status == 404 and events[0].source == "app"


def test_decisions_kept_zero_still_counts(log, start, client):
    _, url = start(log, decisions_kept=0)
    client.get(f"{url}/nowhere")
    assert client.get(f"{url}/ingest/decisions").json() == {
        "counts": {"NOT_FOUND": 1},
        "recent": [],
        "accepted": {"requests": 0, "records": 0},
    }


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_requests_land_exactly_once_and_share_fsyncs(log, start):
    _, url = start(log)
    threads_n, requests_n = 16, 25
    answers: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)
    syncs_before = log.stats().syncs

    def post_all(thread: int) -> None:
        try:
            with httpx.Client(timeout=WAIT_S) as own:
                barrier.wait()
                for i in range(requests_n):
                    body = ndjson(
                        {"thread": thread, "i": i, "part": 0}, {"thread": thread, "i": i, "part": 1}
                    )
                    response = own.post(f"{url}/ingest", content=body, headers=NDJSON)
                    assert response.status_code == 202, response.text
                    answers[(thread, i)] = response.json()["seqs"]
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=post_all, args=(t,)) for t in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    requests = threads_n * requests_n
    assert len(answers) == requests
    records = logged(log)
    assert len(records) == 2 * requests
    by_seq = {
        seq: (change.message["thread"], change.message["i"], change.message["part"])
        for seq, change in records
    }
    assert len(set(by_seq.values())) == 2 * requests  # every record exactly once
    for (thread, i), seqs in answers.items():
        assert [by_seq[seq] for seq in seqs] == [
            (thread, i, 0),
            (thread, i, 1),
        ]  # the answer names its records
    assert log.stats().syncs - syncs_before < requests  # group commit: requests shared fsyncs


# -- lifecycle --------------------------------------------------------------------------------


def test_stop_while_idle_closes_the_port_and_can_be_called_twice(log):
    source = HttpIngestSource(config(), log, environ={})
    source.start()
    address = source.address
    assert address[0] == "127.0.0.1" and address[1] > 0
    source.stop()
    source.stop()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=WAIT_S).close()
    assert not source._threads and not source._serve_thread.is_alive()


def test_stop_after_requests_closes_kept_alive_connections_and_joins_their_threads(log, client):
    source = HttpIngestSource(config(), log, environ={})
    source.start()
    url = "http://{}:{}/ingest".format(*source.address)
    with httpx.Client(timeout=WAIT_S) as second:
        assert client.post(url, json={"a": 1}).status_code == 202
        assert second.post(url, json={"a": 2}).status_code == 202  # two idle keep-alive connections now
        assert len(source._threads) == 2
        source.stop()
        assert not source._threads  # their threads were woken and joined
        with pytest.raises(httpx.TransportError):
            client.post(url, json={"a": 3})
    assert [seq for seq, _ in logged(log)] == [1, 2]


class _GatedLog:
    """A log whose append_batch waits for a gate: a request held in flight."""

    def __init__(self, log_: wal.Log) -> None:
        self._log = log_
        self.options = log_.options
        self.entered = threading.Event()
        self.gate = threading.Event()

    def append_batch(self, payloads, *, wait=True):
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        return self._log.append_batch(payloads, wait=wait)


def test_stop_lets_a_request_in_flight_finish_and_answer(log, client):
    gated = _GatedLog(log)
    source = HttpIngestSource(config(), gated, environ={})  # type: ignore[arg-type]
    source.start()
    url = "http://{}:{}/ingest".format(*source.address)
    answers: list[httpx.Response] = []
    poster = threading.Thread(target=lambda: answers.append(client.post(url, json={"in": "flight"})))
    poster.start()
    assert gated.entered.wait(WAIT_S)
    stopper = threading.Thread(target=source.stop)
    stopper.start()
    wait_until(lambda: source._server.socket.fileno() == -1, "stop() to close the listening socket")
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(source.address, timeout=WAIT_S).close()
    assert stopper.is_alive()  # stop() waits for the request in flight
    gated.gate.set()
    stopper.join()
    poster.join()
    assert answers[0].status_code == 202 and answers[0].json()["seqs"] == [1]
    assert answers[0].headers["connection"] == "close"
    assert [change.message for _, change in logged(log)] == [{"in": "flight"}]


def test_an_address_in_use_is_one_clear_line(log, start):
    first, _ = start(log)
    host, port = first.address
    second = HttpIngestSource(config(listen=f"{host}:{port}"), log, environ={})
    with pytest.raises(ListenError) as raised:
        second.start()
    assert isinstance(raised.value, AgentError)
    message = str(raised.value)
    assert "\n" not in message and f"{host}:{port}" in message and "address already in use" in message
    assert "source app" in message


def test_a_listen_value_without_a_port_is_refused(log):
    with pytest.raises(ListenError, match="not host:port"):
        HttpIngestSource(config(listen="localhost"), log, environ={}).start()
