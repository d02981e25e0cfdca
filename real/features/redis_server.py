"""A private redis-server for one run or one test: loopback only, a password, nothing on disk.

The Redis feature store (real.features.redis_store) needs a server; servelab never uses one it
did not start, so a run cannot read a stranger's data or leave its own behind. The server is
Debian's `redis-server` binary (`apt-get install -y redis-server`), started as a child with:
- `bind 127.0.0.1` and `protected-mode yes`: reachable from this machine only;
- `requirepass`, a password generated per server (secrets.token_urlsafe), written with the rest
  of the config to a 0600 file in the server's own temp dir, never on the command line where
  `ps` would show it;
- `save ""` and `appendonly no`: no persistence, the temp dir is removed when it stops;
- a free port chosen just before the start (retried if another process takes it first).

`start_redis_server` waits until the server answers an authenticated PING (bounded; on failure a
one-line error naming the address and the tail of the server's log) and returns a `RedisServer`,
a context manager that stops it on exit: SHUTDOWN by signal, then SIGKILL if it lingers. The
child also dies with the thread that started it (Linux PR_SET_PDEATHSIG), and any server still
running at interpreter exit is stopped, so a crashed run leaves no process behind.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

REDIS_PACKAGE = "redis-server"
REDIS_BINARY = "redis-server"
INSTALL_HINT = f"install Debian's {REDIS_PACKAGE} package (`sudo apt-get install -y {REDIS_PACKAGE}`)"
LOOPBACK = "127.0.0.1"
_PORT_RETRIES = 3


class RedisServerError(RuntimeError):
    """The private redis-server could not be started (or is not installed); one line."""


def redis_server_binary() -> str | None:
    """The redis-server executable on PATH, or None when the package is not installed."""
    return shutil.which(REDIS_BINARY)


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it ends (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: rely on the context manager and atexit
        pass


_RUNNING: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop()


@dataclass
class RedisServer:
    """A running private redis-server; `url` has no password in it (pass `password` apart)."""

    host: str
    port: int
    password: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        text: list[str] = []
        for path in (self.log_path, self.workdir / "console.log"):
            try:
                text += path.read_text(errors="replace").strip().splitlines()
            except OSError:
                pass
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM: Redis shuts down without saving, as configured), SIGKILL
        after `timeout_s`, reap it, remove its temp dir. Safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        _RUNNING.discard(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __hash__(self) -> int:  # for the WeakSet: one server is one process
        return id(self)


def _config_text(host: str, port: int, password: str, workdir: Path) -> str:
    return "\n".join([
        f"bind {host}",
        "protected-mode yes",
        f"port {port}",
        f'requirepass "{password}"',
        'save ""',
        "appendonly no",
        f'dir "{workdir}"',
        f'logfile "{workdir / "redis.log"}"',
        "daemonize no",
        "databases 1",
        "",
    ])


def _answers_ping(host: str, port: int, password: str, timeout_s: float) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host=host, port=port, password=password, socket_timeout=timeout_s,
                         socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def start_redis_server(startup_timeout_s: float = 10.0, port: int | None = None,
                       binary: str | None = None) -> RedisServer:
    """Start a private redis-server on 127.0.0.1 (a free port unless `port` is given), wait until
    it answers an authenticated PING, and return it; raises RedisServerError (one line) if the
    binary is missing or the server does not come up within `startup_timeout_s`."""
    exe = binary or redis_server_binary()
    if exe is None:
        raise RedisServerError(f"{REDIS_BINARY} is not on PATH; {INSTALL_HINT}")
    last = ""
    for _ in range(1 if port is not None else _PORT_RETRIES):
        server = _launch(exe, port if port is not None else _free_port(LOOPBACK))
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if not server.running:
                break
            if _answers_ping(server.host, server.port, server.password, 0.25):
                return server
            time.sleep(0.02)
        last = server.log_tail()
        exited = not server.running
        server.stop()
        if port is not None or not (exited and "already in use" in last):
            reason = "exited" if exited else f"did not answer PING within {startup_timeout_s:g} s"
            raise RedisServerError(f"redis-server at {LOOPBACK}:{server.port} {reason}; log: {last}")
    raise RedisServerError(f"redis-server found no free port on {LOOPBACK} after {_PORT_RETRIES} tries; log: {last}")


def _launch(exe: str, port: int) -> RedisServer:
    workdir = Path(tempfile.mkdtemp(prefix="servelab-redis-"))
    password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe inside the config's quotes
    conf = workdir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_config_text(LOOPBACK, port, password, workdir))
    with open(workdir / "console.log", "wb") as console:  # what it says before its log is open
        process = subprocess.Popen([exe, str(conf)], cwd=workdir, stdin=subprocess.DEVNULL,
                                   stdout=console, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)
    server = RedisServer(LOOPBACK, port, password, workdir, process)
    _RUNNING.add(server)
    return server
