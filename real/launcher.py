"""Start the real stack (N replica processes and the gateway) on loopback, and always stop it.

`launch(cfg)` is a context manager: inside it every process answered ready; on leaving it, by
return, exception, Ctrl-C or SIGTERM, every process is gone. Three layers make "no orphan" hold:
- each process runs in its own process group (so a terminal's Ctrl-C does not hit the children
  half-way through our own shutdown, and a signal reaches anything they spawn);
- the exit path sends SIGTERM to each group, then SIGKILL after a grace period;
- each child asks the kernel to SIGKILL it when its parent dies (PR_SET_PDEATHSIG), which covers
  the parent being killed with SIGKILL, where no Python code runs. Linux only; the kernel ties it
  to the parent *thread*, so call `launch` from a thread that outlives the stack (normally main).
While the stack is up in the main thread, a default SIGTERM disposition is replaced by one that
raises SystemExit, so `finally` blocks (ours and the caller's) run.

Replicas can come and go while traffic flows (`RunningStack.add_replica` / `stop_replica`, what a
rollout's AddReplica and RemoveReplica need). A replica added at run time is forked by a thread
the stack owns for its whole life (the spawner), whatever thread asks for it: PR_SET_PDEATHSIG
fires when the forking *thread* ends, and a controller's thread may end long before the stack.
A replica is stopped only once the gateway counts no request in flight to it.

With pattern=async the stack also runs `async_jobs.workers` worker processes
(`python -m real.asyncq.worker`, logs stack/worker-I.log), pulling the Redis Stream the gateway
queues submissions on; the launcher yields only once each has loaded the model and joined the
consumer group, and stops them with the rest. The sync replicas still start (`replicas` of
them): the gateway needs them for metadata, readiness and any sync infer, and idle they cost
almost nothing; the workers alone serve async submissions (a worker counts as a replica for cost).

Children start in the repository root (so `python -m real.server` imports this checkout, never a
same-named folder in the caller's directory), so every path they are given is absolute: a
relative one would name another file than the caller meant, or a stale one left in the root.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sim.config import ConfigError, ScenarioConfig
from sim.files import write_config, write_text

ROOT = Path(__file__).resolve().parents[1]
READY_PATH = "/v2/health/ready"
START_TIMEOUT_S = 60.0
GRACE_S = 5.0
DRAIN_TIMEOUT_S = 30.0  # stop_replica waits this long at most for a removed replica's in-flight requests
GATEWAY_REPLICAS_PATH = "/v2/gateway/replicas"
LOG_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1

# (config path, replica index, port, host) -> argv
ReplicaCommand = Callable[[Path, int, int, str], list[str]]


class LaunchError(RuntimeError):
    """The stack could not start; the message names the process and ends with its log's tail."""


class PortInUse(LaunchError, ConfigError):
    """`gateway.port` is taken: a launch failure that the user fixes in the config, so it is
    also a ConfigError (one line naming the key, exit status 2 in every mode)."""

    def __init__(self, host: str, port: int, reason: str, key: str = "gateway.port") -> None:
        ConfigError.__init__(self, key, f"{port} is in use, cannot bind {host}:{port} ({reason}); "
                                                   "pick another port, or 0 for a free one")


@dataclass
class _ReplicaStarter:
    """What starting one more replica needs: the run's files, environment and deadlines, and
    the spawner thread (see the module docstring) that forks it."""

    config_path: Path
    stack_dir: Path
    host: str
    env: dict[str, str]
    command: ReplicaCommand
    start_timeout_s: float
    grace_s: float
    spawner: ThreadPoolExecutor
    lock: threading.Lock = field(default_factory=threading.Lock)
    grpc: bool = False  # replicas serve GRPCInferenceService too (server.grpc), each on a free port


