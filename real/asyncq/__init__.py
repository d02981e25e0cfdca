"""Asynchronous serving in the real stack (pattern=async): submit, a Redis Stream, workers, poll.

- `queue`: the stream, its keys and the encoding of entries and results; the two Lua scripts
  that make a submission's admission and a result's write atomic.
- `api`: the gateway's routes (202 + Location on submit, the result endpoint, the metrics).
- `worker`: `python -m real.asyncq.worker`, a process that pulls batches and runs the model.
"""
