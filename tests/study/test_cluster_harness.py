"""The multi-node test harness (tests/cluster.py, issue 24) proven for real: a second Ray node
that cannot see the driver's files, Ray Tune storing on a local S3 server (moto), and a trial
that survives the death of the node it ran on.

Ray, moto, boto3 and pyarrow are dependencies (dev extras for moto/boto3): their absence is a
failure, not a skip. The one skip: a machine without unprivileged user+mount+pid namespaces
(the reason says so). Each test starts its own cluster (~6 s on two cores) and stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from ray import tune

from tests import cluster as harness
from tests.cluster import Cluster, MotoS3, wait_node_dead

# the harness's fixtures, here
cluster_sizes = harness.cluster_sizes
moto_s3 = harness.moto_s3
ray_cluster = harness.ray_cluster
ray_cluster_s3 = harness.ray_cluster_s3

GATE = "cluster-harness-gate"  # a named actor on the head: where the trials say where they are
NAMESPACE = "cluster-harness"


# --- a deterministic trainable ----------------------------------------------------------------


def chain(seed: int, steps: int) -> int:
    """What the trainable computes: a state that depends on every step before (a resumed run
    only ends right if it resumed from the right state)."""
    state = seed
    for i in range(1, steps + 1):
        state = _step(state, i)
    return state


def _step(state: int, i: int) -> int:
    return (state * 1103515245 + 12345 + i) % 2**31


@ray.remote(num_cpus=0)
class Gate:
    """Where the trials report their attempts; a trial asked to hold waits here to be killed."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def arrive(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def seen(self) -> list[dict[str, Any]]:
        return list(self.events)


def counting_trainable(config: dict[str, Any]) -> None:
    """``steps`` reports, each with a checkpoint (the state and the step); resumes from Tune's
    checkpoint. Every result says which node ran it and which step this attempt resumed from.
    ``hold_on``: on that node's first attempt, after the report of that step, tell the gate and
    wait (to be killed)."""
    node = ray.get_runtime_context().get_node_id()
    step, state = 0, config["seed"]
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = json.loads((Path(d) / "state.json").read_text())
        step, state = saved["step"], saved["state"]
    resumed_from, started_at = step, time.time()
    gate = ray.get_actor(GATE, namespace=NAMESPACE) if config.get("gate") else None
    if gate is not None:
        ray.get(gate.arrive.remote({"node": node, "resumed_from": resumed_from, "at": started_at,
                                    "pid": os.getpid(), "copy": config.get("copy")}))  # fmt: skip
    while step < config["steps"]:
        step += 1
        time.sleep(config.get("sleep", 0.0))
        state = _step(state, step)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"step": step, "state": state}))
            tune.report(
                {"step": step, "score": state, "node_id": node, "resumed_from": resumed_from,
                 "started_at": started_at},
                checkpoint=tune.Checkpoint.from_directory(d),
            )  # fmt: skip
        if gate is not None and node == config.get("hold_on") and resumed_from == 0:
            if step == config["hold_at"]:
                ray.get(gate.arrive.remote({"node": node, "holding_at": step, "at": time.time()}))
                time.sleep(600)  # the test kills this node now


def _results(grid: tune.ResultGrid) -> list[dict[str, Any]]:
    out = []
    for r in grid:
        assert r.error is None, r.error
        out.append(r.metrics)
    return out


# --- the tests --------------------------------------------------------------------------------