@dataclass
class RunningStack:
    gateway_url: str
    replica_urls: list[str]  # by replica index, the ones added at run time included
    token: str
    processes: list[subprocess.Popen[bytes]]  # in start order: the first replicas, the gateway, replicas added later
    run_dir: Path | None = None
    logs: list[Path] = field(default_factory=list)  # one per process, same order
    replicas: list[subprocess.Popen[bytes]] = field(default_factory=list)  # by replica index
    replica_logs: list[Path] = field(default_factory=list)  # by replica index
    _starter: _ReplicaStarter | None = field(default=None, repr=False)
    # gRPC targets (host:port, what grpc and tritonclient.grpc take) with server.grpc, else ""
    grpc_gateway_url: str = ""
    replica_grpc_urls: list[str] = field(default_factory=list)  # by replica index
    # the Redis of the feature store and the async queue (server.redis_url, or a private one), else ""
    redis_url: str = ""
    # pattern=async: the worker processes pulling the queue (real.asyncq.worker), by index, and their logs
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_logs: list[Path] = field(default_factory=list)

    def load_target(self, protocol: str) -> str:
        """Where the load generator sends (loadgen.protocol): the gateway's REST URL, or its gRPC
        target (host:port)."""
        if protocol == "grpc":
            if not self.grpc_gateway_url:
                raise LaunchError("loadgen.protocol=grpc, but the stack serves no gRPC (server.grpc=false)")
            return self.grpc_gateway_url
        return self.gateway_url

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    # -- replicas at run time ----------------------------------------------------------------

    def start_replica(self, version: str) -> tuple[int, str]:
        """Start a replica of `version` (a model.versions name) on a free port, without waiting
        for it: (its index, the next one, and its URL). Its process dies with the stack."""
        starter = self._starter
        if starter is None:
            raise LaunchError("this stack cannot start replicas at run time")
        with starter.lock:  # one index per replica, whoever asks
            index = len(self.replica_urls)
            port, grpc_port = free_ports(starter.host, 2)
            argv = starter.command(starter.config_path, index, port, starter.host) + ["--version", version]
            if starter.grpc:
                argv += ["--grpc-port", str(grpc_port)]
                self.replica_grpc_urls.append(f"{url_host(starter.host)}:{grpc_port}")
            log = starter.stack_dir / f"replica-{index}.log"
            proc = starter.spawner.submit(_spawn, argv, log, starter.env).result()
            self.processes.append(proc)
            self.logs.append(log)
            self.replicas.append(proc)
            self.replica_logs.append(log)
            self.replica_urls.append(f"http://{url_host(starter.host)}:{port}")
        return index, self.replica_urls[index]

    def wait_replica(self, index: int, timeout_s: float | None = None) -> None:
        """Until replica `index` answers ready; LaunchError with its log's tail if it exits first
        or is not ready within `timeout_s` (default: the stack's start deadline)."""
        starter = self._starter
        limit = timeout_s if timeout_s is not None else (starter.start_timeout_s if starter else START_TIMEOUT_S)
        wait_ready([f"replica {index}"], [self.replica_urls[index]], [self.replicas[index]], [self.replica_logs[index]],
                   time.monotonic() + limit)

    def add_replica(self, version: str) -> tuple[int, str]:
        """`start_replica`, then `wait_replica`: (index, URL) of a replica that answers ready."""
        index, url = self.start_replica(version)
        self.wait_replica(index)
        return index, url

    def in_flight(self, index: int) -> int | None:
        """Requests the gateway has sent to replica `index` and not yet had answered (None: the
        gateway did not say); raises ValueError while the gateway still routes to it."""
        try:
            with _NO_PROXY.open(self.gateway_url + GATEWAY_REPLICAS_PATH, timeout=5.0) as resp:
                listing = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        doc = next((r for r in listing.get("replicas", []) if r.get("replica") == index), None)
        if doc is None:
            return None
        if doc.get("routable"):
            raise ValueError(f"replica {index} still takes requests: remove it from the gateway first "
                             f'(POST {GATEWAY_REPLICAS_PATH}/{index} {{"action": "remove"}})')
        return int(doc.get("in_flight", 0))

    def stop_replica(self, index: int, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Stop replica `index` without losing a request: once the gateway (which must no longer
        route to it) counts none in flight to it, or after `drain_timeout_s`, SIGTERM (the server
        finishes what it still holds), SIGKILL after the grace period; reaped. Its exit status."""
        proc = self.replicas[index]
        deadline = time.monotonic() + drain_timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if self.in_flight(index) in (0, None):  # None: no gateway routes to it any more
                break
            time.sleep(0.02)
        stop_all([proc], self._starter.grace_s if self._starter else GRACE_S)
        return int(proc.returncode)


def absolute(path: str | Path) -> Path:
    """`path` against the caller's working directory, symlinks kept (the path the user typed,
    made absolute, is the one messages and banners show)."""
    return Path(os.path.abspath(path))


def child_path(path: Path) -> str:
    """A path for a child's command line: refused unless absolute (children run in ROOT)."""
    if not path.is_absolute():
        raise ValueError(f"{path}: a child process runs in {ROOT}; hand it an absolute path")
    return str(path)


