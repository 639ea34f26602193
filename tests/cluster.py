"""A real multi-node Ray cluster and an S3 server on one machine, for tests (issue 24).

* :func:`start_head` — ``ray start --head --block`` on 127.0.0.1 (free ports, its own short temp
  dir, token authentication with a token of its own), in a session of its own;
* :func:`start_worker_node` — a second node joining it, run inside
  ``unshare --user --map-root-user --mount --pid --fork --mount-proc --kill-child``, with a tmpfs
  mounted over each ``hide`` folder first: that node (its raylet, its workers, every trial or task
  it runs) sees an empty folder where the head sees the study. The network namespace is shared,
  so it reaches the head at 127.0.0.1. Its pid namespace makes teardown total: killing the
  namespace's first process (``ns_pid``) makes the kernel kill every process in it;
* :func:`namespaces_unavailable` — why such a node cannot be started here (``None`` if it can):
  the one reason a cluster test may skip;
* :func:`connect` — ``ray.init`` of this process against a head (the token in the environment
  while connected, restored after);
* :func:`start_moto_s3` — moto's S3 server (``python -m moto.server``) on 127.0.0.1 at a free port,
  with a bucket, the environment a client needs and a pyarrow filesystem for Ray Tune's
  ``storage_filesystem``;
* fixtures: ``ray_cluster`` (head + worker that cannot see pytest's temp root, this process
  connected), ``ray_cluster_s3`` (the same with a moto S3 server whose environment every node
  and this process have), ``moto_s3`` (the server alone), ``cluster_sizes`` (the nodes' CPUs).

Nothing here calls ``ray stop``: it stops every Ray process of the user on the machine (other
tests', a benchmark's). Each node is stopped by its own processes: SIGTERM to its
``ray start --block`` (which stops its children), then SIGKILL to whatever is left of its process
tree, of its pid namespace, or carries its temp dir on its command line.

See docs/cluster_testing.md for the commands, the environment variables and the limits found.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

# Node-death detection, shortened for tests (Ray 2.60 defaults: a health check every 3000 ms,
# 10000 ms timeout, 5 failures in a row → the node is dead: 15-25 s). Read by the GCS (the head's
# `ray start` passes its environment on); with these a killed raylet is declared dead in ~1.5 s.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}

# `ray start` prints a usage-stats prompt and colour codes otherwise
_QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}

# Where the nodes listen: 127.0.0.1 only. Ray binds its servers to loopback only when a node's
# address is exactly 127.0.0.1 (or localhost, ::1); any other address, even 127.0.0.2, makes the
# raylet, the dashboard agent and the workers listen on every interface. And
# `ray start --node-ip-address=127.0.0.1` / `--address=127.0.0.1:…` are turned into the
# machine's network address (services.resolve_ip_for_localhost) unless Ray's "no clusters"
# switch is off, which only a head accepts (a joining node aborts: "Multi-node Ray clusters are
# not supported"). So: the head with that switch (as study/running/pipeline.py's _loopback_only does
# in-process), the worker node through a `ray start` that keeps the addresses it is given
# (_RAY_KEEP_ADDRESSES). Both nodes then have the address 127.0.0.1: tell them apart by their
# custom resources (node_head / node_worker) or node ids; a driver joins the head (Ray prefers
# the head among the nodes of its address).
HEAD_IP = "127.0.0.1"
WORKER_IP = "127.0.0.1"
_HEAD_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_START_TIMEOUT = 90.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS's pick; a race with other programs is
    possible but unlikely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cmd() -> list[str]:
    """The `ray` CLI of this interpreter (the venv's), whatever is on PATH."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


# `ray start --address=127.0.0.1:PORT` for a joining node: Ray rewrites a loopback address into
# the machine's network address (services.resolve_ip_for_localhost, for the GCS address and for
# --node-ip-address) and the switch that stops it is refused by a joining node. This `ray`
# keeps the addresses it is given; only the `ray start` process is patched, every process it
# starts gets the (kept) addresses as arguments.
_RAY_KEEP_ADDRESSES = (
    "import sys; from ray._private import services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.exit(main())"
)


def _ray_cmd_keep_addresses() -> list[str]:
    return [sys.executable, "-c", _RAY_KEEP_ADDRESSES]


def _node_ports() -> list[str]:
    """Every listening port of a node that has a fixed default, made free ones: two nodes (and
    other tests' sessions) on one machine would otherwise both ask for 52365, 10001, …"""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _with_arg(text: str) -> list[psutil.Process]:
    """This user's processes with ``text`` on their command line (a node's unique temp dir:
    Ray passes the session folder to each of its processes)."""
    me, found = os.getuid(), []
    for p in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            if p.info["uids"] and p.info["uids"].real == me and p.pid != os.getpid():
                if any(text in a for a in (p.info["cmdline"] or [])):
                    found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_all(procs: list[psutil.Process], grace: float) -> None:
    """SIGTERM, ``grace`` seconds, then SIGKILL for what is left."""
    procs = [p for p in procs if p.is_running()]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def _find_child(root_pid: int, name: str, timeout: float) -> psutil.Process:
    """The process called ``name`` below ``root_pid`` (waits for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in _tree(root_pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.name() == name:
                    return p
        time.sleep(0.1)
    raise RuntimeError(f"no {name} process below pid {root_pid} after {timeout:.0f} s")


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


# --- the head ---------------------------------------------------------------------------------


@dataclass
class RayHead:
    """A head node started by :func:`start_head`.

    ``address`` (``127.0.0.1:PORT``) for ``ray.init(address=…)`` / ``--address``; ``token``: the
    cluster's authentication token; :attr:`env`: what a driver process needs to join it;
    ``temp_dir``: its Ray temp dir (logs under ``session_latest/logs``)."""

    address: str
    token: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path
    started_s: float = 0.0  # how long `ray start` took to report the node up
    node_id: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def auth_env(self) -> dict[str, str]:
        """Token authentication, as every node and driver of the cluster needs it."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def env(self) -> dict[str, str]:
        """The environment of a driver subprocess (``python study/run.py --address …``, or
        ``ray.init()`` with no address): the token, ``RAY_ADDRESS``, and Ray's switch that
        keeps 127.0.0.1 as it is (else ``ray.init(address="127.0.0.1:…")`` connects to the
        machine's network address, where nothing listens). Not for a joining node: ``ray
        start --address`` refuses that switch."""
        return {**self.auth_env, "RAY_ADDRESS": self.address, **_HEAD_LOOPBACK}

    def raylet_pid(self) -> int:
        return _find_child(self.proc.pid, "raylet", 10).pid

    def gcs_pid(self) -> int:
        """The head's GCS (``gcs_server``): the cluster's control process."""
        return _find_child(self.proc.pid, "gcs_server", 10).pid

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops the node's processes), then SIGKILL to what
        is left of its tree or names its temp dir."""
        tree = _tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        _kill_all(tree, grace=2)
        _kill_all(_with_arg(str(self.temp_dir)), grace=2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _load_prctl() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here: the forked child must not import or look anything up


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (a killed pytest
    leaves no Ray node or S3 server behind). Linux' PR_SET_PDEATHSIG; tied to the starting
    *thread*: start nodes from the main thread."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _wait_started(proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """`ray start --block` prints 'Ray runtime started.' once its node registered with the GCS."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} not up after {timeout:.0f} s:\n{_tail(log)}")


