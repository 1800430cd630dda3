"""The house keeps its shape: one folder per stage, each module importing only from its own stage and the
ones below it, no two modules importing each other in a circle, README's map naming every folder, and
the command line starting without the heavy libraries. A module that needs something from a higher
stage is in the wrong folder, or that something is."""

import ast
import re
import subprocess
import sys

from tests.conftest import REPO

PACKAGE = REPO / "exatrack"
# Bottom to top: a module may import from its own stage and the stages before it. `exatrack` is the
# package's own __init__ (its version only); `cli` is exatrack/cli.py, on top of everything.
STAGES = ["exatrack", "core", "models", "compress", "evaluate", "score", "publish", "lanes", "cli"]
HEAVY = ("torch", "vllm", "llmcompressor")  # imported inside the commands, so `exatrack --help` is quick


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def imports(module: str) -> set[str]:
    """The package's modules that `module` imports, anywhere in it (inside functions too)."""
    path, found = MODULES[module], set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{parent}.{base}".rstrip(".")
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {name for name in found if name in MODULES} - {module}


GRAPH = {module: imports(module) for module in MODULES}


def test_the_package_holds_only_its_stages_the_command_line_and_a_small_init():
    top = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert top == {"__init__.py", "cli.py", *STAGES[1:-1]}, "exatrack/ holds its stage folders, cli.py and __init__.py"
    for name in STAGES[:-1]:
        init = PACKAGE / "__init__.py" if name == "exatrack" else PACKAGE / name / "__init__.py"
        assert not GRAPH[module_name(init)], f"{init.relative_to(REPO)} imports nothing: a stage is not loaded whole"


def test_no_module_imports_from_a_stage_above_its_own():
    climbs = [f"{a} ({stage(a)}) imports {b} ({stage(b)})" for a, targets in GRAPH.items() for b in sorted(targets)
              if STAGES.index(stage(b)) > STAGES.index(stage(a))]
    assert not climbs, "imports that climb a stage:\n" + "\n".join(climbs)


def test_no_modules_import_each_other_in_a_circle():
    # A package importing its own members (benchmarks/__init__.py registering each benchmark) is the
    # package itself, not a circle.
    graph = {a: {b for b in targets if not b.startswith(a + ".")} for a, targets in GRAPH.items()}
    circles, done = [], set()

    def visit(module, path):
        if module in path:
            circles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "modules importing each other:\n" + "\n".join(circles)


def test_readme_maps_every_folder_and_names_none_that_is_gone():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## How the code is laid out\n(.*?)(?=^## |\Z)", readme, flags=re.S | re.M).group(1)
    named = set(re.findall(r"`((?:exatrack|tests)/[\w./]*)`", section))
    assert [name for name in sorted(named) if not (REPO / name).exists()] == [], "README names what is not there"
    packages = {f"{init.parent.relative_to(REPO)}/" for init in PACKAGE.rglob("__init__.py") if init.parent != PACKAGE}
    assert sorted(packages - named) == [], "README's map leaves these folders out"
    tests = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert tests == set(STAGES[1:-1]), "tests/ holds one folder per stage"


def test_the_command_line_starts_without_the_heavy_libraries():
    loaded = subprocess.run([sys.executable, "-c", "import sys, exatrack.cli; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in loaded if name.split(".")[0] in HEAVY]
