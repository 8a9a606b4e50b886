"""Dependencies flow one way: runtime/ reads bundles and samples; it never imports export/ (which writes
bundles) or train/ (which makes models). Checked by parsing every runtime module's imports."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("precipfast.export", "precipfast.train", "export", "train")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package this file installs as
                names.append("precipfast.runtime" + ("." + node.module if node.module else ""))
            else:
                names.append(node.module or "")
                names += [f"{node.module}.{a.name}" for a in node.names if node.module == "precipfast"]
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "runtime").rglob("*.py")), ids=lambda p: p.name)
def test_runtime_imports_neither_export_nor_train(path):
    bad = [n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from precipfast.train.loop import train\n    from precipfast import export\n")
    assert "precipfast.train.loop" in _imports(p) and "precipfast.export" in _imports(p)
