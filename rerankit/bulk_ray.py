"""``rerankit score --engine ray``: the shards of a pairs file scored by a Ray Data actor pool.

The driver plans the file (``rerankit.pairs_file``) and hands Ray only the shards still to
score, as small descriptors; ``map_batches`` runs them through a pool of actors, each of which
loads one ``Reranker`` (on a GPU of its own when the cluster has GPUs), reads its shard's rows
from the input file and scores them with ``rerankit.pairs_file.score_pairs``, as the single
process does, so the scores are the same. The driver saves each shard's scores as they come back, which keeps
``rerankit.bulk``'s resume and atomic output. On a cluster (``address``) every node must read the
input at the same path (a shared filesystem).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rerankit.errors import RerankitError, require
from rerankit.pairs_file import Plan, Shard


class ShardScorer:
    """A Ray Data actor: one ``Reranker``, loaded once, scores whole shards."""

    def __init__(
        self, model: str, load_options: dict, path: str, fmt: str, raw: bool, cross_encoder_score: bool
    ) -> None:
        from rerankit.inference import Reranker

        self.reranker = Reranker.load(model, **load_options)
        self.path, self.fmt, self.raw = path, fmt, raw
        self.cross_encoder_score = cross_encoder_score

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rerankit import pairs_file

        shards, positions, scores = [], [], []
        for values in zip(*(batch[name] for name in _SHARD_FIELDS)):
            shard = Shard(*(int(v) for v in values))
            pairs = pairs_file.read_shard(self.path, self.fmt, shard)
            scores.append(
                pairs_file.score_pairs(
                    self.reranker,
                    pairs,
                    raw=self.raw,
                    path=self.path,
                    cross_encoder_score=self.cross_encoder_score,
                )
            )
            shards.append(np.full(shard.rows, shard.index))
            positions.append(np.arange(shard.rows))
        # One output row per pair: plain columns whatever the shard sizes (a pair's scores in
        # one fixed-width column).
        return {
            "shard": np.concatenate(shards),
            "position": np.concatenate(positions),
            "scores": np.concatenate(scores),
        }


_SHARD_FIELDS = ("index", "start", "rows", "offset", "line")


def ray_scores(
    model: str,
    plan: Plan,
    pending: Sequence[Shard],
    *,
    raw: bool,
    cross_encoder_score: bool,
    load_options: dict,
    address: str | None,
    workers: int | None,
    gpus_per_worker: float | None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(shard index, scores) of each pending shard, in the order they finish."""
    ray = require("ray", "ray")
    require("ray.data", "ray")
    started = not ray.is_initialized()
    if started:  # else the caller's own ray.init stands
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield from _scores(
            ray, model, plan, pending, raw, cross_encoder_score, load_options, workers, gpus_per_worker
        )
    except Exception as exc:
        # An actor's own error (a model that does not load, a bad row) travels wrapped in Ray's
        # exceptions: raise it as it would be raised in one process.
        own = _rerankit_error(exc)
        if own is None or own is exc:
            raise
        raise own from None
    finally:
        if started:
            ray.shutdown()


def _rerankit_error(exc: BaseException) -> RerankitError | None:
    """The RerankitError inside Ray's wrappers of ``exc`` (their causes and arguments), if any."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # a RayTaskError's original exception
        if isinstance(current, RerankitError) and not isinstance(cause, BaseException):
            return current
        todo += [cause, current.__cause__, current.__context__, *current.args]
    return None


def _scores(ray, model, plan, pending, raw, cross_encoder_score, load_options, workers, gpus_per_worker):
    # rerankit.bulk shows its own progress bar; Ray Data's notices only when debugging
    ray.data.DataContext.get_current().enable_progress_bars = False
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    if workers is None:
        workers = int(resources.get("GPU", 0) / gpus_per_worker) if gpus_per_worker else 0
        workers = max(1, workers or int(resources.get("CPU", 1)))
    workers = max(1, min(workers, len(pending)))
    items = [{name: getattr(shard, name) for name in _SHARD_FIELDS} for shard in pending]
    scored = ray.data.from_items(items).map_batches(
        ShardScorer,
        fn_constructor_kwargs={
            "model": str(Path(model).resolve()) if Path(model).exists() else model,
            "load_options": load_options,
            "path": str(Path(plan.path).resolve()),  # actors need not share the driver's cwd
            "fmt": plan.format,
            "raw": raw,
            "cross_encoder_score": cross_encoder_score,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpus_per_worker else 1,
        num_gpus=gpus_per_worker,
    )
    # Rows of a shard may come back split across batches: gather them until the shard is whole.
    width = 2 if cross_encoder_score else 1
    partial: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        for shard, position, scores in zip(batch["shard"], batch["position"], batch["scores"]):
            shard = int(shard)
            rows = plan.shards[shard].rows
            partial.setdefault(shard, np.empty((rows, width), dtype=np.float64))[position] = scores
            filled[shard] = filled.get(shard, 0) + 1
            if filled[shard] == rows:
                yield shard, partial.pop(shard)
                del filled[shard]
