"""Run a grid's runs as Ray tasks: ``nlbench grid ... --executor ray --ray-address HEAD:6379``.

:class:`RayExecutor` implements the :class:`nlbench.benchmark.grid.Executor` protocol. Each run is one Ray task
around :func:`nlbench.benchmark.grid.run_one` that reserves ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs;
the task *returns* the record to the driver, which writes it (no shared file system is assumed, but the
payload's ``data_root`` must exist on every node). A task whose worker process or node dies is resubmitted by
Ray up to ``max_retries`` times; an exception raised by the run itself (a user error, a bug) is not retried
and is handed to the driver. Because only the driver writes records, keyed by config hash, a retried run never
produces a second record.

When the driver dies, even by SIGKILL, Ray ends the job and kills the workers running its tasks (measured with
Ray 2.60: within seconds; ``tests/test_ray.py`` checks it), so no run goes on training for nobody.

Connecting never hangs: before :func:`ray.init` the address is resolved the way Ray resolves it and probed
with a plain TCP connect plus an HTTP/2 preface (the GCS is a gRPC server), each bounded by
``connect_timeout_s``, so a wrong host, a closed port or a port owned by another service fails in seconds
with one line, where ``ray.init`` itself would retry for minutes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from nlbench.errors import NLBenchError

#: The HTTP/2 client connection preface followed by an empty SETTINGS frame (RFC 9113, section 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04


def split_host_port(address: str, default_port: int = 6379) -> tuple[str, int]:
    """``"head:6379"`` / ``"ray://head:10001"`` / ``"[::1]:6379"`` / ``"head"`` -> ``(host, port)``."""
    rest = address.split("://", 1)[-1].rstrip("/")
    if rest.startswith("["):  # [IPv6]:port
        host, _, tail = rest[1:].partition("]")
        port_s = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, port_s = rest.split(":")
    else:
        host, port_s = rest, ""
    if not host:
        raise NLBenchError(f"Ray address {address!r} has no host; use HOST:PORT, e.g. 10.0.0.1:6379")
    try:
        port = int(port_s) if port_s else default_port
    except ValueError:
        raise NLBenchError(f"Ray address {address!r} has a bad port; use HOST:PORT, e.g. 10.0.0.1:6379") from None
    if not 0 < port < 65536:
        raise NLBenchError(f"Ray address {address!r} has a bad port; use HOST:PORT, e.g. 10.0.0.1:6379")
    return host, port


def probe_gcs(host: str, port: int, timeout: float) -> None:
    """Raise :class:`NLBenchError` unless ``host:port`` accepts a TCP connection within ``timeout`` seconds and
    answers an HTTP/2 preface with a SETTINGS frame, as every gRPC server (the Ray GCS) does."""
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise NLBenchError(f"cannot resolve the Ray head host {host!r}; check --ray-address") from None
    except TimeoutError:
        raise NLBenchError(f"no answer from the Ray head at {where} within {timeout:g} s; check --ray-address "
                           f"and that `ray start --head` runs there") from None
    except OSError as e:
        raise NLBenchError(f"cannot reach the Ray head at {where} ({e.strerror or e}); check --ray-address and "
                           f"that `ray start --head` runs there") from None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError:
            head = b""
    if len(head) < 9 or head[3] != _H2_SETTINGS:
        raise NLBenchError(f"{where} answers but is not a Ray head (GCS) port; pass the port given to "
                           f"`ray start --head --port` (default 6379)")


def resolve_address(address: str) -> str | None:
    """The ``host:port`` that :func:`ray.init` will connect to for ``address`` (``"auto"`` reads
    ``$RAY_ADDRESS`` or the cluster started last on this machine; a loopback host becomes this node's IP
    unless Ray is told otherwise), or ``None`` when Ray would start a local instance instead."""
    if address.startswith("ray://"):
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this (private) helper: probe what the user gave
        return None if address == "auto" else address
    try:
        return canonicalize_bootstrap_address(address)
    except ConnectionError as e:
        raise NLBenchError(f"no running Ray cluster found for --ray-address {address}: "
                           f"{str(e).splitlines()[0] if str(e) else 'none'}") from None
    except ValueError as e:
        raise NLBenchError(f"bad --ray-address {address!r}: {e}") from None


def adopt_token_auth() -> None:
    """Before connecting to a running cluster, turn on token authentication the way ``ray start`` does: when
    ``RAY_AUTH_MODE`` is unset and a token is available (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``). ``ray.init`` does not (Ray 2.60), so once any local ``ray.init`` has written
    ``~/.ray/auth_token``, a head started with ``ray start`` on that machine requires a token that the driver
    would not send. A Ray without this (private) helper is left as it is."""
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:
        return
    log = logging.getLogger(auth.__name__)
    level = log.level
    log.setLevel(logging.ERROR)  # Ray warns that auth is on; the user gave no sign of wanting to hear it here
    try:
        with contextlib.suppress(Exception):
            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        log.setLevel(level)


def portable_runtime_env() -> dict | None:
    """The Ray runtime environment of each task when the driver runs in portable numerics (``--portable``,
    ``NLBENCH_PORTABLE``): ``NLBENCH_PORTABLE=1`` and the pins (:data:`nlbench.portable.PINS`) as environment
    variables, so Ray starts each run in a worker process whose kernels are pinned before torch loads (Ray merges
    them into a job's own ``env_vars``); ``None`` otherwise."""
    from nlbench import portable

    if not portable.requested():
        return None
    return {"env_vars": {portable.ENV_FLAG: "1", **portable.PINS}}


def nlbench_run(task: Callable[[dict], dict], payload: dict) -> dict:
    """The body of every Ray task (``ray::nlbench_run`` in ``ray status`` and the worker logs)."""
    return task(payload)


class RayExecutor:
    """Execute :func:`~nlbench.benchmark.grid.run_one` payloads as Ray tasks and yield records as they finish.

    ``address``: ``"auto"`` (``$RAY_ADDRESS``, else the cluster last started on this machine), ``"HOST:PORT"``
    of a head's GCS, ``"ray://HOST:PORT"`` (Ray Client, needs ``ray[client]``), or ``None`` to start a local
    Ray instance on this machine. The connection is made here, so a bad address fails before any run is
    claimed. If Ray is already initialised in this process, that connection is used and left open.

    ``cpus_per_run`` / ``gpus_per_run`` are the resources Ray reserves per run (fractional GPUs share a card);
    each run uses ``max(1, int(cpus_per_run))`` torch threads. Runs given ``device="auto"`` without a GPU
    reservation run on the CPU, so they never land on a GPU that Ray has not assigned them. ``max_retries``
    bounds resubmissions after a worker or node died; ``connect_timeout_s`` bounds each connection probe.
    ``task`` replaces ``run_one`` (it must be picklable; tests wrap ``run_one`` to inject crashes).
    """

    def __init__(self, address: str | None = "auto", cpus_per_run: float = 1, gpus_per_run: float = 0,
                 max_retries: int = 3, connect_timeout_s: float = 30, *,
                 task: Callable[[dict], dict] | None = None):
        from nlbench.benchmark.grid import check_executor_options

        check_executor_options(1, cpus_per_run, gpus_per_run)  # finite, in range: one line, as for the CLI
        if max_retries < 0:
            raise NLBenchError(f"max_retries must be non-negative, got {max_retries}")
        if not connect_timeout_s > 0:
            raise NLBenchError(f"connect_timeout_s must be positive, got {connect_timeout_s}")
        try:
            import ray
        except ImportError:
            raise NLBenchError("--executor ray needs Ray: pip install 'nlbench[ray]'") from None
        if task is None:
            from nlbench.benchmark.grid import run_one as task
        self.address = address
        self.cpus_per_run = float(cpus_per_run)
        self.gpus_per_run = float(gpus_per_run)
        self.threads = max(1, int(cpus_per_run))
        self.connect_timeout_s = float(connect_timeout_s)
        self.task = task
        # retry_exceptions=False: only system failures (a dead worker or node) are retried; a run that raises
        # would raise again.
        self._remote = ray.remote(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                  max_retries=max_retries, retry_exceptions=False)(nlbench_run)
        self._pending: dict[Any, dict] = {}
        self._connected = False  # True only if this executor called ray.init (and so must shut it down)
        self.connect()

    def connect(self) -> None:
        """Connect to the cluster (no-op if Ray is initialised) and check one run fits on some node."""
        import ray

        if ray.is_initialized():
            self._check_fits()
            return
        if self.address is None:
            target, init_address = None, "local"  # "local": ignore $RAY_ADDRESS, as asked
        else:
            target, init_address = resolve_address(self.address), self.address
        if target is not None:
            probe_gcs(*split_host_port(target), timeout=self.connect_timeout_s)
            adopt_token_auth()
        try:
            # Worker output stays in the session logs on each node: interleaved into the driver it would
            # tear the progress bar, and a run's failure comes back as its exception anyway.
            ray.init(address=init_address, log_to_driver=False, logging_level=logging.WARNING,
                     **({"include_dashboard": False} if init_address == "local" else {}))
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = ("; if the cluster uses token authentication, give its token in RAY_AUTH_TOKEN or "
                    "RAY_AUTH_TOKEN_PATH") if target is not None else ""
            raise NLBenchError(f"cannot connect to Ray at {self.address or 'a new local instance'}: {first}{hint}") \
                from None
        self._connected = True
        try:
            self._check_fits()
        except BaseException:
            self.close()
            raise

    def _check_fits(self) -> None:
        import ray

        deadline = time.monotonic() + self.connect_timeout_s
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        while not nodes and time.monotonic() < deadline:  # a head's GCS answers before its raylet registers
            time.sleep(0.5)
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= self.cpus_per_run and r.get("GPU", 0) >= self.gpus_per_run for r in nodes):
            return
        largest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
        # Ray would queue an infeasible task forever; say so now instead.
        raise NLBenchError(f"no Ray node can hold one run with {self.cpus_per_run:g} CPUs and "
                           f"{self.gpus_per_run:g} GPUs (largest node: {largest[0]:g} CPUs, {largest[1]:g} GPUs); "
                           f"lower --cpus-per-run/--gpus-per-run")

    def prepare(self, payload: dict) -> dict:
        """The payload as a worker gets it: this executor's thread count, CPU unless a GPU is reserved, and
        ``portable`` when the driver runs in portable numerics."""
        out = {**payload, "threads": self.threads}
        if self.gpus_per_run == 0 and out.get("device", "auto") == "auto":
            out["device"] = "cpu"
        if portable_runtime_env() is not None:
            out["portable"] = True
        return out

    def run(self, payloads: list[dict]) -> Iterator[tuple[dict, dict | BaseException]]:
        """Submit every payload at once (Ray queues what does not fit) and yield ``(payload, record)`` or
        ``(payload, exception)`` in completion order."""
        import ray
        from ray.exceptions import RayTaskError

        if not payloads:
            return
        self.connect()
        runtime_env = portable_runtime_env()
        remote = self._remote if runtime_env is None else self._remote.options(runtime_env=runtime_env)
        for p in payloads:
            self._pending[remote.remote(self.task, self.prepare(p))] = p
        while self._pending:
            ready, _ = ray.wait(list(self._pending), num_returns=1)
            for ref in ready:
                payload = self._pending.pop(ref)
                try:
                    result: dict | BaseException = ray.get(ref)
                except RayTaskError as e:
                    # The run raised: hand over the original exception, whose first line is the message
                    # (the RayTaskError's str is the remote traceback).
                    cause = getattr(e, "cause", None)
                    result = cause if isinstance(cause, BaseException) else e
                except ray.exceptions.RayError as e:  # worker died max_retries + 1 times, node lost, ...
                    result = e
                yield payload, result

    def close(self) -> None:
        """Cancel runs still queued or running (Ctrl-C), and disconnect if this executor connected."""
        import ray

        pending, self._pending = list(self._pending), {}
        if ray.is_initialized():
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        if self._connected:
            self._connected = False
            ray.shutdown()