def test_worker_node_cannot_see_the_drivers_files(ray_cluster: Cluster, tmp_path: Path) -> None:
    """A file the test (the head's side) writes under pytest's temp root exists for a task on the
    head and not for one on the worker; what the worker writes there stays on its tmpfs. Every
    port of both nodes listens on 127.0.0.1 only."""
    secret = tmp_path / "study" / "plan.json"
    secret.parent.mkdir()
    secret.write_text("{}")

    @ray.remote(num_cpus=0)
    def probe(path: str) -> tuple[bool, str]:
        """Whether this node sees ``path``; then it writes ``<node id>.txt`` next to it."""
        node = ray.get_runtime_context().get_node_id()
        seen = os.path.exists(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # (on the worker: in its tmpfs)
        Path(path).with_name(f"{node}.txt").write_text("written by a Ray task")
        return seen, node

    on_head = probe.options(resources={"node_head": 0.01}).remote
    on_worker = probe.options(resources={"node_worker": 0.01}).remote
    (head_sees, head_node), (worker_sees, worker_node) = ray.get(
        [on_head(str(secret)), on_worker(str(secret))]
    )
    assert (head_node, worker_node) == (ray_cluster.head_node_id, ray_cluster.worker_node_id)
    assert head_sees and not worker_sees
    # what the head's task wrote is here; what the worker's wrote stayed in its tmpfs
    assert sorted(p.name for p in secret.parent.iterdir()) == [f"{head_node}.txt", "plan.json"]
    assert ray_cluster.hidden == [tmp_path.parent]  # pytest's temp root (basetemp)

    listening = []
    for root in (ray_cluster.head.pid, ray_cluster.worker.proc.pid):
        for p in psutil.Process(root).children(recursive=True):
            try:
                conns = p.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            listening += [(p.name(), c.laddr.ip) for c in conns if c.status == "LISTEN"]
    assert listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), listening
    print(f"\ncluster start: {ray_cluster.timings}")


def test_tune_on_both_nodes_stores_in_s3(ray_cluster: Cluster, moto_s3: MotoS3) -> None:
    """Two trials, one pinned to each node, storage on the S3 server through a pyarrow
    S3FileSystem: both finish and every result and checkpoint is in the bucket."""
    steps = 3
    trainable = tune.with_resources(
        counting_trainable,
        lambda cfg: tune.PlacementGroupFactory([{"CPU": 1, cfg["node"]: 0.01}]),
    )
    t0 = time.monotonic()
    grid = tune.Tuner(
        trainable,
        param_space={"node": tune.grid_search(["node_head", "node_worker"]), "seed": 7,
                     "steps": steps},
        run_config=tune.RunConfig(name="harness", verbose=0, **moto_s3.tune_storage("runs")),
    ).fit()  # fmt: skip
    took = time.monotonic() - t0
    results = sorted(_results(grid), key=lambda m: m["config"]["node"])
    assert [m["node_id"] for m in results] == [
        ray_cluster.head_node_id, ray_cluster.worker_node_id,
    ]  # fmt: skip
    assert [m["score"] for m in results] == [chain(7, steps)] * 2

    keys = moto_s3.keys("runs/harness/")
    assert any(k.startswith("runs/harness/experiment_state") for k in keys), keys
    trial_dirs = {k.split("/")[2] for k in keys if k.count("/") >= 3}
    assert len(trial_dirs) == 2, keys
    for d in trial_dirs:
        mine = [k for k in keys if k.startswith(f"runs/harness/{d}/")]
        for i in range(steps):
            assert f"runs/harness/{d}/checkpoint_{i:06d}/state.json" in mine, mine
        assert f"runs/harness/{d}/result.json" in mine, mine
    # the checkpoint the worker's trial wrote last holds its final state
    on_worker = next(r for r in grid if r.config["node"] == "node_worker")
    worker_dir = Path(on_worker.path).name  # (the path is bucket/runs/harness/<trial dir>)
    key = f"runs/harness/{worker_dir}/checkpoint_{steps - 1:06d}/state.json"
    final = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=key)
    assert json.loads(final["Body"].read()) == {"step": steps, "state": chain(7, steps)}
    print(f"\nTune on 2 nodes + S3: {took:.1f} s; cluster start: {ray_cluster.timings}")


