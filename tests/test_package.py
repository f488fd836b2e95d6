import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rerankit

pytestmark = pytest.mark.smoke


def loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after ``import <imports>``."""
    code = f"import sys, {imports}; print([m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout)


def test_import_is_light():
    heavy = ("torch", "transformers", "peft", "bitsandbytes", "litestar", "langchain_core", "llama_index")
    assert loaded_after("rerankit", heavy) == []


def test_all_is_complete_and_sorted():
    assert rerankit.__all__ == sorted(rerankit.__all__)
    for name in rerankit.__all__:
        assert getattr(rerankit, name) is not None
    public = {n for n in dir(rerankit) if not n.startswith("_")}
    assert public <= set(rerankit.__all__)
    with pytest.raises(AttributeError):
        _ = rerankit.not_a_name


def test_error_tree():
    for cls in (
        rerankit.ConfigError,
        rerankit.DataError,
        rerankit.ModelLoadError,
        rerankit.MissingExtraError,
    ):
        assert issubclass(cls, rerankit.RerankitError)


def test_inference_imports_no_training_code():
    """Loading and scoring never pull in the QLoRA/LoRA builder or bitsandbytes."""
    inference = "rerankit.inference, rerankit.scoring, rerankit.first_stage, rerankit.held_out"
    training = ("rerankit.model_builder", "rerankit.training", "bitsandbytes", "peft")
    assert loaded_after(inference, training) == []


# The package's source folders, as their import names (see [tool.setuptools] in pyproject.toml).
ROOT = Path(rerankit.__file__).parent.parent
PACKAGES = {"rerankit": "rerankit", "rerankit.server": "server", "rerankit.integrations": "integrations"}


def source_modules() -> dict[str, Path]:
    """Every module of the package by import name; the root ``__init__`` is left out, it only
    re-exports lazily (and any submodule import runs it first anyway)."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            if path.stem != "__init__":
                modules[f"{package}.{path.stem}"] = path
            elif package != "rerankit":
                modules[package] = path
    return modules


def imported_names(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every absolute import in the file, at any depth (``import a.b``
    gives ``("a.b", [])``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports: ``from rerankit.a import f``, ``import
    rerankit.a`` and ``from rerankit import a`` (a module imported by name) all count."""
    modules = source_modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for module, names in imported_names(path):
            for target in [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]:
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def test_no_import_cycle_between_package_modules():
    graph = import_graph()
    # Each way of writing an import is seen.
    assert "rerankit.run_folder" in graph["rerankit.export"]  # from rerankit import run_folder
    assert "rerankit.safe_yaml" in graph["rerankit.config"]  # from rerankit import safe_yaml
    assert "rerankit.server.settings" in graph["rerankit.server.serving"]  # from rerankit.server.settings
    assert "rerankit.server" in graph["rerankit.cli"]  # from rerankit.server import ServerSettings

    def reaches(start, goal, seen=()):
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt)))
            for nxt in graph.get(start, ())
        )

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == []


# Extras a file may import from, besides the core dependencies (the rest must be core).
EXTRAS_OF = {
    "server": {"serve"},
    "integrations/langchain.py": {"langchain"},
    "integrations/llamaindex.py": {"llamaindex"},
    "integrations/backend.py": {"langchain", "llamaindex"},
    "rerankit/runtimes.py": {"openvino", "onnx"},
    # the packaged default backbone, used where installed (else its hub id is loaded)
    "rerankit/loading.py": {"train"},
    "rerankit/pairs_file.py": {"parquet"},
    "rerankit/bulk.py": {"parquet"},
}


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in requirements}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared_where_it_is_used():
    """A package imported by rerankit, its server or its adapters is a dependency of the
    install that runs that code: the core, or the extra of that part."""
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = requirement_names(project["dependencies"])
    extras = {name: requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()}
    distributions = packages_distributions()
    missing = []
    for path in source_modules().values():
        relative = path.relative_to(ROOT).as_posix()
        allowed = core.union(
            *(extras[e] for key, names in EXTRAS_OF.items() if relative.startswith(key) for e in names)
        )
        for module, _ in imported_names(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "rerankit":
                continue
            provided = {canonical(d) for d in distributions.get(top, [top])}
            if not provided & allowed:
                missing.append(f"{relative}: {top} ({', '.join(sorted(provided))})")
    assert sorted(set(missing)) == []


def required_extras(path: Path) -> list[tuple[str, str]]:
    """``(module, extra)`` of every ``require("module", "extra")`` call in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
            and len(node.args) == 2
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
        ):
            found.append((node.args[0].value, node.args[1].value))
    return found


def test_every_required_module_comes_with_the_extra_it_names():
    """``require(module, extra)`` tells the user to install ``rerankit[extra]``: that extra must
    exist and install the module (through another extra it includes, too)."""
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def installs(extra: str) -> set[str]:
        names = set()
        for requirement in extras[extra]:
            included = re.fullmatch(r"rerankit\[([\w,]+)\]", requirement)
            names |= set().union(*map(installs, included.group(1).split(","))) if included else set()
            names |= set() if included else requirement_names([requirement])
        return names

    distributions = packages_distributions()
    calls = [(p, m, e) for p in source_modules().values() for m, e in required_extras(p)]
    assert {"train", "serve"} <= {e for _, _, e in calls}  # the calls are found
    wrong = []
    for path, module, extra in calls:
        top = module.split(".")[0]
        provided = {canonical(d) for d in distributions.get(top, [top])}
        if extra not in extras or not provided & installs(extra):
            wrong.append(f"{path.relative_to(ROOT)}: require({module!r}, {extra!r})")
    assert wrong == []
