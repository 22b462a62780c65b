"""Every import of the project's own modules names a module and a name that exist.

Imports inside functions run only on the paths that need them (the GPU benchmarks import vLLM-side
helpers lazily), so a rename can leave one broken that no CPU test executes: the first H200 run of
``bench.vllm_archs`` this way died on ``bench.vllm_gpu``, a module renamed long before. This reads
the source instead of running it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "bench")


def module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def defined_names(tree: ast.Module) -> set[str] | None:
    """Names bound at a module's top level (inside top-level if/try blocks too); None when the
    module defines ``__getattr__`` (any name may resolve)."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return None if "__getattr__" in names else names


def absolute(node: ast.ImportFrom, path: Path) -> str | None:
    if node.level == 0:
        return node.module
    pkg = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        pkg = path.relative_to(ROOT).parts[:-1]
    base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    return ".".join([*base, *([node.module] if node.module else [])])


def own_imports() -> list[tuple[Path, int, str, str | None]]:
    """(file, line, module, name or None) for every import of a project module."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    mod = absolute(node, path)
                    if mod and mod.split(".")[0] in PACKAGES:
                        found += [(path, node.lineno, mod, a.name) for a in node.names]
                elif isinstance(node, ast.Import):
                    found += [(path, node.lineno, a.name, None) for a in node.names
                              if a.name.split(".")[0] in PACKAGES]
    return found


def unresolved() -> list[str]:
    bad, cache = [], {}
    for path, line, mod, name in own_imports():
        where = f"{path.relative_to(ROOT)}:{line}"
        target = module_file(mod)
        if target is None:
            bad.append(f"{where}: no module {mod}")
            continue
        if name is None or name == "*" or module_file(f"{mod}.{name}") is not None:
            continue
        if target not in cache:
            cache[target] = defined_names(ast.parse(target.read_text()))
        names = cache[target]
        if names is not None and name not in names:
            bad.append(f"{where}: {mod} has no {name}")
    return bad


def test_the_checker_sees_imports_inside_functions() -> None:
    found = {(p.name, m, n) for p, _, m, n in own_imports()}
    assert ("vllm_archs.py", "bench.vllm_bench.common", "request") in found  # a lazy import in a function
    assert len(found) > 200


def test_every_own_import_resolves() -> None:
    bad = unresolved()
    if bad:
        pytest.fail("imports that would fail when their code runs:\n" + "\n".join(bad))
