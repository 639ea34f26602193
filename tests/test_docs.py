"""The docs stay true to the tree: every file or folder they name in backticks exists."""

from __future__ import annotations

import re

import pytest

from tests.paths import REPO

DOCS = ["docs/architecture.md", "docs/studies.md", "README.md"]
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
