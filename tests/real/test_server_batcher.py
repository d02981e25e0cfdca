"""The server's AsyncBatcher on a fake clock: what it adds around the ReplicaQueue (futures,
clients that go away, shutdown), deterministically and in process."""

from __future__ import annotations

import asyncio
import math

import pytest

from real.server.batcher import AsyncBatcher, BackendFailed, DeadlineExceeded
from real.server.protocol import InferResult
from sim.policy.batching import DynamicBatcher
from tests.test_differential import FakeBackend, FakeWorld, request


def batcher_on(world: FakeWorld, max_batch: int = 4, delay_s: float = 0.01, service_s: float = 0.005) -> AsyncBatcher:
    b = AsyncBatcher(DynamicBatcher(max_batch, delay_s), FakeBackend(lambda rows: service_s), instances=1,
                     clock=world.clock, timer=world.timer, run_on=world.instances)
    b.start()
    return b


async def submitted(batcher: AsyncBatcher, i: int, timeout_s: float = 0.0) -> asyncio.Task[InferResult]:
    """A client's request, queued by the time this returns (its task ran up to its await)."""
    task = asyncio.create_task(batcher.submit(request(i, timeout_s), received_s=0.0))
    await asyncio.sleep(0)
    return task


def test_a_client_that_goes_away_leaves_the_queue_at_once() -> None:
    async def main() -> None:
        world = FakeWorld()
        batcher = batcher_on(world)
        a, b, c = [await submitted(batcher, i) for i in range(3)]
        b.cancel()
        await asyncio.sleep(0)
        assert batcher.queue_len == 2 and batcher.queue.rows == 2  # no longer counted anywhere
        world.run_until(math.inf)
        assert [r.members for r in world.batches] == [(0, 2)]
        assert (await a).batch_size == 2 and (await c).batch_id == 0 and b.cancelled()
        assert batcher.stats.inference_count == 2

    asyncio.run(main())


def test_a_client_gone_after_dispatch_runs_and_its_answer_is_dropped() -> None:
    async def main() -> None:
        world = FakeWorld()
        batcher = batcher_on(world, max_batch=1, delay_s=0.0)
        a = await submitted(batcher, 0)
        a.cancel()
        await asyncio.sleep(0)
        world.run_until(math.inf)
        assert [r.members for r in world.batches] == [(0,)] and a.cancelled()
        assert batcher.busy == 0 and batcher.stats.success == 1

    asyncio.run(main())


def test_an_expired_request_is_answered_while_the_instance_is_busy() -> None:
    async def main() -> None:
        world = FakeWorld()
        batcher = batcher_on(world, max_batch=1, delay_s=0.0, service_s=0.05)
        first = await submitted(batcher, 0)
        late = await submitted(batcher, 1, timeout_s=0.01)
        world.run_until(0.02)
        await submitted(batcher, 2)  # the next arrival looks at the queue: the deadline has passed
        with pytest.raises(DeadlineExceeded):
            await late
        world.run_until(math.inf)
        assert (await first).batch_id == 0 and [r.members for r in world.batches] == [(0,), (2,)]

    asyncio.run(main())


def test_stop_fails_the_requests_still_waiting() -> None:
    async def main() -> None:
        world = FakeWorld()
        batcher = batcher_on(world)
        waiting = await submitted(batcher, 0)
        batcher.stop()
        with pytest.raises(BackendFailed, match="shutting down"):
            await waiting
        assert batcher.queue_len == 0

    asyncio.run(main())
