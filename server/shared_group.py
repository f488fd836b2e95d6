"""Served models on one shared base (``--merge``): one worker whose rounds mix their requests.

The models of a group keep their own names, settings, metrics, queue limits and reloads
(``served_models.ServedModel``), but their requests go to one ``InferenceWorker``, each
model's through a lane of its own (``worker.Lane``). A round so holds requests for different
adapters and scores their pairs in shared padded batches (``rerankit.mixed_batches``): in one
forward pass where peft mixes the adapters, else one pass per adapter within the round. Each
model turns its logits into scores as it would alone (its windows, ensemble, calibration).

A reload reads the model's folder onto the same base, under a fresh adapter name, and warms
it beside the version in service (``SharedBase.reload``); once the swap is made and the
requests still on the old version are done, its adapter is deleted between two rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rerankit.errors import ModelLoadError
from rerankit.mixed_batches import score_together, shared_base_of
from rerankit.server.settings import ServerSettings
from rerankit.server.worker import InferenceWorker, Lane

log = logging.getLogger(__name__)


class SharedGroup:
    """The worker of the served models that score through one ``SharedBase``."""

    def __init__(self, shared, settings: ServerSettings, cross_batching: bool) -> None:
        self.shared = shared
        self.worker = InferenceWorker(
            self._score,
            max_queue_pairs=settings.max_queue_pairs,
            cross_batching=cross_batching,
            batch_wait_ms=settings.batch_wait_ms,
            max_pairs_per_round=settings.max_pairs_per_round,
        )
        self._started = self._stopped = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.worker.start()

    def stop(self) -> None:
        """Stop the worker once (every model of the group asks at shutdown)."""
        if self._started and not self._stopped:
            self._stopped = True
            self.worker.stop()

    def lane(self, reranker, on_batch: Callable[[int, int], None]) -> Lane:
        """The way into this group's worker for the requests scored by ``reranker``."""
        return self.worker.add_lane(reranker, on_batch)

    def reload(self, reranker, warm: Callable, **load_options):
        """The model that ``reranker`` serves read again from its folder onto this base, warmed
        by ``warm(reranker) -> reranker``; raises (nothing changed) when it does not load."""
        adapter = reranker.model.name
        run = next((name for name, used in self.shared.adapters.items() if used == adapter), None)
        if run is None:
            raise ModelLoadError(f"the shared base has no run whose adapter is {adapter}: nothing to reload")
        fresh, _ = self.shared.reload(run, warm, **load_options)
        return fresh

    def retire(self, reranker) -> None:
        """Delete the adapter of a version no request uses any more, between two rounds (a
        request that just went away may still have pairs in the round being scored)."""

        def delete() -> None:
            self.shared.delete_adapter(reranker.model.name)
            log.info("adapter %s deleted (replaced by a reload)", reranker.model.name)

        self.worker.call_between_rounds(delete)

    def _score(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        instructions: Sequence[str | None] | None = None,
        *,
        models: Sequence,
        groups: Sequence[int] | None = None,
    ) -> np.ndarray:
        """One row per pair, (logit, windows scored), the pairs of every model together; with
        ``groups`` (no cross-batching), each run of pairs (a request's chunk) on its own."""
        if groups is not None:
            starts = np.concatenate([[0], np.cumsum(groups)]).astype(int)
            return np.concatenate(
                [
                    self._score(
                        queries[a:b],
                        docs[a:b],
                        None if instructions is None else instructions[a:b],
                        models=models[a:b],
                    )
                    for a, b in zip(starts[:-1], starts[1:])
                ]
            )
        rows: dict = {}  # reranker -> its pairs' positions in the round
        for i, reranker in enumerate(models):
            rows.setdefault(reranker, []).append(i)
        parts = [
            (
                reranker,
                [queries[i] for i in where],
                [docs[i] for i in where],
                None if instructions is None else [instructions[i] for i in where],
            )
            for reranker, where in rows.items()
        ]
        out = np.empty((len(docs), 2), dtype=np.float64)
        for where, (logits, windows) in zip(rows.values(), score_together(parts)):
            out[where, 0], out[where, 1] = logits, windows
        return out


def shared_groups(
    rerankers: Mapping[str, object], settings_of: Callable[[str], ServerSettings], cross_batching: Callable
) -> dict:
    """A ``SharedGroup`` for the rerankers that score through one SharedBase; by model name
    (models of a merged or compiled model have none)."""
    by_base: dict[int, list[str]] = {}
    for name, reranker in rerankers.items():
        shared = shared_base_of(reranker)
        if shared is not None:
            by_base.setdefault(id(shared), []).append(name)
    groups = {}
    for names in by_base.values():
        first = settings_of(names[0])
        mixes = all(cross_batching(settings_of(name), rerankers[name]) for name in names)
        group = SharedGroup(shared_base_of(rerankers[names[0]]), first, mixes)
        groups.update(dict.fromkeys(names, group))
    return groups
