"""The package's import structure, read from its source with `ast`: no circles, no import up the layers, and no
project import hidden in a function body unless it keeps a heavy optional dependency lazy."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "endprompt_ray"
# Bottom to top: a module may import its own subpackage and anything in a lower layer, nothing above.
LAYERS = [
    {"errors", "resources", "plotting"},
    {"method", "rope", "corpora"},
    {"models"},
    {"config"},
    {"runtime"},
    {"data"},
    {"eval"},
    {"training"},
    {"plan"},
    {"jobs"},
    {"longrope", "sweeps"},
    {"cli"},
    {"__main__"},
]
# (importing module, imported module): function-body imports that keep a heavy optional dependency lazy
LAZY = {("endprompt_ray.eval.ruler.runner", "endprompt_ray.runtime.ray_session")}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def project_imports(name: str, path: Path):
    """(imported module, in a function body?) for every import of a project module, resolved to the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("endprompt_ray"):
                        yield resolve(alias.name), in_function
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.startswith("endprompt_ray"):
                    for alias in child.names:  # `from pkg import module` imports the module
                        yield resolve(f"{base}.{alias.name}"), in_function
            yield from visit(child, nested)

    yield from ((target, nested) for target, nested in visit(ast.parse(path.read_text()), False)
                if target and target != name)


GRAPH = {name: list(project_imports(name, path)) for name, path in MODULES.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module}: its subpackage {top!r} is in no layer of tests/test_layout.py; add it")


def test_every_subpackage_has_a_layer():
    assert {layer(m) for m in MODULES if m != "endprompt_ray"}


def test_no_import_points_up_the_layers():
    upward = [f"{m} -> {t}" for m, edges in GRAPH.items() if m != "endprompt_ray" for t, _ in edges
              if t != "endprompt_ray" and t.split(".")[:2] != m.split(".")[:2] and layer(t) >= layer(m)]
    assert not upward, "imports into the same or a higher layer:\n" + "\n".join(upward)


def test_no_import_circles():
    edges = {m: {t for t, _ in out} for m, out in GRAPH.items()}
    state: dict[str, int] = {}
    found = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not found, "import circles:\n" + "\n".join(found)


def test_project_imports_are_at_module_level_unless_listed_as_lazy():
    hidden = sorted(f"{m} -> {t}" for m, out in GRAPH.items() for t, nested in out if nested and (m, t) not in LAZY)
    assert not hidden, "project imports inside function bodies:\n" + "\n".join(hidden)


@pytest.mark.parametrize("module,target", sorted(LAZY))
def test_each_lazy_import_says_why(module, target):
    source = MODULES[module].read_text()
    line = next(ln for ln in source.splitlines() if "import" in ln and target.rsplit(".", 1)[-1] in ln
                and ln.startswith((" ", "\t")))
    index = source.splitlines().index(line)
    context = "\n".join(source.splitlines()[max(0, index - 2): index + 1])
    assert "#" in context, f"{module}: the lazy import of {target} needs a comment saying why"
