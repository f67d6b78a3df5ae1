"""The runbook's network-failure simulation, automated: drop the destination's traffic for 30 s.

As in the runbook (`iptables -A OUTPUT -p tcp --dport 8080 -j DROP`, wait 30 s, flush), but with
a black-holing proxy in front of the receiver, which needs no privileges: while it drops, the
agent keeps capturing into its log and logs "Failed to send events - retrying"; once the network
is back it logs "Successfully sent records" and the receiver gets every change, in order.
"""

from __future__ import annotations

import threading
import time

import psycopg

from agent.delivery import idempotency_key
from tests.agent_harness import execute, logged_changes, wait_for
from tests.agent_process import AgentProcess, postgres_source, wait_until_caught_up, write_config
from tests.fault_receiver import FaultReceiver
from tests.tcp_proxy import BlackholeProxy

OUTAGE_S = 30.0


def _insert_forever(dsn: str, stop: threading.Event, failures: list[str]) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO public.events (id, body) VALUES (%s, %s)", (n, f"event {n}"))
                time.sleep(0.01)
    except Exception as exc:  # reported by the test
        failures.append(repr(exc))


def test_destination_unreachable_for_30s_then_everything_drains(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE public.events (id int PRIMARY KEY, body text)")
    data_dir = tmp_path / "data"
    with FaultReceiver() as receiver:
        proxy = BlackholeProxy(receiver.port)
        config = write_config(
            tmp_path / "agent.toml",
            data_dir,
            postgres_source(pg_dsn, publication_tables=["public.events"]),
            destinations=[
                {
                    "name": "hook",
                    "type": "http",
                    "url": f"http://127.0.0.1:{proxy.port}/ingest",
                    "timeout": 1.0,
                    "retry": {"initial_delay": 0.2, "max_delay": 2.0},
                    "batch": {"max_records": 100, "linger": 0.05},
                }
            ],
        )
        agent = AgentProcess(config)
        stop, failures = threading.Event(), []
        writer = threading.Thread(target=_insert_forever, args=(pg_dsn, stop, failures), daemon=True)
        try:
            agent.wait_for_event("source.streaming")
            writer.start()
            wait_for(lambda: len(receiver.records) >= 50, 60, "the first deliveries")

            proxy.block()
            time.sleep(1.0)  # a batch already on the wire may still land
            delivered_before = len(receiver.unique())
            captured_before = len(logged_changes(str(data_dir)))
            time.sleep(OUTAGE_S)
            captured_during = len(logged_changes(str(data_dir))) - captured_before
            assert len(receiver.unique()) == delivered_before, "nothing gets through a dropped network"
            assert captured_during > 500, f"the agent kept capturing: only {captured_during} changes"
            assert agent.find_events("Failed to send events - retrying"), agent.output()
            successes_before = len(agent.find_events("Successfully sent records"))

            proxy.unblock()
            stop.set()
            writer.join(10)
            assert not failures, failures
            wait_until_caught_up(pg_dsn)
            changes = logged_changes(str(data_dir))
            keys = [idempotency_key(change, seq) for seq, change in changes]
            wait_for(
                lambda: {r["idempotency_key"] for r in receiver.records} >= set(keys), 120, "the backlog"
            )
            assert len(agent.find_events("Successfully sent records")) > successes_before
            code, _ = agent.stop()
            assert code == 0, agent.output()
        finally:
            stop.set()
            agent.kill()
            proxy.close()
        unique = receiver.unique()
        assert [r["idempotency_key"] for r in unique] == keys, "every change once, in log order"
        assert [r["after"]["id"] for r in unique] == sorted(r["after"]["id"] for r in unique)