def start_head(
    num_cpus: int = 1,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    fast_node_death: bool = True,
) -> RayHead:
    """``ray start --head --block`` bound to 127.0.0.1 at a free port, ``num_cpus`` CPUs and the
    custom ``resources`` (default ``{"node_head": 1}``), its own temp dir and a fresh token
    (token authentication as Ray 2.59+ does it for the clusters it starts). ``env`` goes to
    the node's processes (every task and trial on it); ``fast_node_death``: the GCS declares a
    dead node dead in ~1.5 s instead of ~15-25 s (:data:`FAST_NODE_DEATH`)."""
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )

    token = generate_new_authentication_token()
    port = free_port()
    # short: Ray's unix sockets live below it and a socket path has at most 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    log = temp_dir / "ray_start.log"
    cmd = [
        *_ray_cmd(), "start", "--head", "--block",
        f"--node-ip-address={HEAD_IP}", f"--port={port}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--resources={json.dumps(resources if resources is not None else {'node_head': 1})}",
        "--include-dashboard=false", "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        *_node_ports(),
    ]  # fmt: skip
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        **_QUIET,
        **(FAST_NODE_DEATH if fast_node_death else {}),
        **(env or {}),
        **_HEAD_LOOPBACK,
        # the head's two Prometheus endpoints have fixed default ports (44217, 44227): another
        # Ray session on the machine has them already
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    head = RayHead(f"{HEAD_IP}:{port}", token, temp_dir, proc, log)
    try:
        _wait_started(proc, log, "the Ray head", _START_TIMEOUT)
        head.node_id = _node_id_of(head.raylet_pid())
    except BaseException:
        head.stop()
        raise
    head.started_s = time.monotonic() - t0
    return head


