import ast
import subprocess
import sys

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


def test_no_import_cycle_between_rerankit_modules():
    from pathlib import Path

    root = Path(rerankit.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {
            node.module.split(".")[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("rerankit.")
            and node.module.count(".") == 1
        }

    def reaches(start, goal, seen=()):
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt)))
            for nxt in graph.get(start, ())
        )

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == []
