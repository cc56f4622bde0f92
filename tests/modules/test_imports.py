"""The import rule of `sidecar/__init__.py`, checked: every module under sidecar/ is parsed
with `ast`, and an import of a module in the same or a higher layer fails the test."""

from __future__ import annotations

import ast
from pathlib import Path

import sidecar

PACKAGE = Path(sidecar.__file__).parent
# Lowest first. `sidecar` is the package's own __init__ (the version); a package (probes,
# store) is one unit: its modules may import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sidecar", "limits", "logs", "peers"),
    ("checks", "result"),
    ("config_errors", "state"),
    ("config_sources", "fleet", "store"),
    ("config", "snapshot"),
    ("metrics",),
    ("monitor", "probes", "witness"),
    ("scheduler", "server", "sync", "warmstart", "watch", "witnesses"),
    ("app", "fleetcli"),
    ("daemon",),
    ("main",),
    ("__main__",),
)
LAYER = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def sentence() -> str:
    """The table as `sidecar/__init__.py` words it."""
    return " < ".join(", ".join(layer) for layer in LAYERS)


def unit(module: str) -> str:
    """The unit of a dotted module name: `sidecar.store.client` -> `store`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    """`sidecar/store/client.py` -> `sidecar.store.client`; a package's __init__ -> the
    package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every sidecar module `source` (the text of `module`) imports, at any depth of the
    file (function bodies and TYPE_CHECKING blocks count too)."""
    here = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                # `from sidecar import logs` imports a module; `import __version__` a name.
                out.append(full if _is_module(full) else base)
    return [name for name in out if name == "sidecar" or name.startswith("sidecar.")]


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports of `module` that break the rule (or name a unit the table lacks)."""
    own = unit(module)
    found = []
    for name in imported(source, module, is_package=is_package):
        target = unit(name)
        if target == own and own != "sidecar":
            continue  # a package's modules import each other
        if own not in LAYER or target not in LAYER:
            found.append(f"{module} imports {name}: add the unit to the table")
        elif LAYER[target] >= LAYER[own]:
            found.append(f"{module} imports {name} (layer {LAYER[target]} >= {LAYER[own]})")
    return found


def test_the_sentence_is_the_table() -> None:
    """sidecar/__init__.py words exactly this test's table."""
    doc = " ".join((sidecar.__doc__ or "").split())
    assert f"lowest first: {sentence()} (" in doc, sentence()


def test_every_module_is_in_the_table() -> None:
    """A new module must be given a layer before it can pass."""
    units = {unit(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert units == set(LAYER), units ^ set(LAYER)


def test_no_module_imports_against_the_rule() -> None:
    """Every import under sidecar/ points to a lower layer (or within its own package)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        found += violations(source, module_name(path), is_package=path.name == "__init__.py")
    assert found == []


def test_an_upward_import_is_rejected() -> None:
    """The check can fail: checks importing the monitor (upward), state importing
    config_errors (the same layer), a relative upward import and one in a function body are
    each caught; downward and intra-package imports pass."""
    assert violations("from sidecar.monitor import Monitor\n", "sidecar.checks")
    assert violations("import sidecar.config_errors\n", "sidecar.state")
    assert violations("from .sync import Syncer\n", "sidecar.snapshot")
    assert violations("def f():\n    from sidecar import app\n", "sidecar.config")
    assert violations("from sidecar.store import HealthStore\n", "sidecar.fleet")
    assert not violations("from sidecar.checks import Check\n", "sidecar.state")
    assert not violations("from sidecar import __version__, logs\n", "sidecar.app")
    assert not violations("from sidecar.store.errors import Unavailable\n", "sidecar.store.client")
    assert not violations("from . import convex\n", "sidecar.probes", is_package=True)
