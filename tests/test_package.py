import subprocess
import sys

import pytest

import rerankit

pytestmark = pytest.mark.smoke


def test_import_is_light():
    code = ("import sys, rerankit; heavy = [m for m in ('torch', 'transformers', 'peft', "
            "'bitsandbytes', 'litestar', 'langchain_core', 'llama_index') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_all_is_complete_and_sorted():
    assert rerankit.__all__ == sorted(rerankit.__all__)
    for name in rerankit.__all__:
        assert getattr(rerankit, name) is not None
    public = {n for n in dir(rerankit) if not n.startswith("_")}
    assert public <= set(rerankit.__all__)
    with pytest.raises(AttributeError):
        rerankit.not_a_name


def test_error_tree():
    for cls in (rerankit.ConfigError, rerankit.DataError, rerankit.ModelLoadError,
                rerankit.MissingExtraError):
        assert issubclass(cls, rerankit.RerankitError)