@pytest.mark.parametrize("cluster_sizes", [{"head_cpus": 2, "worker_cpus": 1}])
def test_killed_worker_node_trial_resumes_on_head(ray_cluster_s3: Cluster) -> None:
    """Two identical trials, one on each node (a placeholder actor takes the head's second CPU
    until the kill); the worker's raylet is SIGKILLed after its trial's checkpoint of step 3:
    Tune restarts that trial from the checkpoint on the head, and it ends with the same final
    result as the undisturbed one. ``storage_path="s3://…"`` as it is (endpoint from the
    environment, on the nodes and here)."""
    cluster = ray_cluster_s3
    assert cluster.s3 is not None
    steps, hold_at = 6, 3
    gate = Gate.options(name=GATE, namespace=NAMESPACE, resources={"node_head": 0.01}).remote()
    ray.get(gate.seen.remote())

    @ray.remote(num_cpus=1, resources={"node_head": 0.01})
    class Placeholder:
        def ready(self) -> bool:
            return True

    placeholder = Placeholder.remote()
    assert ray.get(placeholder.ready.remote())  # the head now has 1 CPU free, the worker 1

    worker = cluster.worker
    killed: dict[str, float] = {}

    def kill_when_held() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if any("holding_at" in e for e in ray.get(gate.seen.remote())):
                break
            time.sleep(0.1)
        else:
            return
        # the report of step 3 returned in the trial: Tune has its checkpoint in storage; the
        # driver registers it with the result it already received
        time.sleep(1.0)
        ray.kill(placeholder)  # the head's second CPU becomes free for the restarted trial
        killed["at"] = worker.kill_raylet()
        killed["dead_after_s"] = wait_node_dead(worker.node_id, timeout=60)

    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    config = {
        "seed": 11, "steps": steps, "sleep": 0.3, "copy": tune.grid_search([0, 1]),
        "gate": True, "hold_on": worker.node_id, "hold_at": hold_at,
    }  # fmt: skip
    t0 = time.monotonic()
    try:
        grid = tune.Tuner(
            tune.with_resources(counting_trainable, {"cpu": 1}),
            param_space=config,
            run_config=tune.RunConfig(
                name="killed",
                storage_path=cluster.s3.url("runs"),
                failure_config=tune.FailureConfig(max_failures=3),
                verbose=0,
            ),
        ).fit()
    finally:
        killer.join(timeout=120)
        events = ray.get(gate.seen.remote())
        ray.kill(gate)
    took = time.monotonic() - t0
    assert "at" in killed, "the worker's trial never held at the step to kill it at"
    results = _results(grid)
    assert [m["score"] for m in results] == [chain(11, steps)] * 2
    assert all(m["step"] == steps for m in results)
    resumed = [m for m in results if m["resumed_from"] > 0]
    undisturbed = [m for m in results if m["resumed_from"] == 0]
    assert len(resumed) == 1 and len(undisturbed) == 1, results
    assert resumed[0]["resumed_from"] == hold_at
    assert resumed[0]["node_id"] == cluster.head_node_id  # the remaining node
    assert resumed[0]["score"] == undisturbed[0]["score"]
    copy = resumed[0]["config"]["copy"]
    attempts = [(e["node"], e["resumed_from"]) for e in events
                if e.get("copy") == copy and "resumed_from" in e]  # fmt: skip
    assert attempts == [(worker.node_id, 0), (cluster.head_node_id, hold_at)], events
    restart_s = resumed[0]["started_at"] - killed["at"]
    assert cluster.s3.keys("runs/killed/")
    print(
        f"\nnode declared dead {killed['dead_after_s']:.1f} s after the raylet's SIGKILL; "
        f"the trial restarted on the head {restart_s:.1f} s after it; Tune run {took:.1f} s; "
        f"cluster start: {cluster.timings}"
    )


# slow (30 s, most of it Ray retrying a wrong token): a driver subprocess joining with the
# head's env is what test_study_cluster.py and test_study_head_lost.py do in the default run
@pytest.mark.slow
def test_a_driver_subprocess_joins_with_the_heads_env(ray_cluster: Cluster) -> None:
    """What a study driver started as a subprocess (``study/run.py --address …``) needs: the
    head's :attr:`~tests.cluster.RayHead.env` (token, address, 127.0.0.1 kept) — and nothing
    more."""
    code = (
        "import ray; ray.init(address=__import__('os').environ['RAY_ADDRESS'], "
        "logging_level='ERROR'); "
        "print(sorted(n['NodeID'] for n in ray.nodes() if n['Alive'])); "
        "print(ray.get_runtime_context().get_node_id())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, **ray_cluster.head.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    nodes, own = r.stdout.strip().splitlines()[-2:]
    assert nodes == str(sorted([ray_cluster.head_node_id, ray_cluster.worker_node_id]))
    assert own == ray_cluster.head_node_id  # a driver on this machine joins the head
    # with another token the cluster refuses it (after ~20 s of retries)
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "RAY_ADDRESS": ray_cluster.head.address, "RAY_AUTH_MODE": "token",
             "RAY_AUTH_TOKEN": "0" * 64, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Authentication token is missing or incorrect" in r.stderr, r.stderr[-2000:]
