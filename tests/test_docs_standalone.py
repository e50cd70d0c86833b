"""The docs stand alone: every file docs/architecture.md names is in the repository, and no page
sends the reader outside it (to a sibling checkout) or to a file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))

# A repository path in backticks: has a slash, starts with a top-level folder of the repo.
_CODE_PATH = re.compile(r"`((?:kaelum|store|ingest|train|tests|benchmarks|docs|examples)/[\w./<>*-]*)`")
_DOC_REF = re.compile(r"(?<![\w/.])((?:docs/)?[\w-]+\.md)\b")


def _exists(ref: str) -> bool:
    pattern = re.sub(r"<[^>]+>", "*", ref.rstrip("/"))
    return any(REPO.glob(pattern)) if "*" in pattern else (REPO / pattern).exists()


def test_every_path_the_architecture_page_names_exists():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = _CODE_PATH.findall(text)
    docs = [d if d.startswith("docs/") or d == "README.md" else f"docs/{d}" for d in _DOC_REF.findall(text)]
    assert len(paths) > 10 and len(docs) > 5  # the page does name its modules and sibling docs
    missing = [p for p in paths + docs if not _exists(p)]
    assert missing == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_no_page_points_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert "../" not in text, f"{page.name} points outside the repository"
    assert "store/README" not in text and "shared/DESIGN.md" not in text


def test_the_training_commands_run_from_a_checkout():
    # In a checkout of Kaelum ./store is the `store` package's source folder, which the store
    # refuses to lay a store out in; the README and docs/training.md use ./traces instead.
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    assert "--store ./store" not in text and 'store="./store"' not in text
    assert "--store ./traces" in text