# --- a node in namespaces ---------------------------------------------------------------------

_UNSHARE = [
    "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
    "--kill-child",
]  # fmt: skip

_NS_REASON: list[str | None] = []


def namespaces_unavailable() -> str | None:
    """Why a node with hidden folders cannot run here, or None when it can: runs
    ``unshare --user --map-root-user --mount --pid --fork --mount-proc --kill-child`` with a
    tmpfs mount inside (what :func:`start_worker_node` does). Cached."""
    if _NS_REASON:
        return _NS_REASON[0]
    reason = None
    if shutil.which("unshare") is None:
        reason = "no `unshare` command (util-linux) on this machine"
    else:
        probe = tempfile.mkdtemp(prefix="nsprobe-")
        try:
            Path(probe, "x").write_text("the host's")  # must be hidden under the tmpfs
            r = subprocess.run(
                [*_UNSHARE, "sh", "-c", 'mount -t tmpfs tmpfs "$1" && test ! -e "$1/x"', "sh",
                 probe],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if r.returncode != 0:
                reason = (
                    "unprivileged user+mount+pid namespaces do not work here (`"
                    + " ".join(_UNSHARE)
                    + f" sh -c 'mount -t tmpfs …'` failed: {(r.stderr or r.stdout).strip()}); "
                    "on Debian/Ubuntu see kernel.unprivileged_userns_clone and AppArmor's "
                    "kernel.apparmor_restrict_unprivileged_userns"
                )
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"unshare could not run: {e}"
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    _NS_REASON.append(reason)
    return reason


def require_namespaces() -> None:
    """Skip the calling test, saying why, where :func:`namespaces_unavailable` gives a reason."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)


@dataclass
class RayWorkerNode:
    """A node started by :func:`start_worker_node`.

    ``raylet_pid``: its raylet (``os.kill(raylet_pid, SIGKILL)`` = the node dies: its
    ``ray start --block`` then kills the node's other processes and the namespace ends);
    ``ns_pid``: the namespace's first process (``kill()`` SIGKILLs it: the kernel kills
    everything in the namespace at once, like a machine losing power); ``hidden``: the folders
    it sees as empty tmpfs; ``temp_dir``: its Ray temp dir (on the host's /tmp, so its logs stay
    readable from outside; the node itself does not use the head's)."""

    proc: subprocess.Popen  # the `unshare` process
    ns_pid: int
    raylet_pid: int
    temp_dir: Path
    hidden: list[Path]
    log: Path
    node_id: str = ""
    started_s: float = 0.0

    def alive(self) -> bool:
        return self.ns_pid > 0 and psutil.pid_exists(self.ns_pid) and self.proc.poll() is None

    def kill_raylet(self) -> float:
        """SIGKILL the raylet; returns the time of the kill (``time.time()``)."""
        if self.raylet_pid <= 0:
            raise RuntimeError("this node has no raylet pid (it did not start)")
        os.kill(self.raylet_pid, signal.SIGKILL)
        return time.time()

    def kill(self) -> float:
        """SIGKILL the whole namespace (every process of this node at once); returns the time."""
        if self.ns_pid > 0:  # (never 0: os.kill(0, …) is this process group)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.ns_pid, signal.SIGKILL)
        return time.time()

    def stop(self) -> None:
        if self.alive():  # graceful first: `ray start --block` stops its children on SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.ns_pid, signal.SIGTERM)
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.wait_procs([psutil.Process(self.ns_pid)], timeout=10)
        self.kill()
        _kill_all(_tree(self.proc.pid), grace=2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        _kill_all(_with_arg(str(self.temp_dir)), grace=2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_worker_node(
    head: RayHead,
    hide: list[str | Path],
    num_cpus: int = 1,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
    ip: str = WORKER_IP,
    temp_root: str | Path = "/tmp",
) -> RayWorkerNode:
    """A node joining ``head`` (``ray start --address … --block``) inside user+mount+pid
    namespaces, with an empty tmpfs over each folder of ``hide`` (each must exist): its
    processes cannot see what the head has there. ``resources`` default ``{"node_worker": 1}``;
    ``env`` goes to its processes. Its Ray temp dir is a new folder in ``temp_root``, which
    must stay visible (to hide all of /tmp, pass another ``temp_root``). Returns once
    `ray start` reports the node registered with the head's GCS."""
    reason = namespaces_unavailable()
    if reason:
        raise RuntimeError(reason)
    hidden = [Path(h).resolve() for h in hide]
    for h in hidden:
        if not h.is_dir():
            raise ValueError(f"hide: {h} is not a folder")
    temp_dir = Path(tempfile.mkdtemp(prefix="rayw-", dir=temp_root))
    for h in hidden:
        if temp_dir == h or h in temp_dir.parents:
            raise ValueError(f"hide: {h} would hide the node's own temp dir {temp_dir}")
    log = temp_dir / "ray_start.log"
    ray_start = [
        *_ray_cmd_keep_addresses(), "start", f"--address={head.address}", "--block",
        f"--node-ip-address={ip}", f"--num-cpus={num_cpus}", "--num-gpus=0",
        f"--resources={json.dumps(resources if resources is not None else {'node_worker': 1})}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        *_node_ports(),
    ]  # fmt: skip
    # sh: mount the tmpfs over each hidden folder, then become `ray start` (the namespace's
    # first process: when it exits, the kernel kills what is left in the namespace)
    script = 'for d in "$@"; do mount -t tmpfs -o mode=0755 tmpfs "$d" || exit 97; done; exec '
    script += shlex.join(ray_start)
    cmd = [*_UNSHARE, "sh", "-c", script, "sh", *map(str, hidden)]
    full_env = {**os.environ, **_QUIET, **(env or {}), **head.auth_env}
    full_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a joining node refuses it
    full_env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,  # unshare --kill-child passes it on: SIGKILL
        )
    node = RayWorkerNode(proc, 0, 0, temp_dir, hidden, log)
    try:
        _wait_started(proc, log, "the Ray worker node", _START_TIMEOUT)
        node.ns_pid = _first_child(proc.pid)
        node.raylet_pid = _find_child(proc.pid, "raylet", 10).pid
        node.node_id = _node_id_of(node.raylet_pid)
    except BaseException:
        node.ns_pid = node.ns_pid or _first_child(proc.pid)
        node.stop()
        raise
    node.started_s = time.monotonic() - t0
    return node


def _first_child(pid: int) -> int:
    try:
        kids = psutil.Process(pid).children()
        return kids[0].pid if kids else 0
    except psutil.NoSuchProcess:
        return 0


def _node_id_of(raylet_pid: int) -> str:
    """The node id a raylet was started with (``--node_id=…`` on its command line)."""
    for a in psutil.Process(raylet_pid).cmdline():
        if a.startswith("--node_id="):
            return a.split("=", 1)[1]
    return ""


# --- this process as a driver -----------------------------------------------------------------


def _refresh_ray_auth() -> None:
    """Make this process's Ray re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN (both are cached in C++
    after the first ``ray.init``)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def connect(head: RayHead, **init_kwargs: Any) -> Iterator[Any]:
    """``ray.init(address=head.address)`` in this process, the head's token in the environment
    and 127.0.0.1 kept as it is (:attr:`RayHead.env`); ``ray.shutdown()`` and the environment
    restored afterwards."""
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        raise RuntimeError("a Ray session is already running in this process")
    env = {**head.auth_env, "RAY_ADDRESS": head.address}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _refresh_ray_auth()
    # what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does in a new process (read when Ray is imported)
    switch = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        init_kwargs.setdefault("logging_level", "WARNING")
        try:
            ctx = ray.init(address=head.address, **init_kwargs)
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = switch
        yield ctx
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


def wait_for_nodes(count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The alive nodes once there are ``count`` of them (``ray.nodes()`` records)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) == count:
            return alive
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(alive)} nodes alive after {timeout:.0f} s, not {count}")
        time.sleep(0.2)


def wait_node_dead(node_id: str, timeout: float = 60.0) -> float:
    """Seconds until the GCS lists ``node_id`` dead."""
    import ray

    t0 = time.monotonic()
    while True:
        for n in ray.nodes():
            if n["NodeID"] == node_id and not n["Alive"]:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"node {node_id} still alive after {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Cluster:
    """What the ``ray_cluster`` fixture gives: the two nodes, connected from this process."""

    head: RayHead
    worker: RayWorkerNode
    hidden: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    s3: MotoS3 | None = None  # the ``ray_cluster_s3`` fixture's server

    @property
    def head_node_id(self) -> str:
        return self.head.node_id

    @property
    def worker_node_id(self) -> str:
        return self.worker.node_id


@contextlib.contextmanager
def two_node_cluster(
    hide: list[str | Path],
    head_cpus: int = 1,
    worker_cpus: int = 1,
    env: dict[str, str] | None = None,
    connect_driver: bool = True,
    fast_node_death: bool = True,
) -> Iterator[Cluster]:
    """Head (``{"node_head": 1}``) + worker (``{"node_worker": 1}``, ``hide`` under tmpfs), and
    this process connected to them (``connect_driver``); everything stopped on exit. ``env``
    goes to both nodes' processes (e.g. :attr:`MotoS3.env`)."""
    t0 = time.monotonic()
    head = start_head(num_cpus=head_cpus, env=env, fast_node_death=fast_node_death)
    worker = None
    try:
        worker = start_worker_node(head, hide, num_cpus=worker_cpus, env=env)
        cluster = Cluster(head, worker, [Path(h).resolve() for h in hide])
        cluster.timings = {
            "head_start_s": head.started_s,
            "worker_start_s": worker.started_s,
        }
        if connect_driver:
            with connect(head):
                wait_for_nodes(2)
                cluster.timings["cluster_ready_s"] = time.monotonic() - t0
                yield cluster
        else:
            cluster.timings["cluster_ready_s"] = time.monotonic() - t0
            yield cluster
    finally:
        if worker is not None:
            worker.stop()
        head.stop()


# --- S3 ---------------------------------------------------------------------------------------


@dataclass
class MotoS3:
    """moto's S3 server started by :func:`start_moto_s3`.

    ``endpoint``: ``http://127.0.0.1:PORT``; ``bucket``; ``env``: the variables a client needs
    (boto3 and pyarrow's ``FileSystem.from_uri`` / Ray Tune's plain ``storage_path="s3://…"``
    read the endpoint from ``AWS_ENDPOINT_URL_S3``; ``pyarrow.fs.S3FileSystem()`` does not: use
    :meth:`filesystem`)."""

    endpoint: str
    bucket: str
    proc: subprocess.Popen
    log: Path
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    own_log_dir: bool = False  # start_moto_s3 made the log folder: stop() removes it

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            # no instance-metadata lookups (seconds of timeouts off EC2)
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, prefix: str = "") -> str:
        """``s3://bucket/prefix``: Ray Tune's ``storage_path`` on its own (every process that
        touches the storage — driver, and each node's trials — then needs :attr:`env`)."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def tune_storage(self, prefix: str = "") -> dict[str, Any]:
        """``RunConfig(**s3.tune_storage("exp"))``: the filesystem travels with the trials (no
        environment needed on the nodes). With a ``storage_filesystem`` Ray wants the path
        without the ``s3://`` scheme: ``bucket/prefix``."""
        return {
            "storage_path": f"{self.bucket}/{prefix}".rstrip("/"),
            "storage_filesystem": self.filesystem(),
        }

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` on this server (picklable: Ray ships it to the trials)."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            endpoint_override=self.endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in the bucket."""
        out: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def stop(self) -> None:
        _kill_all(_tree(self.proc.pid), grace=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.own_log_dir:
            shutil.rmtree(self.log.parent, ignore_errors=True)


def start_moto_s3(bucket: str = "study", log_dir: str | Path | None = None) -> MotoS3:
    """``python -m moto.server -H 127.0.0.1 -p PORT`` (a free port; retried on a port race),
    waits until it answers, creates ``bucket``."""
    own = log_dir is None
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="moto-"))
    last = ""
    for _ in range(3):
        port = free_port()
        log = log_dir / f"moto_{port}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **_QUIET}, preexec_fn=_die_with_parent,
            )  # fmt: skip
        s3 = MotoS3(f"http://127.0.0.1:{port}", bucket, proc, log, own_log_dir=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"{s3.endpoint}/moto-api/", timeout=1).read()
                s3.client().create_bucket(Bucket=bucket)
                s3.own_log_dir = own
                return s3
            except OSError:
                time.sleep(0.1)
        last = _tail(log)
        s3.stop()
    if own:
        shutil.rmtree(log_dir, ignore_errors=True)
    raise RuntimeError(f"moto's S3 server did not start:\n{last}")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A fresh moto S3 server with the bucket ``study`` (stopped after the test)."""
    s3 = start_moto_s3("study", tmp_path_factory.mktemp("moto"))
    try:
        yield s3
    finally:
        s3.stop()


@pytest.fixture
def cluster_sizes() -> dict[str, int]:
    """The nodes' CPUs for ``ray_cluster`` / ``ray_cluster_s3`` (default 1 each); a test sets
    them with ``@pytest.mark.parametrize("cluster_sizes", [{"head_cpus": 2}])``."""
    return {}


@pytest.fixture
def ray_cluster(
    cluster_sizes: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Head + worker node, this process connected; the worker sees pytest's whole temp root
    (``tmp_path`` and every other ``tmp_path_factory`` folder) as an empty tmpfs. Skips, saying
    why, only where unprivileged namespaces are not available."""
    require_namespaces()
    with two_node_cluster([tmp_path_factory.getbasetemp()], **cluster_sizes) as cluster:
        yield cluster


@pytest.fixture
def ray_cluster_s3(
    cluster_sizes: dict[str, int],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    """``ray_cluster`` with a moto S3 server (``cluster.s3``, bucket ``study``) whose
    :attr:`MotoS3.env` every node and this process have: ``storage_path="s3://study/…"`` works
    as it is. The server is started first and stopped last."""
    require_namespaces()
    s3 = start_moto_s3("study", tmp_path_factory.mktemp("moto"))
    try:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        hide = [tmp_path_factory.getbasetemp()]
        with two_node_cluster(hide, env=s3.env, **cluster_sizes) as cluster:
            cluster.s3 = s3
            yield cluster
    finally:
        s3.stop()
