"""Lower layers never import higher ones (docs/architecture.md).

Layers, bottom to top:

0. ``pxestack`` (the version only), ``pxestack._types``, ``pxestack._records``,
   ``pxestack._memo``, ``pxestack.errors``, ``pxestack.paths``,
   ``pxestack._fs`` (durable file writes), ``pxestack._malloc`` (the process's malloc
   arenas)
1. ``pxestack.wire`` (bytes <-> values; the only place dpkt may be imported)
2. sans-IO cores: ``pxestack.dhcp.*`` and ``pxestack.tftp.*`` except ``protocol``, plus
   ``pxestack.http.ipxe``, ``pxestack.explain`` (capture analysis) and ``pxestack.bootevents``
   (the boot-step recorder the servers feed)
3. Twisted adapters: ``pxestack.dhcp.protocol``, ``pxestack.tftp.protocol`` and
   ``pxestack.tftp.transport``, the rest of
   ``pxestack.http``, ``pxestack.netif``, ``pxestack.ra``; ``pxestack.simulate`` (the
   simulated machines: an asyncio client that speaks only the wire)
4. composition: ``pxestack.config``, ``pxestack.service``, ``pxestack.extensions`` (the
   extension API)
5. ``pxestack.provision``
6. ``pxestack.app``, ``pxestack.tap``, ``pxestack.cli``, ``pxestack.dashboard``, the twistd
   dropin
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pxestack"

SANS_IO_EXCEPTIONS = {"pxestack.dhcp.protocol", "pxestack.tftp.protocol",
                      "pxestack.tftp.transport"}


def layer_of(module: str) -> int | None:
    """The layer number of a pxestack module, or None for modules outside pxestack."""
    if module in ("pxestack", "pxestack._types", "pxestack._records", "pxestack._memo",
                  "pxestack.errors", "pxestack.paths", "pxestack._fs", "pxestack._malloc"):
        return 0
    adapter_prefixes = tuple(m + "." for m in SANS_IO_EXCEPTIONS)
    if module in SANS_IO_EXCEPTIONS or module.startswith(adapter_prefixes):
        return 3
    prefixes = [
        ("pxestack.wire", 1),
        ("pxestack.dhcp", 2),
        ("pxestack.tftp", 2),
        ("pxestack.http.ipxe", 2),
        ("pxestack.explain", 2),
        ("pxestack.bootevents", 2),
        ("pxestack.http", 3),
        ("pxestack.netif", 3),
        ("pxestack.ra", 3),
        ("pxestack.testing", 3),
        ("pxestack.simulate", 3),
        ("pxestack.config", 4),
        ("pxestack.service", 4),
        ("pxestack.extensions", 4),
        ("pxestack.metrics", 4),
        ("pxestack.provision", 5),
        ("pxestack.app", 6),
        ("pxestack.__main__", 6),
        ("pxestack.tap", 6),
        ("pxestack.cli", 6),
        ("pxestack.dashboard", 6),
    ]
    for prefix, layer in prefixes:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    if module.startswith("pxestack"):
        raise AssertionError(f"{module} has no layer: add it to tests/test_layering.py")
    return None


def module_name(path: Path) -> str:
    """The dotted module name of a file under the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    """Every absolute module name *path* imports, with its line number."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from pxestack import tftp" imports the submodule pxestack.tftp
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names
                         if layer_of_safe(f"{target}.{alias.name}") is not None
                         and target == "pxestack")
    return found


def layer_of_safe(module: str) -> int | None:
    """layer_of, but None for names that are not modules."""
    try:
        return layer_of(module)
    except AssertionError:
        return None


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_imports(path: Path) -> None:
    name = module_name(path)
    own = layer_of(name)
    assert own is not None
    violations = []
    for lineno, target in imported_modules(path, name):
        other = layer_of_safe(target)
        if other is not None and other > own:
            violations.append(f"{path.name}:{lineno} imports {target} (layer {other} > {own})")
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dpkt_only_in_wire(path: Path) -> None:
    name = module_name(path)
    if name.startswith("pxestack.wire"):
        return
    bad = [t for _, t in imported_modules(path, name) if t == "dpkt" or t.startswith("dpkt.")]
    assert not bad, f"{name} imports dpkt; only pxestack.wire may"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_database_driver_below_composition(path: Path) -> None:
    """psycopg (the PostgreSQL stores) is imported from the composition layer up, never by
    a codec, a sans-IO core (the shared-lease claims included) or an adapter."""
    name = module_name(path)
    layer = layer_of(name)
    if layer is None or layer >= 4:
        return
    bad = [t for _, t in imported_modules(path, name)
           if t.split(".")[0] in ("psycopg", "psycopg_pool")]
    assert not bad, f"{name} (layer {layer}) imports {bad[0]}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sans_io_cores_do_not_import_twisted(path: Path) -> None:
    name = module_name(path)
    if layer_of(name) not in (0, 1, 2):
        return
    bad = [
        t for _, t in imported_modules(path, name)
        if t.split(".")[0] in ("twisted", "socket", "time", "asyncio", "selectors")
    ]
    assert not bad, f"{name} is below the adapter layer but imports {bad}"


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The rule itself is tested: a wire module importing the service layer is caught."""
    fake = PACKAGE / "wire" / "_probe_upward.py"
    assert layer_of("pxestack.wire._probe_upward") == 1
    assert layer_of("pxestack.service") == 4
    src = tmp_path / "probe.py"
    src.write_text("from pxestack.service import build_service\nimport pxestack.provision\n")
    targets = [t for _, t in imported_modules(src, "pxestack.wire.probe")]
    assert "pxestack.service" in targets and "pxestack.provision" in targets
    assert not fake.exists()


def test_no_init_in_twisted_plugins() -> None:
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert (ROOT / "twisted" / "plugins" / "pxestack_plugin.py").exists()
