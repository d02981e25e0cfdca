"""Dynamic batching, with Triton's dynamic-batcher semantics.

Asked only when a model instance is free: dispatch as soon as `max_batch_size` requests wait or
the oldest has waited `max_queue_delay_s`, taking up to `max_batch_size` in FIFO order;
otherwise wait until the oldest's delay runs out (or for the next arrival when nothing waits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

@dataclass(frozen=True, slots=True)
class Dispatch:
    size: int


@dataclass(frozen=True, slots=True)
class Wait:
    until_s: float  # math.inf: nothing waits, wake on the next arrival


class DynamicBatcher:
    def __init__(self, max_batch_size: int, max_queue_delay_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must be >= 0")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._dispatch = [Dispatch(n) for n in range(max_batch_size + 1)]
        self._idle = Wait(math.inf)

    def decide(self, queue_len: int, oldest_enqueued_s: float, now: float) -> Dispatch | Wait:
        """`oldest_enqueued_s` is when the head of the queue arrived (ignored if queue_len == 0)."""
        if queue_len <= 0:
            return self._idle
        if queue_len >= self.max_batch_size:
            return self._dispatch[self.max_batch_size]
        deadline = oldest_enqueued_s + self.max_queue_delay_s
        # exact, so the twin follows the rule to the bit; a timer that fires early (asyncio may, by
        # its clock resolution) just gets a Wait for the remaining microseconds
        if now >= deadline:
            return self._dispatch[queue_len]
        return Wait(deadline)
