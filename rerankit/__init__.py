"""rerankit: train a cross-encoder reranker with LoRA/QLoRA and serve it.

    import rerankit
    result = rerankit.fit("configs/train_qlora.yaml", output_dir="outputs/run1")
    reranker = rerankit.Reranker.load(result.output_dir)
    reranker.rerank("who founded CMU?", docs, top_k=5)

Heavy modules (torch, transformers, peft) load on first use of a name that needs them,
so ``import rerankit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rerankit.errors import ConfigError, DataError, MissingExtraError, ModelLoadError, RerankitError

__version__ = "0.1.0"

_LAZY = {
    "fit": "rerankit.training",
    "FitResult": "rerankit.training",
    "Reranker": "rerankit.inference",
    "RerankResult": "rerankit.inference",
    "RerankResults": "rerankit.inference",
    "TrainConfig": "rerankit.config",
    "load_config": "rerankit.config",
    "QueryRecord": "rerankit.data",
    "Doc": "rerankit.data",
    "read_records": "rerankit.data",
    "score_file": "rerankit.bulk",
}

__all__ = sorted(
    [
        "ConfigError",
        "DataError",
        "MissingExtraError",
        "ModelLoadError",
        "RerankitError",
        "__version__",
        *_LAZY,
    ]
)

if TYPE_CHECKING:  # pragma: no cover
    from rerankit.bulk import score_file
    from rerankit.config import TrainConfig, load_config
    from rerankit.data import Doc, QueryRecord, read_records
    from rerankit.inference import Reranker, RerankResult, RerankResults
    from rerankit.training import FitResult, fit


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rerankit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
