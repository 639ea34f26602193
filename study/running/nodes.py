"""Before the first trial, every node that will run trials checks what it will read (issue 24).

A Ray task pinned to each alive node (``NodeAffinitySchedulingStrategy``, not soft) computes the
content digest of every dataset the trials read (``model.pretraining.data_fingerprint``: the
annotation files by content, the images by name and size) and looks for the study's storage.
A node whose data is missing or differs from the driver's, or that cannot see a study folder
used as storage (a cluster without a shared filesystem), stops the study before any trial with
one line naming the node, the path and the fix — instead of trials that fail, or worse train on
other data, on that node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from study.layout import MANIFEST, StudyError
from study.running.storage import STORAGE_FILE, Storage

Log = Callable[[str], None]


def _node_view(
    datasets: list[str], study_manifest: str | None, storage_uri: str | None
) -> dict[str, Any]:
    """Ray task: this node's digest of each dataset ("" = the embedded one, generated here if
    absent), whether it sees the study folder (when that is the storage) and whether it reaches
    the remote storage (its ``storage.json``, pushed by the driver first)."""
    import ray

    from model.data.embedded import embedded_dataset_dir
    from model.pretraining.sources import data_fingerprint

    digests: dict[str, str] = {}
    for data in datasets:
        try:
            path = Path(data) if data else embedded_dataset_dir(progress=False)
            digests[data] = data_fingerprint(path)
        except Exception as e:  # noqa: BLE001  (the node's own reason, reported by the driver)
            digests[data] = f"unreadable: {e}"
    sees = None if study_manifest is None else Path(study_manifest).is_file()
    reach = None
    if storage_uri is not None:
        try:
            reach = Storage(storage_uri, Path("/")).exists(STORAGE_FILE)
        except Exception as e:  # noqa: BLE001  (reported with the node's name)
            reach = f"{type(e).__name__}: {e}"
    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "digests": digests, "sees_study": sees, "reach": reach}


def check_nodes(datasets: Sequence[str], storage: Storage, log: Log) -> None:
    """Run :func:`_node_view` on every alive node and compare with the driver's own view."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from model.data.embedded import embedded_dataset_dir
    from model.pretraining.sources import data_fingerprint

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    if len(nodes) < 2:
        return  # one machine: the driver's own data check covers it
    wanted = sorted(set(datasets))
    ours = {d: data_fingerprint(Path(d) if d else embedded_dataset_dir(progress=False))
            for d in wanted}
    manifest = None if not storage.local else str(storage.study_dir / MANIFEST)
    task = ray.remote(num_cpus=0)(_node_view)
    refs = {
        n["NodeID"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(wanted, manifest, None if storage.local else storage.uri)
        for n in nodes
    }
    address = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    for node_id, ref in refs.items():
        view = ray.get(ref, timeout=600)
        where = f"node {node_id[:12]} ({address[node_id]})"
        if view["sees_study"] is False:
            raise StudyError(
                f"{where} cannot see the study folder {storage.study_dir}, which is the study's "
                "storage: on a cluster without a shared filesystem pass --storage "
                "s3://bucket/prefix (or gs://…, or a path every node mounts); see docs/cluster.md"
            )
        if view["reach"] not in (None, True):
            why = "it is not there" if view["reach"] is False else view["reach"]
            raise StudyError(
                f"{where} cannot reach the study's storage {storage.uri} ({why}): give every "
                "node the same credentials (AWS_* / GOOGLE_* variables, AWS_ENDPOINT_URL for an "
                "S3-compatible server) when it starts; see docs/cluster.md"
            )
        for data in wanted:
            theirs, mine = view["digests"][data], ours[data]
            if theirs != mine:
                shown = data or "the embedded dataset"
                raise StudyError(
                    f"{where}: {shown} differs from the driver's (digest {theirs} there, {mine} "
                    "here): put the same dataset at that path on every node (or a filesystem "
                    "every node mounts), then start the study again"
                )
    log(
        f"nodes: {len(nodes)} nodes see the same data ({', '.join(ours.values())})"
        + ("" if storage.local else f" and reach the storage {storage.uri}")
    )
