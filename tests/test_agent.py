"""The agent's apply step: corrupt or foreign pushes are NACKed with the reason and change nothing."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.probes import Attempt, Target
from agent.settings import AgentSettings
from agent.syncing import Agent, AppliedCache, backoff_delay
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from meshfleet.intents import MEDIA_TYPE, Backend, ClusterIntent, ClusterRef, Port, ServiceIntent, encode
from meshfleet.v1 import hub_pb2
from tests.fleets import run, tree

ME = ClusterRef("us-east-1", "us-east", "us-east-1a", "net-us-east")


def agent(tmp_path: Path) -> Agent:
    return Agent(AgentSettings(hub="127.0.0.1:1", cluster="us-east-1", state_dir=tmp_path / "state",
                               inventory=tmp_path / "inventory.yaml", output=tmp_path / "out"))


def push(version: str, content: bytes, media: str = MEDIA_TYPE) -> hub_pb2.IntentPush:
    return hub_pb2.IntentPush(version=version, content=content, content_type=media)


def flipped(content: bytes) -> bytes:
    return content[:10] + bytes([content[10] ^ 1]) + content[11:]


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda v, c: push(v, flipped(c)), "corrupt intent: content hashes to", id="flipped-byte"),
    pytest.param(lambda v, c: push(v, c, "application/json"), "unsupported intent media type", id="media-type"),
    pytest.param(lambda v, c: push(*encode(ClusterIntent(ClusterRef("eu-west-1", "eu", "eu-a", "n")))),
                 "intent is for cluster 'eu-west-1', not 'us-east-1'", id="other-cluster"),
])
def test_bad_push_is_nacked_and_changes_nothing(tmp_path: Path, make: object, reason: str) -> None:
    a = agent(tmp_path)
    good = encode(ClusterIntent(ME))
    assert a.apply(push(*good)).WhichOneof("kind") == "ack"
    before, applied = tree(tmp_path / "out"), a.applied_version
    answer = a.apply(make(*good))  # type: ignore[operator]
    assert answer.WhichOneof("kind") == "nack"
    assert reason in answer.nack.error
    assert tree(tmp_path / "out") == before
    assert a.applied_version == applied == good[0]
    assert AppliedCache(tmp_path / "state").load() is not None


def test_applied_intent_survives_a_restart(tmp_path: Path) -> None:
    a = agent(tmp_path)
    version, content = encode(ClusterIntent(ME))
    a.apply(push(version, content))
    assert agent(tmp_path).applied_version == version


def test_a_tampered_cache_is_ignored_not_trusted(tmp_path: Path) -> None:
    a = agent(tmp_path)
    a.apply(push(*encode(ClusterIntent(ME))))
    cache = tmp_path / "state" / "applied-intent.json"
    cache.write_text(cache.read_text().replace('"version": "', '"version": "0'))
    assert agent(tmp_path).applied_version == ""  # the hub will simply push again


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_is_full_jitter_capped(attempt: int) -> None:
    assert backoff_delay(attempt, 0.5, 30.0, lambda: 1.0) == min(30.0, 0.5 * 2**attempt)
    assert backoff_delay(attempt, 0.5, 30.0, lambda: 0.0) == 0.0


def test_an_apply_outlives_the_stream_that_brought_it(tmp_path: Path) -> None:
    """A dying stream must not abandon an apply half-way nor let the next one overlap it."""
    async def scenario() -> None:
        a = agent(tmp_path)
        version, content = encode(ClusterIntent(ME))
        gate = threading.Event()
        real_apply = a.sink.apply

        def slow_apply(objects: Any, hold: Any = None) -> Any:
            gate.wait(5)
            return real_apply(objects, hold)

        a.sink.apply = slow_apply  # type: ignore[method-assign,unused-ignore]
        task = asyncio.create_task(a.handle_intent(push(version, content)))
        await asyncio.sleep(0.05)
        task.cancel()  # what losing the stream does to the reader
        gate.set()
        assert a._applying is not None
        answer = await a._applying  # run() awaits this before it dials again
        assert answer.WhichOneof("kind") == "ack"
        assert a.applied_version == version
    asyncio.run(scenario())


def test_failing_to_record_the_applied_intent_is_a_nack_not_a_crash(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a = agent(tmp_path)

    def disk_full(_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(a.cache, "save", disk_full)
    answer = a.apply(push(*encode(ClusterIntent(ME))))
    assert answer.WhichOneof("kind") == "nack"
    assert "No space left on device" in answer.nack.error
    assert a.applied_version == ""


def test_cached_intent_is_not_trusted_when_the_output_no_longer_matches(tmp_path: Path) -> None:
    intent = ClusterIntent(ME, services=(ServiceIntent("ns", "svc", (Port("http", 80, "HTTP"),), (
        Backend(ClusterRef("eu-west-1", "eu", "eu-a", "n2"), "gw.example", 15443),)),))
    a = agent(tmp_path)
    a.apply(push(*encode(intent)))
    assert agent(tmp_path).applied_version == encode(intent)[0]  # output intact: trusted
    next((tmp_path / "out").rglob("serviceentry-*.yaml")).unlink()  # someone wiped a manifest
    restarted = agent(tmp_path)
    assert restarted.applied_version == ""  # so the hub pushes again
    assert not list((tmp_path / "out").rglob("serviceentry-*.yaml"))  # and nothing is written before that


def test_an_agent_cancelled_while_its_stream_winds_down_stops(tmp_path: Path) -> None:
    """A cancellation arriving while a stream's tasks wind down must stop the agent, not be swallowed (it
    would reconnect instead, and a SIGTERM landing as a stream ends would be ignored)."""
    async def scenario() -> None:
        shutil.copytree(EXAMPLES / "policies", tmp_path / "policies")
        fleet = Fleet(tmp_path, demo_clusters(2, tmp_path), tmp_path / "policies", heartbeat=0.2, grace=1.0,
                      gateways=True)
        await fleet.start()
        try:
            assert await fleet.wait_converged(20)
            agent = fleet.agents["us-east-1"]
            probing = asyncio.Event()

            async def slow_to_cancel(target: Target, within: float) -> Attempt:
                probing.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.5)  # a connect that takes a moment to give up
                    raise
                return Attempt(True)

            agent.prober._connect = slow_to_cancel
            await asyncio.wait_for(probing.wait(), 5)
            fleet.hub._refuse(fleet.hub.sessions["us-east-1"], grpc.StatusCode.ABORTED, "stream ends")
            await asyncio.sleep(0.2)  # the agent is in Agent._sync's finally, waiting for its probe task
            task = fleet.tasks.pop("us-east-1")
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=3)
            assert done, f"the agent ignored its cancellation (cancelling()={task.cancelling()}) and reconnected"
        finally:
            for t in fleet.tasks.values():
                t.cancel()
            await fleet.stop()
    run(scenario())