def server_command(config: Path, replica: int, port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "real.server", "--config", child_path(config), "--replica", str(replica),
            "--port", str(port), "--host", host]


def gateway_command(config: Path, port: int, host: str, upstreams: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "real.gateway", "--config", child_path(config), "--port", str(port),
            "--host", host, "--upstreams", ",".join(upstreams)]


def worker_command(config: Path, index: int) -> list[str]:
    return [sys.executable, "-m", "real.asyncq.worker", "--config", child_path(config), "--index", str(index)]


def wait_workers(cfg: ScenarioConfig, procs: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path],
                 env: dict[str, str], deadline: float) -> None:
    """Until every async worker said it is ready (model loaded, consumer group there: its name in
    the workers hash); a worker that exits, or the deadline, fails with its log's tail."""
    import redis

    from real.asyncq.queue import AsyncKeys
    from real.asyncq.worker import worker_name

    client = redis.Redis.from_url(env[REDIS_URL_ENV], password=env.get(REDIS_PASSWORD_ENV) or None,
                                  socket_timeout=2.0, socket_connect_timeout=2.0)
    key = AsyncKeys(cfg.model.name).workers

    def ready(i: int) -> bool:
        try:
            return bool(client.hexists(key, worker_name(i)))
        except (redis.RedisError, OSError):
            return False

    try:
        _wait_until([f"async worker {i}" for i in range(len(procs))], ["" for _ in procs], procs, logs, deadline, ready)
    finally:
        client.close()


def url_host(bind_host: str) -> str:
    """Where a client reaches a server bound to `bind_host` on this machine."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def free_ports(host: str, n: int) -> list[int]:
    """n distinct free ports, all held open together while choosing so none repeats."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _check_port_free(host: str, port: int, key: str = "gateway.port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUse(host, port, exc.strerror or str(exc), key) from exc


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the parent, even by SIGKILL."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def _child_env(token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               SERVELAB_TOKEN=token)
    return env


REDIS_URL_ENV = "SERVELAB_REDIS_URL"
REDIS_PASSWORD_ENV = "SERVELAB_REDIS_PASSWORD"


def needs_redis(cfg: ScenarioConfig) -> bool:
    return cfg.features.store == "redis" or cfg.pattern == "async"


