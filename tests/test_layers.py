"""Imports point down only (DESIGN.md, "Layers"), and the pure core does no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each package, and the packages above it that it must never import.
FORBIDDEN_ABOVE = {
    "oplog": {"epoch", "materializer", "peer", "devtools"},
    "epoch": {"materializer", "peer", "devtools"},
    "materializer": {"peer", "devtools"},
    # The runtime never imports the tooling (launchers, chaos, bench, dev): the CLI
    # finds `oplog dev` and `oplog bench` through entry points.
    "peer": {"devtools"},
}
PURE_CORE = [
    "oplog/hlc.py",
    "oplog/op.py",
    "oplog/codec.py",
    "oplog/schema.py",
    "oplog/convert.py",
    "epoch/config.py",
    "epoch/assign.py",
    "epoch/assigned.py",
    "materializer/plan.py",
    "materializer/prepare.py",
    "materializer/schema_change.py",
    "materializer/column_steps.py",
    "materializer/metadata.py",
    "materializer/strategy.py",
    "materializer/strategies/*.py",
]
IO_MODULES = {"nats", "sqlite3", "doltlite", "pymysql"}
# The one import that points up: `python -m oplog` (and the `oplog` script) hands the
# command line over to peer.cli, lazily, inside a function, so that importing any oplog
# module never imports peer (decisions.md #39).
ALLOWED_UPWARD = {("oplog/__main__.py", "peer.cli")}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in ``path``, relative ones resolved."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ROOT).parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                # `from .. import x` imports a module (or package) called x.
                found.extend((node.lineno, ".".join([*base, alias.name])) for alias in node.names)
    return found


def violations(paths: list[Path], forbidden: set[str], allowed: Collection[tuple[str, str]] = ()) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module!r}"
        for path in paths
        for line, module in imported_modules(path)
        if module.split(".")[0] in forbidden and (str(path.relative_to(ROOT)), module) not in allowed
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN_ABOVE))
def test_a_package_does_not_import_the_layers_above_it(package: str) -> None:
    paths = sorted((ROOT / package).rglob("*.py"))
    assert paths, f"no modules found under {package}/"

    bad = violations(paths, FORBIDDEN_ABOVE[package], ALLOWED_UPWARD)

    assert not bad, f"{package}/ must not import {sorted(FORBIDDEN_ABOVE[package])}:\n" + "\n".join(bad)


# Inside materializer/, the data path's stages, lowest first: the pure core and shared
# leaves (files directly in materializer/), where epochs are written (backends), how a
# database starts (bootstrap), the commit loop (commit), and what is built on committed
# epochs (agreement: hashes, verdicts, verify; read: SQL at an epoch, change feeds).
# Each imports only its own stage and those below it.
MATERIALIZER_STAGES = ["backends", "bootstrap", "commit", "agreement", "read"]


def stage_of(module: str) -> int | None:
    """The stage index of a ``materializer.*`` module (-1: the core files), None if not one."""
    parts = module.split(".")
    if parts[0] != "materializer" or len(parts) < 2:
        return None
    return MATERIALIZER_STAGES.index(parts[1]) if parts[1] in MATERIALIZER_STAGES else -1


def test_materializer_stages_import_only_stages_below_them() -> None:
    paths = sorted((ROOT / "materializer").rglob("*.py"))
    bad = []
    for path in paths:
        own = stage_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for line, module in imported_modules(path):
            other = stage_of(module)
            if other is not None and own is not None and other > own:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module!r}")
    assert not bad, f"materializer stages point down ({' < '.join(MATERIALIZER_STAGES)}):\n" + "\n".join(bad)


def test_the_one_upward_import_is_made_only_when_the_command_line_runs() -> None:
    for name, module in sorted(ALLOWED_UPWARD):
        tree = ast.parse((ROOT / name).read_text())
        lazy = {
            node.module
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
            if isinstance(node, ast.ImportFrom)
        }
        assert module in lazy, f"{name} must import {module} inside a function, not at module level"
        top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        assert all(module not in [getattr(n, "module", None), *(a.name for a in n.names)] for n in top_level)

    # And so importing every oplog module leaves peer (and the layers between) unloaded.
    modules = sorted(f"oplog.{p.stem}" for p in (ROOT / "oplog").glob("*.py") if p.stem != "__init__")
    probe = f"import sys; import {', '.join(modules)}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'peer', 'materializer', 'epoch'}}))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_the_pure_core_imports_neither_nats_nor_a_database_driver() -> None:
    paths = sorted({path for pattern in PURE_CORE for path in ROOT.glob(pattern)})
    assert len(paths) >= len(PURE_CORE), "a pure-core module listed here is missing"

    bad = violations(paths, IO_MODULES)

    assert not bad, "the pure core must do no I/O:\n" + "\n".join(bad)


def test_the_checker_names_the_offending_file_and_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake oplog module that reaches up into the materializer, three ways.
    package = tmp_path / "oplog"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text(
        "import os\nimport materializer.plan\nfrom epoch import assign\nfrom .. import peer\nfrom . import hlc\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)

    assert violations([package / "bad.py"], FORBIDDEN_ABOVE["oplog"]) == [
        "oplog/bad.py:2 imports 'materializer.plan'",
        "oplog/bad.py:3 imports 'epoch'",
        "oplog/bad.py:4 imports 'peer'",
    ]
