"""What `pip install 'kaelum[store]'` installs is enough for the store and the ingester."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN = {"kaelum", "store", "ingest", "train", "ui"}


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _imported_top_levels(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN - {"__future__"}


def test_every_module_the_store_and_ingester_import_is_declared_by_the_store_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"]) | _requirement_names(project["optional-dependencies"]["store"])
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for folder in ("store", "ingest"):
        for module in sorted(_imported_top_levels(REPO / folder)):
            names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            if not names & declared:
                missing[f"{folder}: import {module}"] = sorted(names)
    assert not missing, f"imported but not declared in kaelum[store] or the base dependencies: {missing}"
