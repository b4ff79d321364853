"""The rooms keep their rules (docs/architecture.md): read from each module's own import statements (AST), so a
violation anywhere in a file, even inside a function, fails here."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> module prefixes it must never import
FORBIDDEN = {
    "core": ("gradio", "argparse", "sailscope.cli", "sailscope.ui", "sailscope.extension",
             "comfy", "comfy_extras", "modules", "backend", "ldm_patched", "nodes", "folder_paths"),
    "ui": ("argparse", "sailscope.cli", "sailscope.extension", "comfy", "modules", "backend"),
    "extension": ("argparse", "sailscope.cli"),
}


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute names of every import in ``path`` (relative imports resolved against its package)."""
    package = ".".join(("sailscope",) + path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return out


def _violations(room: str) -> list[str]:
    bad = []
    for path in _modules(room):
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[room]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_only_what_it_may(room):
    assert _modules(room), f"no modules found under {room}/"
    assert _violations(room) == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The oracle for the checker itself: a local ``import argparse`` and a relative import of the CLI are caught."""
    fake = tmp_path / "core"
    fake.mkdir()
    (fake / "x.py").write_text("def f():\n    import argparse\n    from ..cli import main\n", encoding="utf-8")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _violations("core") == ["core/x.py:2 imports argparse", "core/x.py:3 imports sailscope.cli",
                                       "core/x.py:3 imports sailscope.cli.main"]
    finally:
        ROOT = saved


def test_cli_commands_each_have_their_module():
    """One module per command, each with the two-function contract, all under cli/."""
    from sailscope.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module.startswith("sailscope.cli."), name
        source = (ROOT / (module.removeprefix("sailscope.").replace(".", os.sep) + ".py")).read_text(encoding="utf-8")
        tree = ast.parse(source)
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"add_arguments", "run"} <= functions, module
