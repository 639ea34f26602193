"""The docs stay true to the tree: every file or folder they name in backticks exists; the
cluster page's YAML, shell scripts and commands parse (nothing there is run: no Kubernetes or
SLURM here)."""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

import pytest
import yaml

from tests.paths import REPO

DOCS = ["docs/architecture.md", "docs/studies.md", "docs/cluster.md", "README.md"]
PATH = re.compile(r"`((?:model|study|tests|benchmarks|search_spaces|configs|docs)/[\w./-]*)`")


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_the_doc_names_exists(doc: str) -> None:
    text = (REPO / doc).read_text()
    named = sorted(set(PATH.findall(text)))
    assert named, f"{doc} names no path (the pattern is stale)"
    missing = [p for p in named if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_the_architecture_page_names_every_module() -> None:
    """A newcomer finds every module of model/ and study/ on the page (its file, or its
    package's folder with the file names listed)."""
    text = (REPO / "docs/architecture.md").read_text()
    absent = []
    for path in sorted([*REPO.glob("model/**/*.py"), *REPO.glob("study/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" and rel.count("/") > 1 and f"{path.parent.name}/" in text:
            continue
        if rel in text or (f"{path.parent.relative_to(REPO).as_posix()}/" in text
                           and f"`{path.name}`" in text):
            continue
        if path.name.startswith("synth") and "synth*.py" in text:
            continue
        absent.append(rel)
    assert not absent, f"docs/architecture.md does not say where these live: {absent}"


# --- docs/cluster.md: what can be checked without a cluster ---------------------------------

CLUSTER = REPO / "docs" / "cluster.md"


def _blocks(lang: str) -> list[str]:
    """The page's fenced blocks of ``lang``."""
    return re.findall(rf"^```{lang}\n(.*?)^```", CLUSTER.read_text(), flags=re.M | re.S)


def _joined(text: str) -> str:
    """Shell text with its continuation lines joined."""
    return text.replace("\\\n", " ")


def _ray_manifests() -> dict[str, dict[str, Any]]:
    docs = [d for block in _blocks("yaml") for d in yaml.safe_load_all(block) if d]
    return {d["kind"]: d for d in docs}


def _groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _study_commands(text: str) -> list[list[str]]:
    """Every ``python …study/run.py …`` command in shell ``text``, as its arguments."""
    found = re.findall(r"python \S*study/run\.py[^;&|\n']*", _joined(text))
    return [shlex.split(cmd, comments=True)[2:] for cmd in found]


def test_the_cluster_page_kuberay_manifests_have_what_the_study_needs() -> None:
    """yaml.safe_load of every yaml block: a RayCluster and a RayJob (ray.io/v1) with head and
    GPU worker groups of one image, AWS_* from a Secret on every pod, the data at /data on every
    pod, token authentication, and a RayJob entrypoint that runs the study with S3 storage."""
    kinds = _ray_manifests()
    assert {"RayCluster", "RayJob"} <= set(kinds), sorted(kinds)
    for kind in ("RayCluster", "RayJob"):
        doc = kinds[kind]
        assert doc["apiVersion"] == "ray.io/v1", kind
        spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["authOptions"]["mode"] == "token", kind
        images = set()
        for group in _groups(spec):
            assert isinstance(group["rayStartParams"], dict), kind
            pod = group["template"]["spec"]
            container = pod["containers"][0]
            images.add(container["image"])
            assert any("secretRef" in e for e in container["envFrom"]), (kind, container)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/data" in mounts and mounts["/data"] in {v["name"] for v in pod["volumes"]}
        assert len(images) == 1, images
        for worker in spec["workerGroupSpecs"]:
            assert worker["groupName"] and worker["replicas"] >= 1
            limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert float(limits["nvidia.com/gpu"]) >= 1, limits
    job = kinds["RayJob"]["spec"]
    assert job["submissionMode"] == "K8sJobMode"
    entrypoint = job["entrypoint"]
    assert "study/run.py" in entrypoint and "--storage s3://" in entrypoint
    r = subprocess.run(["bash", "-n", "-c", entrypoint], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_cluster_page_shell_blocks_are_valid_bash() -> None:
    blocks = _blocks("bash")
    assert any(b.startswith("#!/bin/bash\n#SBATCH") for b in blocks), "the sbatch script"
    for block in blocks:
        r = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert r.returncode == 0, (block[:300], r.stderr)


def test_every_ray_start_flag_on_the_cluster_page_exists() -> None:
    """The flags of each ``ray start`` line, against this Ray's own ``ray start`` command."""
    from ray.scripts.scripts import start

    known = {o for p in start.params for o in (*p.opts, *p.secondary_opts)}
    commands = re.findall(r"ray start[^;&|\n]*", _joined("\n".join(_blocks("bash"))))
    assert len(commands) >= 4, commands
    for cmd in commands:
        flags = {a.split("=", 1)[0] for a in shlex.split(cmd, comments=True) if a[:2] == "--"}
        assert flags <= known, (cmd, flags - known)


def test_every_study_command_on_the_cluster_page_parses() -> None:
    """Each ``python study/run.py …`` of the page (shell blocks and the RayJob's entrypoint)
    parses with the study's own parser; a resume carries none of the flags --resume refuses."""
    from study.cli.args import build_parser

    texts = [*_blocks("bash"), _ray_manifests()["RayJob"]["spec"]["entrypoint"]]
    commands = [argv for text in texts for argv in _study_commands(text)]
    assert len(commands) >= 7, commands
    for argv in commands:
        args = build_parser().parse_args(argv)  # (an unknown flag or a bad value: SystemExit)
        assert args.address, argv
        if args.resume:
            assert not (args.data or args.overrides or args.seeds or args.full), argv
        else:
            assert args.data and args.space == "ablation", argv