def _start_redis(cfg: ScenarioConfig, env: dict[str, str], stack_dir: Path, stoppers: list[Callable[[], None]]) -> str:
    """The run's Redis, when the scenario needs one: `server.redis_url` as given (its password
    already in $SERVELAB_REDIS_PASSWORD), else a private redis-server on loopback with a generated
    password, stopped with the stack. Children find it in $SERVELAB_REDIS_URL and the password in
    $SERVELAB_REDIS_PASSWORD, never in argv or run files. Returns its URL ("" when not needed)."""
    if not needs_redis(cfg):
        return ""
    if cfg.server.redis_url:
        env[REDIS_URL_ENV] = cfg.server.redis_url
        return cfg.server.redis_url
    from real.features.redis_server import RedisServerError, start_redis_server

    try:
        server = start_redis_server()
    except RedisServerError as exc:
        raise LaunchError(f"{'features.store=redis' if cfg.features.store == 'redis' else 'pattern=async'} needs Redis: {exc}") from None
    stoppers.append(server.stop)
    env[REDIS_URL_ENV] = server.url
    env[REDIS_PASSWORD_ENV] = server.password
    return server.url


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            start_new_session=True, preexec_fn=_child_setup(os.getpid()),
        )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(url: str, timeout_s: float = 0.5) -> bool:
    try:
        with _NO_PROXY.open(url + READY_PATH, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_ready(names: Sequence[str], urls: Sequence[str], procs: Sequence[subprocess.Popen[bytes]],
               logs: Sequence[Path], deadline: float) -> None:
    """Until every URL answers ready; a process that exits, or the deadline, fails with its log."""
    _wait_until(names, [f"{url}{READY_PATH}" for url in urls], procs, logs, deadline, lambda i: is_ready(urls[i]))


def _wait_until(names: Sequence[str], wheres: Sequence[str], procs: Sequence[subprocess.Popen[bytes]],
                logs: Sequence[Path], deadline: float, ready: Callable[[int], bool]) -> None:
    """Until `ready(i)` for every process i; one that exits first, or the deadline, fails with
    its log's tail (`wheres[i]`: where its readiness is asked, for the message; "" for none)."""
    pending = set(range(len(procs)))
    while pending:
        for i in sorted(pending):
            code = procs[i].poll()
            if code is not None:
                at = f" ({wheres[i].removesuffix(READY_PATH)})" if wheres[i] else ""
                raise LaunchError(f"{names[i]} exited with status {code} before it was ready{at}; "
                                  f"log {logs[i]}:\n{log_tail(logs[i])}")
            if ready(i):
                pending.discard(i)
        if not pending:
            return
        if time.monotonic() > deadline:
            i = min(pending)
            at = f" at {wheres[i]}" if wheres[i] else ""
            raise LaunchError(f"{names[i]} not ready{at} within the start deadline; log {logs[i]}:\n{log_tail(logs[i])}")
        time.sleep(0.05)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = GRACE_S) -> None:
    """SIGTERM every process group, SIGKILL what is left after `grace_s`, reap everything."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class _Terminated(SystemExit):
    pass


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM -> SystemExit(143) in the main thread while the stack is up, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def launch(cfg: ScenarioConfig, *, run_dir: Path | None = None, token: str | None = None) -> Iterator[RunningStack]:
    """The stack for `cfg`, ready to serve; stopped on exit, whatever the exit.

    Files go to `run_dir/stack/` (the config the processes read, one log per process, the token);
    without `run_dir` they go to a temporary directory removed on exit; a relative `run_dir` is
    taken from the caller's working directory. `gateway.port=0` picks a free port (a taken one
    raises PortInUse); replica ports are always free ones. The token (for control endpoints) is `token`,
    else `cfg.server.token`, else a fresh random one; it is passed in $SERVELAB_TOKEN, never in argv.
    """
    with launch_with(cfg, run_dir=run_dir, token=token) as stack:
        yield stack


@contextlib.contextmanager
def launch_with(
    cfg: ScenarioConfig,
    *,
    run_dir: Path | None = None,
    token: str | None = None,
    replica_command: ReplicaCommand = server_command,
    start_timeout_s: float = START_TIMEOUT_S,
    grace_s: float = GRACE_S,
    gateway_args: Sequence[str] = (),
) -> Iterator[RunningStack]:
    """`launch` with the knobs tests need: another replica program (a replica added at run time
    gets `--version NAME` after its command line), shorter deadlines."""
    temp = run_dir is None
    base = Path(tempfile.mkdtemp(prefix="servelab-stack-")) if run_dir is None else absolute(run_dir)
    stack_dir = base / "stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    token = token or cfg.server.token or secrets.token_urlsafe(24)
    procs: list[subprocess.Popen[bytes]] = []
    stoppers: list[Callable[[], None]] = []  # what else the stack started (a private redis-server)
    spawner = ThreadPoolExecutor(1, thread_name_prefix="servelab-spawner")
    try:
        with _sigterm_raises():
            replica_host = cfg.server.host
            gateway_host = cfg.gateway.host
            grpc = cfg.server.grpc
            ports = free_ports(replica_host, cfg.replicas * (2 if grpc else 1))
            replica_ports, replica_grpc_ports = ports[:cfg.replicas], ports[cfg.replicas:]
            if cfg.gateway.port:
                gateway_port = cfg.gateway.port
                _check_port_free(gateway_host, gateway_port)
            else:
                gateway_port = free_ports(gateway_host, 1)[0]
            gateway_grpc_port = 0
            if grpc and cfg.gateway.grpc_port:
                gateway_grpc_port = cfg.gateway.grpc_port
                _check_port_free(gateway_host, gateway_grpc_port, "gateway.grpc_port")
            elif grpc:
                gateway_grpc_port = next(p for p in free_ports(gateway_host, 2) if p != gateway_port)

            resolved = copy.deepcopy(cfg)
            resolved.gateway.port = gateway_port
            resolved.gateway.grpc_port = gateway_grpc_port
            resolved.server.token = ""  # the secret travels in the environment, not in run files
            if resolved.service.profile:  # the one file the replicas read (emulated, kind=empirical)
                resolved.service.profile = str(absolute(resolved.service.profile))
            config_path = stack_dir / "config.yaml"
            write_config(config_path, resolved)
            token_path = stack_dir / "token"
            write_text(token_path, token + "\n")
            token_path.chmod(0o600)

            env = _child_env(token)
            redis_url = _start_redis(cfg, env, stack_dir, stoppers)
            if cfg.features.store == "redis":  # the materialisation step: once per run, before any replica serves
                from real.features import materialise_for_run

                materialise_for_run(cfg.features, redis_url, env.get(REDIS_PASSWORD_ENV))  # ConfigError naming the URL
            replica_urls = [f"http://{url_host(replica_host)}:{p}" for p in replica_ports]
            gateway_url = f"http://{url_host(gateway_host)}:{gateway_port}"
            logs = [stack_dir / f"replica-{r}.log" for r in range(cfg.replicas)] + [stack_dir / "gateway.log"]
            names = [f"replica {r}" for r in range(cfg.replicas)] + ["gateway"]
            starter = _ReplicaStarter(config_path, stack_dir, replica_host, env, replica_command, start_timeout_s,
                                      grace_s, spawner, grpc=grpc)
            stack = RunningStack(gateway_url, replica_urls, token, procs, run_dir=None if temp else base, logs=logs,
                                 replica_logs=logs[:-1], _starter=starter, redis_url=redis_url)
            if grpc:
                stack.grpc_gateway_url = f"{url_host(gateway_host)}:{gateway_grpc_port}"
                stack.replica_grpc_urls = [f"{url_host(replica_host)}:{p}" for p in replica_grpc_ports]

            deadline = time.monotonic() + start_timeout_s
            for r, port in enumerate(replica_ports):
                argv = replica_command(config_path, r, port, replica_host)
                if grpc:
                    argv += ["--grpc-port", str(replica_grpc_ports[r])]
                procs.append(_spawn(argv, logs[r], env))
            stack.replicas.extend(procs)
            wait_ready(names[:-1], replica_urls, procs, logs[:-1], deadline)
            gw_argv = gateway_command(config_path, gateway_port, gateway_host, replica_urls) + list(gateway_args)
            if grpc:
                gw_argv += ["--grpc-port", str(gateway_grpc_port)]
            procs.append(_spawn(gw_argv, logs[-1], env))
            if cfg.pattern == "async":  # the workers load the model while the gateway starts
                stack.worker_logs = [stack_dir / f"worker-{i}.log" for i in range(cfg.async_jobs.workers)]
                stack.workers = [_spawn(worker_command(config_path, i), log, env) for i, log in enumerate(stack.worker_logs)]
                procs.extend(stack.workers)
                stack.logs.extend(stack.worker_logs)
            wait_ready(names[-1:], [gateway_url], procs[cfg.replicas:cfg.replicas + 1], logs[cfg.replicas:cfg.replicas + 1],
                       deadline)
            if stack.workers:
                wait_workers(cfg, stack.workers, stack.worker_logs, env, deadline)
            yield stack
    finally:
        stop_all(procs, grace_s)  # replicas added at run time included: they are in procs too
        spawner.shutdown(wait=True)  # only now: the children it forked die with their forking thread
        for stop in reversed(stoppers):
            stop()
        if temp:
            shutil.rmtree(base, ignore_errors=True)
