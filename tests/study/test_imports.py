"""The import graph of model/ and study/: no cycle anywhere (imports inside functions count too),
model/ never imports Ray or study/, and study/layout.py and study/files.py import nothing of
study/ (every module takes the folder's names from there)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import REPO

ROOT = REPO
PACKAGES = ("model", "study")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(name: str, path: Path) -> set[str]:
    """Every module an ``import`` / ``from … import`` statement names (relative ones resolved;
    ``from pkg import mod`` names ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    mods = all_modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for target in imported_names(name, path):
            # the module itself, or the package whose __init__ runs first
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        edges[name] = deps
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_walker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_walker_resolves_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import x\nfrom .y import z\nfrom ..w import v\n")
    assert imported_names("pkg.sub.m", f) == {
        "pkg.sub", "pkg.sub.x", "pkg.sub.y", "pkg.sub.y.z", "pkg.w", "pkg.w.v"
    }


def test_no_import_cycle_in_model_or_study():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(n for n in all_modules() if n.startswith("model")))
def test_model_never_imports_ray_or_study(name):
    names = imported_names(name, all_modules()[name])
    bad = sorted(n for n in names if n.split(".")[0] in ("ray", "study"))
    assert not bad, f"{name} imports {bad}: model/ stays free of Ray and of study/"


@pytest.mark.parametrize("name", ["study.layout", "study.files"])
def test_the_foundations_import_nothing_of_study(name):
    assert not {d for d in graph()[name] if d.startswith("study")}


def test_outputs_and_preparation_never_import_upwards():
    """The end of a study does not need the Ray trainable, nor the pipeline the preparation."""
    edges = graph()
    for low, high in [
        ("study.outputs.results", "study.running.trial"),
        ("study.outputs", "study.running.trial"),
        ("study.running.pipeline", "study.running.prepare"),
        ("study.running.progress", "study.running.pipeline"),
        ("study.running.session", "study.running.prepare"),
        ("study.running.trust", "study.running.prepare"),
    ]:
        assert high not in edges[low], f"{low} imports {high}"


def test_no_two_modules_share_a_file_name():
    """A reader tells modules apart by name: model/ and study/ never reuse one (a package's
    __init__ and a __main__ are faces, not names), nor a module a package's name."""
    seen: dict[str, list[str]] = {}
    for name, path in all_modules().items():
        stem = path.parent.name if path.name == "__init__.py" else path.stem
        if path.name == "__main__.py" or name in PACKAGES:
            continue
        seen.setdefault(stem, []).append(name)
    shared = {stem: names for stem, names in seen.items() if len(names) > 1}
    assert not shared, f"modules sharing a name: {shared}"


def test_no_private_name_is_imported_across_modules():
    """``from a import _b`` couples two modules through a name that says "not for you"."""
    found = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not found, found
