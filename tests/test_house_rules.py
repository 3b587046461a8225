"""The house rules of ARCHITECTURE.md, read from the source (``ast``, nothing run).

No module of our packages is longer than ``MAX_MODULE_LINES``. Which package may import which:

- ``protocol`` (the sans-IO core) imports none of pool, worker, node;
- ``toolkit`` (small helpers) imports none of our packages;
- ``node`` imports only protocol and toolkit;
- ``pool`` and ``worker`` never import each other;
- in pool, only ``pool/chain/embedded.py`` imports node; worker imports no node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

OURS = ("protocol", "pool", "worker", "node", "toolkit")
MAX_MODULE_LINES = 450  # the OpenCL kernel source is a .cl file, not a module
EMBEDDED = "pool.chain.embedded"

FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"pool", "worker", "node"},
    "toolkit": {"protocol", "pool", "worker", "node"},
    "node": {"pool", "worker"},
    "pool": {"worker", "node"},
    "worker": {"pool", "node"},
}
EXCEPTIONS = {(EMBEDDED, "node")}
"""(module, package) pairs allowed despite ``FORBIDDEN``."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def modules() -> list[Path]:
    return sorted(p for pkg in OURS if (REPO / pkg).is_dir() for p in (REPO / pkg).rglob("*.py"))


def violations() -> list[str]:
    broken = []
    for path in modules():
        name = module_name(path)
        own = name.split(".")[0]
        for line, target in imported_modules(path):
            top = target.split(".")[0]
            if top in FORBIDDEN[own] and (name, top) not in EXCEPTIONS:
                broken.append(
                    f"{path.relative_to(REPO)}:{line}: {name} imports {target} "
                    f"({own} must not import {top})"
                )
    return broken


def test_the_rules_see_every_package():
    assert {module_name(p).split(".")[0] for p in modules()} >= {
        "protocol",
        "pool",
        "worker",
        "node",
        "toolkit",
    }


def test_relative_imports_are_resolved():
    """The check reads what a relative import really names, in a module and a package."""
    assert "node.config" in {t for _, t in imported_modules(REPO / "node" / "cli.py")}
    assert "pool.chain.base" in {
        t for _, t in imported_modules(REPO / "pool" / "chain" / "__init__.py")
    }
    assert "pool.pplns" in {t for _, t in imported_modules(REPO / "pool" / "ledger" / "blocks.py")}


@pytest.mark.parametrize("package", OURS)
def test_import_rules(package):
    broken = [v for v in violations() if v.split("/")[0] == package]
    assert not broken, "import rules broken:\n" + "\n".join(broken)


def test_only_the_embedded_adapter_imports_the_node():
    importers = sorted(
        module_name(p)
        for p in modules()
        if module_name(p).split(".")[0] == "pool"
        and any(t.split(".")[0] == "node" for _, t in imported_modules(p))
    )
    assert importers == [EMBEDDED], f"pool modules importing node: {importers}"


def test_no_module_is_over_the_size_limit():
    long = {
        str(p.relative_to(REPO)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def test_the_session_only_talks():
    """ARCHITECTURE.md: ``Session`` keeps the stream and the dispatch; the rest lives in its
    collaborators (handlers, inbox, job feed, watchdog, lease), so it stays short."""
    lines = len((REPO / "pool" / "session.py").read_text().splitlines())
    assert lines < 300, f"pool/session.py has {lines} lines: move a job into a collaborator"
