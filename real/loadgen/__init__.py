"""servelab's load generator: the twin's arrival schedule replayed open loop through Locust.

- `plan`: the files a Locust process is given (plan JSON, schedule npz, worker index env var)
- `locustfile`: the Locust side; runs only in `locust -f` subprocesses, never imported here
- `wire`: its HTTP/1.1 without I/O (request bytes built from parts, answers parsed by httptools)
- `null_server`: a server that does nothing, to measure the generator's own cost against
- `recordfile`: what a worker writes per request
- `merge`: worker records -> the twin's per-request schema, send-lag figures
- `runner`: starts/stops the Locust processes and merges (`run_load`)

Nothing in this package imports Locust or gevent into the calling process.
"""
