"""The house's one-way staircase (docs/architecture.md), checked over every import of every module, at module
level and inside functions alike: a module imports only its own layer and the layers below it, no import
circle exists anywhere, and project imports inside functions live only where start-up time needs them.

Layers, lowest first. A module's layer is the first whose prefix matches its installed name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders that install as precipfast.* (pyproject's package-dir), and experiments/, which is not installed.
FOLDERS = {"precipfast": "precipfast", "kernels": "precipfast.kernels", "runtime": "precipfast.runtime",
           "verify": "precipfast.verify", "train": "precipfast.train", "export": "precipfast.export",
           "benchmarks": "precipfast.benchmarks", "experiments": "experiments"}
CORE = ("precipfast._version", "precipfast.errors", "precipfast.config", "precipfast.choices", "precipfast.edm",
        "precipfast.unet", "precipfast.denoiser", "precipfast.transform", "precipfast.grid", "precipfast.noise")
LAYERS = (
    ("core", CORE),                                        # the spec: what a model and its noise are
    ("options", ("precipfast.options",)),                  # one settings object per command
    ("kernels", ("precipfast.kernels",)),                  # the sampler's step, fused
    ("files", ("precipfast.runtime.files",)),              # reading inputs, writing outputs
    ("engines", ("precipfast.runtime.engines",)),          # bundles and the engines that run them
    ("sampling", ("precipfast.runtime.sampling",)),        # the ensemble sampler
    ("verify", ("precipfast.verify",)),                    # every score
    ("train", ("precipfast.train",)),                      # making models
    ("export", ("precipfast.export",)),                    # writing bundles
    ("jobs", ("precipfast.jobs", "precipfast.benchmarks", "precipfast.cli", "precipfast")),  # commands, API
    ("experiments", ("experiments",)),                     # measurements of the shipped model
)
# Exceptions to "downwards only": (importer, imported, why). At most two.
EXCEPTIONS: tuple = ()
# Modules that may import project modules inside functions, and why.
LAZY = {
    "precipfast": "the API facade: `import precipfast` must not import torch (PEP 562 __getattr__)",
    "precipfast.cli": "`precipfast --help` and click's usage errors answer before torch is imported",
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            parts = [x for x in p.relative_to(ROOT / folder).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def layer_of(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_layering.py")


def imports(name: str, path: Path, known: dict) -> list[tuple[str, bool, int]]:
    """(imported project module, inside a function, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([child.module] if child.module else []))
                targets = [f"{base}.{a.name}" for a in child.names]
            for t in targets:
                hit = resolve(t)
                if hit and hit != name:
                    out.append((hit, in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return out


KNOWN = modules()
GRAPH = {name: imports(name, path, KNOWN) for name, path in KNOWN.items()}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_imports_go_only_downwards(name):
    here = layer_of(name)
    up = [f"{t} (line {line}, layer {LAYERS[layer_of(t)][0]})" for t, _, line in GRAPH[name]
          if layer_of(t) > here and (name, t) not in {(a, b) for a, b, _ in EXCEPTIONS}]
    assert not up, f"{name} (layer {LAYERS[here][0]}) imports upwards: {up}"


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_project_imports_inside_functions_only_where_start_up_needs_them(name):
    lazy = [f"{t} (line {line})" for t, inside, line in GRAPH[name] if inside]
    assert not lazy or name in LAZY, f"{name} imports inside functions: {lazy}; import at module level"


def test_no_import_circle_anywhere():
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):  # Tarjan 1972, strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in {t for t, _, _ in GRAPH[v]}:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            strongconnect(v)
    assert not circles, f"import circles: {circles}"


def test_at_most_two_exceptions_each_with_its_reason():
    assert len(EXCEPTIONS) <= 2 and all(len(why) > 20 for _, _, why in EXCEPTIONS)


def test_every_module_is_in_a_layer_and_the_check_sees_all_kinds_of_import(tmp_path):
    for name in KNOWN:
        layer_of(name)
    p = tmp_path / "m.py"
    p.write_text("import precipfast.edm\nfrom . import grid\ndef f():\n    from precipfast.train.loop import train\n"
                 "    from precipfast import export\n")
    got = imports("precipfast.m", p, {**KNOWN, "precipfast.m": p})
    assert ("precipfast.edm", False, 1) in got and ("precipfast.grid", False, 2) in got
    assert ("precipfast.train.loop", True, 4) in got and ("precipfast.export", True, 5) in got
