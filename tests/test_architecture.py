"""The package tree keeps its shape: imports point down, and only the edges docs/ARCHITECTURE.md names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UTILS = ROOT / "utils"
PACKAGES = sorted(p.name for p in UTILS.iterdir() if (p / "__init__.py").is_file())
MAX_MODULE_LINES = 420


def allowed_edges() -> set[tuple[str, str]]:
    """(from, to) pairs listed between the allowed-imports markers of docs/ARCHITECTURE.md; ``to`` is a package,
    or ``package.module`` where only that module may be imported."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("<!-- allowed-imports:begin -->")[1].split("<!-- allowed-imports:end -->")[0]
    edges = set()
    for line in block.splitlines():
        match = re.match(r"- (\w+) -> ([\w., ]+):", line)
        if match:
            edges |= {(match[1], to.strip()) for to in match[2].split(",")}
    return edges


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
    return out


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "utils" and len(parts) > 1 else None


def test_every_utils_module_is_in_a_package():
    assert sorted(p.name for p in UTILS.glob("*.py")) == ["__init__.py"]
    assert {"common", "data", "model", "parallel", "sampling", "checkpoint", "train", "monitor"} <= set(PACKAGES)


def test_the_architecture_doc_names_only_real_packages():
    edges = allowed_edges()
    assert edges, "no allowed imports found between the markers in docs/ARCHITECTURE.md"
    assert {p.split(".")[0] for edge in edges for p in edge} <= set(PACKAGES)
    modules = [p for _, p in edges if "." in p]
    assert all((UTILS / f"{p.replace('.', '/')}.py").is_file() for p in modules), modules


def test_imports_between_packages_are_the_documented_ones():
    edges, wrong = allowed_edges(), []
    for path in sorted(UTILS.rglob("*.py")):
        here = path.relative_to(UTILS).parts[0]
        for line, module in imports_of(path):
            there = package_of(module)
            if module.split(".")[0] == "scripts":
                wrong.append(f"{path.relative_to(ROOT)}:{line}: imports a script ({module})")
            elif there and there not in (here, "common") and (here, there) not in edges \
                    and (here, ".".join(module.split(".")[1:3])) not in edges:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} -> {there} ({module}) "
                             "is not in docs/ARCHITECTURE.md")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_the_demo_generator_but_the_demo_script():
    users = [f"{path.relative_to(ROOT)}:{line}" for base in (UTILS, ROOT / "scripts") for path in base.rglob("*.py")
             for line, module in imports_of(path)
             if package_of(module) == "demo" and "demo" not in path.relative_to(ROOT).parts
             and path.name != "generate_demo_data.py"]
    assert not users, users


def test_scripts_do_not_import_each_other():
    names = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    wrong = [f"{path.name}:{line}" for path in (ROOT / "scripts").glob("*.py")
             for line, module in imports_of(path) if module.split(".")[0] in names | {"scripts"}]
    assert not wrong, wrong


def late_imports() -> dict[str, str]:
    """Module -> why, for the heavy or optional modules listed between the late-imports markers of
    docs/ARCHITECTURE.md: the only ones a function may import."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("<!-- late-imports:begin -->")[1].split("<!-- late-imports:end -->")[0]
    late = {}
    for line in block.splitlines():
        match = re.match(r"- ([\w, ]+): (.+)", line)
        if match:
            late |= {name.strip(): match[2] for name in match[1].split(",")}
    return late


def load_time_imports(path: Path) -> list[str]:
    """Modules ``path`` imports when it is loaded (outside functions and ``if TYPE_CHECKING:``); for
    ``from utils.x import y`` also ``utils.x.y``, which may be a module."""
    out, todo = [], list(ast.parse(path.read_text(encoding="utf-8")).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or \
                (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            continue
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            todo += list(ast.iter_child_nodes(node))
    return out


def heavy_project_modules(late: set[str]) -> set[str]:
    """The ``utils`` modules that load a late-import module when they are loaded, directly or through others."""
    loads = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): load_time_imports(p)
             for p in UTILS.rglob("*.py")}
    heavy, grew = set(), True
    while grew:
        new = {m for m, imports in loads.items() if m not in heavy
               and any(i.split(".")[0] in late or i in heavy for i in imports)}
        heavy, grew = heavy | new, bool(new)
    return heavy


def test_only_heavy_modules_are_imported_late():
    """A function imports only a module of the late-imports list (docs/ARCHITECTURE.md) or a project module
    that loads one; everything else is imported at the top of the module."""
    late = set(late_imports())
    allowed = late | heavy_project_modules(late)
    wrong = []
    for path in sorted(UTILS.rglob("*.py")):
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                wrong += [f"{path.relative_to(ROOT)}:{line}: {module} is imported inside a function but is neither "
                          "in the late-imports list of docs/ARCHITECTURE.md, nor loads one (import it at the top)"
                          for line, module, loaded in imports_in(func)
                          if module.split(".")[0] not in late and not set(loaded) & allowed]
    assert not wrong, "\n".join(sorted(set(wrong)))


def imports_in(func: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, what it may load) of each import in ``func``: ``from utils.x import y`` loads ``utils.x``
    and, where ``y`` is a module, ``utils.x.y``."""
    out = []
    for node in ast.walk(func):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out.append((node.lineno, module, [module] + [f"{module}.{alias.name}" for alias in node.names]))
    return out


def test_modules_stay_short():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(UTILS.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, long


def test_tests_mirror_every_package():
    missing = [p for p in PACKAGES if not (ROOT / "tests" / p).is_dir() or not any((ROOT / "tests" / p).glob("test_*.py"))]
    assert not missing, f"packages without a tests/<package>/ folder of tests: {missing}"


def import_graph(bases=("utils", "scripts")) -> dict[str, dict[str, int]]:
    """{module: {module it imports: line}} over the project's modules, imports at any depth (a deferred import
    closes a circle as surely as one at the top); ``from package import name`` counts as the module ``name``
    where ``package.name`` is one."""
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for base in bases for p in sorted((ROOT / base).rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, (base, node.module)))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            else:
                continue
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, node.lineno)
    return graph


def import_circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_import_circles_are_found():
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 5}, "d": {"a": 2}}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b": 1}, "b": {}}) == []


def test_no_two_modules_import_each_other():
    """No import circle among the project's modules, directly or through others, deferred imports included."""
    graph = import_graph()
    found = ["; ".join(f"{m}:{line} -> {n}" for m in group for n, line in graph[m].items() if n in group)
             for group in import_circles(graph)]
    assert not found, "import circles (module:line -> what it imports):\n" + "\n".join(found)
