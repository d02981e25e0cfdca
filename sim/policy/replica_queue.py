"""A replica's queue: admission, deadline expiry, batch formation and instance accounting.

The one implementation of what happens between a request reaching a replica and its batch
starting on a model instance, with no clock and no I/O (h11-style): the twin calls it from
SimPy callbacks, the real server from its asyncio batcher, and both only move time and bytes
around it. So the two worlds shed, expire and batch identically by construction.

Semantics (Triton's dynamic batcher):
- admission: a request arriving while `max_queue_size` requests wait is shed at once (a request
  whose deadline has passed does not count: it no longer waits);
- deadlines: a request whose deadline has passed is dropped before any batch is formed, wherever
  it sits in the queue (requests may carry different deadlines, so expiry is not FIFO);
- none of it depends on how often the driver calls `dispatch` (the twin calls it only when an
  instance is free, the server at every arrival): a call that has nothing to start changes no
  later decision;
- batching: asked whenever an instance is free, `DynamicBatcher.decide` on the queued *rows*
  (a request of n rows fills n slots), then up to that many rows in FIFO order, never splitting
  a request;
- instances: at most `instances` batches run at once; `finish()` frees one.
Items are opaque (an int in the twin, a pending future in the server).
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from typing import Generic, TypeVar

from sim.policy.batching import Dispatch, DynamicBatcher

Item = TypeVar("Item")
_INF = math.inf


class ReplicaQueue(Generic[Item]):
    """Items must be hashable and unique while queued (a request id, an object by identity)."""

    __slots__ = ("batcher", "instances", "free", "max_queue_size", "_limit", "_items", "_rows", "waiting",
                 "_deadlines", "_deadline_rows", "_seq", "_gone", "expired", "wake_s")

    def __init__(self, batcher: DynamicBatcher, instances: int, max_queue_size: int = 0) -> None:
        if instances < 1:
            raise ValueError("instances must be >= 1")
        if max_queue_size < 0:
            raise ValueError("max_queue_size must be >= 0 (0 = unbounded)")
        self.batcher = batcher
        self.instances = instances
        self.free = instances
        self.max_queue_size = max_queue_size
        self._limit = max_queue_size or sys.maxsize
        # FIFO of (item, rows, enqueued_s). An item that left early (expired, cancelled) stays
        # in it, marked in _gone, and is skipped when it reaches the head: O(1) removal.
        self._items: deque[tuple[Item, int, float]] = deque()
        self._gone: set[Item] = set()
        self._rows = 0
        self.waiting = 0  # requests queued (not rows): read it, never write it
        # requests with a deadline: a min-heap (deadline, tie-break, item), and item -> rows
        # while still queued (so the heap's stale entries for dispatched items are ignored)
        self._deadlines: list[tuple[float, int, Item]] = []
        self._deadline_rows: dict[Item, int] = {}
        self._seq = 0
        self.expired: list[Item] = []  # dropped by their deadline since the caller last took them
        self.wake_s = math.inf  # when the head's batching delay runs out (call dispatch then)

    def __len__(self) -> int:
        """Requests waiting (not rows)."""
        return self.waiting

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def busy(self) -> int:
        return self.instances - self.free

    def offer(self, item: Item, now: float, rows: int = 1, deadline_s: float = _INF) -> bool:
        """Queue a request; False when the queue is full (shed it: HTTP 503).

        A request whose deadline has passed holds no place: a full queue first drops those (into
        `expired`). Otherwise whether it sheds would depend on when the driver last called
        dispatch (the twin only does when an instance is free, the server at every arrival).
        """
        if self.waiting >= self._limit:
            if not self._deadlines or self._deadlines[0][0] > now:
                return False
            self._expire(now)
            if self.waiting >= self._limit:
                return False
        self._items.append((item, rows, now))
        self._rows += rows
        self.waiting += 1
        if deadline_s < _INF:
            self._seq += 1
            heap = self._deadlines
            heapq.heappush(heap, (deadline_s, self._seq, item))
            self._deadline_rows[item] = rows
            if len(heap) > 2 * len(self._deadline_rows) + 64:
                self._compact()
        return True

    def push(self, item: Item, now: float) -> bool:
        """`offer(item, now)` for the common request: one row, no deadline. The twin's hot path
        calls it once per request, so it skips the general case's arguments."""
        if self.waiting >= self._limit:
            return self.offer(item, now)
        self._items.append((item, 1, now))
        self._rows += 1
        self.waiting += 1
        return True

    def _compact(self) -> None:
        """Drop the deadline heap's entries for requests that left in a batch. Left alone they
        stay until their deadline passes, holding their item: in the server a request and its
        answer, kept alive for the whole timeout (a growing heap, and work for the GC)."""
        waiting = self._deadline_rows
        heap = [entry for entry in self._deadlines if entry[2] in waiting]
        heapq.heapify(heap)
        self._deadlines = heap

    def cancel(self, item: Item) -> bool:
        """Take a waiting request out (its client went away); False if it is not waiting."""
        if item in self._gone:
            return False
        for queued, rows, _ in self._items:
            if queued is item or queued == item:
                self._leave(item, rows)
                return True
        return False

    def drain(self) -> list[Item]:
        """Take every waiting request out, in FIFO order (the replica is stopping: the caller
        fails them). Running batches are untouched."""
        gone = self._gone
        waiting = [item for item, _, _ in self._items if item not in gone]
        self._items.clear()
        gone.clear()
        self._deadlines.clear()
        self._deadline_rows.clear()
        self._rows = self.waiting = 0
        self.wake_s = _INF
        return waiting

    def _leave(self, item: Item, rows: int) -> None:
        self._gone.add(item)
        self._deadline_rows.pop(item, None)
        self._rows -= rows
        self.waiting -= 1

    def _expire(self, now: float) -> None:
        heap, waiting = self._deadlines, self._deadline_rows
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            rows = waiting.get(item)
            if rows is not None:  # still queued: not dispatched, not cancelled
                self._leave(item, rows)
                self.expired.append(item)

    def dispatch(self, now: float) -> list[list[Item]]:
        """The batches to start now, one per free instance that has work.

        Expired requests are moved to `expired` first (the caller answers them as timed out).
        When requests wait but their batching delay has not run out, `wake_s` says when to call
        again; it is math.inf when nothing waits or no instance is free.
        """
        self.wake_s = math.inf
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        batches: list[list[Item]] = []
        items, gone, decide = self._items, self._gone, self.batcher.decide
        while self.free and self.waiting:
            if gone:
                while items[0][0] in gone:
                    gone.discard(items.popleft()[0])
            decision = decide(self._rows, items[0][2], now)
            if decision.__class__ is not Dispatch:
                self.wake_s = decision.until_s  # type: ignore[union-attr]
                break
            room = decision.size  # type: ignore[union-attr]
            if not gone and self._rows == self.waiting and room >= self.waiting:
                batch = [entry[0] for entry in items]  # one-row requests, all fit: take them all
                items.clear()
                self._rows = self.waiting = 0
            else:
                batch = self._take(room)
            if self._deadline_rows:
                for item in batch:
                    self._deadline_rows.pop(item, None)
            self.free -= 1
            batches.append(batch)
        return batches

    def _take(self, room: int) -> list[Item]:
        """Up to `room` rows from the head in FIFO order, never splitting a request."""
        items, gone = self._items, self._gone
        batch: list[Item] = []
        taken = 0
        while items:
            item, rows, _ = items[0]
            if gone and item in gone:
                gone.discard(item)
                items.popleft()
                continue
            if batch and taken + rows > room:
                break
            items.popleft()
            batch.append(item)
            taken += rows
            self._rows -= rows
            self.waiting -= 1
        return batch

    def finish(self) -> None:
        """A batch completed: its instance takes work again (call dispatch next)."""
        if self.free >= self.instances:
            raise RuntimeError("finish() without a running batch")
        self.free += 1

    def take_expired(self) -> list[Item]:
        out, self.expired = self.expired, []
        return out
