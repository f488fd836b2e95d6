"""The models one server holds, each with its own worker, and their reload without downtime.

A ``ServedModel`` is a name and the settings its folder loads with; what it serves is one
``LoadedModel`` at a time: the reranker, the request side's tokenizer and the inference worker
that scores for it. A model has its own worker and queue, so one model's load, reload or backlog
never fails another's requests; the models of one shared base (``--merge``) share one worker
whose rounds mix their requests (``shared_group.py``), each with its own queue limit.

A reload loads the folder's current contents on a thread beside the model in service (onto the
shared base, for a model that has one), warms it, and swaps the ``LoadedModel`` in one
assignment on the event loop. A request takes the model in service when it starts and keeps it
to the end: requests in flight finish on the old model, whose worker stops (or whose adapter is
deleted) once the last of them is done. A load that fails leaves the old model serving. One
reload per model runs at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from litestar.exceptions import HTTPException, NotFoundException, ServiceUnavailableException

from rerankit.errors import ModelLoadError, RerankitError, short_reason
from rerankit.mixed_batches import shared_base_of
from rerankit.server.prometheus import ServerMetrics
from rerankit.server.settings import ServerSettings
from rerankit.server.shared_group import SharedGroup, shared_groups
from rerankit.server.text_prep import RequestTokenizer
from rerankit.server.worker import InferenceWorker, Lane

log = logging.getLogger(__name__)
WARMUP_PAIRS = [
    ("warm-up query", "a short warm-up document"),
    ("warm-up query", "a longer warm-up document " * 20),
]


def load_reranker(settings: ServerSettings, reranker=None):
    """The model ``settings`` name (or ``reranker``), warmed up and checked to score finitely."""
    from rerankit.inference import Reranker

    try:
        if reranker is None:
            reranker = Reranker.load(
                settings.model,
                device=settings.device,
                dtype=settings.dtype,
                trust_remote_code=settings.trust_remote_code,
                allow_pickle=settings.allow_pickle,
                long_documents=settings.long_documents,
                prompt=settings.prompt,
                backend=settings.backend,
                allow_failed_gate=settings.allow_failed_gate,
                ensemble=settings.ensemble,
            )
        if settings.max_batch_tokens:
            reranker.max_tokens = settings.max_batch_tokens
        queries, docs = zip(*WARMUP_PAIRS)  # as the model reads them: no first stage needed
        warm = reranker.input_logits(queries, docs)[0]
        # what a request gets: the ensemble's score with its signals, calibrated
        served = reranker.probabilities(reranker.final_scores(warm, reranker.signal_scores(queries, docs)))
    except RerankitError:
        raise
    except Exception as exc:  # whatever else a broken folder raises: one clear line, exit 2
        raise ModelLoadError(f"cannot load {settings.model}: {short_reason(exc)}") from exc
    if not (np.isfinite(warm).all() and np.isfinite(served).all()):
        raise ModelLoadError(f"{settings.model} scores NaN or infinity; refusing to serve it")
    return reranker


def cross_batching(settings: ServerSettings, reranker) -> bool:
    """The setting, or (auto) on only when a pair's score does not depend on its batch
    neighbours (``Reranker.neighbour_independent``)."""
    if settings.cross_batching is not None:
        return settings.cross_batching
    return reranker.neighbour_independent


# Base weights (bytes on disk) from which "auto" shares one copy among the runs of a base on a
# CPU: below it merged copies are cheap to hold and faster (benchmarks/results/adapters.md).
SHARE_FROM_BASE_BYTES = 2_000_000_000


def _base_bytes(base: str) -> int:
    from rerankit.loading import resolve_model_path

    folder = Path(resolve_model_path(base))
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0


def sharing_groups(models: ServedModels, merge: str) -> list[list[ServedModel]]:
    """The served models that load onto one shared base, group by group (``--merge``): LoRA
    run folders of one base read alike (device, dtype, torch). ``never``: every such group,
    even of one run; ``auto``: groups of several runs on a GPU, or of a large base."""
    from rerankit.inference import default_device
    from rerankit.shared_adapters import adapter_base

    if merge == "always":
        return []
    by_base: dict[tuple, list[ServedModel]] = {}
    for served in models:
        settings = served.settings
        if settings.backend not in ("auto", "torch") or settings.dtype == "int8":
            continue
        try:
            base = adapter_base(settings.model)
        except RerankitError:  # a broken manifest: the model's own load reports it
            base = None
        if base is not None:
            by_base.setdefault((base, settings.device, settings.dtype), []).append(served)
    groups = []
    for (base, device, _), group in by_base.items():
        on_cpu = (device or default_device()) == "cpu"
        pays = len(group) > 1 and (not on_cpu or _base_bytes(base[0]) >= SHARE_FROM_BASE_BYTES)
        if merge == "never" or pays:
            groups.append(group)
    return groups


def load_shared(group: list[ServedModel]) -> dict:
    """The rerankers of ``group``, on one copy of their base, warmed; by name."""
    from rerankit.shared_adapters import SharedBase

    first = group[0].settings
    shared = SharedBase.load(
        {served.name: served.settings.model for served in group},
        device=first.device,
        dtype=first.dtype,
        allow_pickle=first.allow_pickle,
        backend="torch",
    )
    return {
        served.name: load_reranker(
            served.settings,
            shared.reranker(
                served.name,
                long_documents=served.settings.long_documents,
                prompt=served.settings.prompt,
                ensemble=served.settings.ensemble,
            ),
        )
        for served in group
    }


def load_models(settings: ServerSettings) -> dict:
    """Every model ``settings`` name, loaded and warmed (runs of one base sharing it, as
    ``settings.merge`` says), by name; the first that fails raises, naming its model."""
    models, _ = served_models(settings)
    named = bool(settings.models)
    rerankers: dict = {}
    for group in sharing_groups(models, settings.merge):
        try:
            rerankers.update(load_shared(group))
        except RerankitError as exc:
            names = ", ".join(served.name for served in group)
            raise ModelLoadError(f"models {names} (one shared base): {exc}") from None
    for served in models:
        if served.name in rerankers:
            continue
        try:
            rerankers[served.name] = load_reranker(served.settings)
        except RerankitError as exc:
            if not named:
                raise
            raise ModelLoadError(f"model {served.name}: {exc}") from None
    return rerankers


def model_facts(reranker) -> dict:
    """What ``GET /v1/models`` tells of a loaded model."""
    from rerankit import run_folder

    source = Path(reranker.source) if reranker.source else None
    base = reranker.source
    if source is not None and run_folder.is_run_folder(source):
        base = run_folder.read_manifest(source).get("base_model", base)
    info = getattr(reranker, "backend_info", None) or {}  # what Reranker.load picked to run
    runtime, precision = info.get("backend"), info.get("precision")
    if runtime is None:  # a reranker made without load: its torch weights tell
        runtime, precision = "torch", str(next(reranker.model.parameters()).dtype).removeprefix("torch.")
    return {
        "base_model": base,
        # one copy of the base with the adapter beside it (rerankit.shared_adapters), or merged
        "shared_base": getattr(reranker.model, "shared", None) is not None,
        "runtime": runtime,
        "precision": precision,
        "max_length": reranker.max_length,
        "calibration": reranker.calibration is not None,
        "ensemble": reranker.ensemble is not None,
        # whether a pair's score is its own whatever shares its batch (cross-request batching's default)
        "neighbour_independent": reranker.neighbour_independent,
    }


class LoadedModel:
    """One loaded version of a model and the worker (and lane in it) that scores with it.
    ``when_unused`` runs on the event loop once the version is replaced and no request holds
    it: it stops the worker of its own, or deletes its adapter from the shared base."""

    def __init__(
        self, reranker, settings: ServerSettings, worker: InferenceWorker, lane: Lane, when_unused: Callable
    ) -> None:
        self.reranker, self.settings = reranker, settings
        self.worker, self.lane, self.when_unused = worker, lane, when_unused
        self.facts = model_facts(reranker)
        self.loaded_at = int(time.time())
        self.request_tokenizer = RequestTokenizer(
            reranker.tokenizer, reranker.max_length, reranker.prompt, reranker.long_documents
        )
        # Requests holding this version; once replaced, when_unused runs when they are done.
        self.users = 0
        self.retired = False

    @classmethod
    def alone(cls, reranker, settings: ServerSettings, on_batch: Callable[[int, int], None]) -> LoadedModel:
        """The version with an inference worker of its own (started)."""
        worker = InferenceWorker(
            # the pairs' instructions come third, only when a round has any
            lambda q, d, *instructions, groups=None: np.column_stack(
                reranker.input_logits(q, d, *instructions, groups=groups)
            ),
            max_queue_pairs=settings.max_queue_pairs,
            cross_batching=cross_batching(settings, reranker),
            batch_wait_ms=settings.batch_wait_ms,
            max_pairs_per_round=settings.max_pairs_per_round,
            on_batch=on_batch,
        )
        worker.start()

        def stop_soon() -> None:  # joining the worker thread blocks: never on the event loop
            asyncio.get_running_loop().run_in_executor(None, worker.stop)

        return cls(reranker, settings, worker, worker.lane, stop_soon)

    @classmethod
    def in_group(
        cls, reranker, settings: ServerSettings, group: SharedGroup, on_batch: Callable[[int, int], None]
    ) -> LoadedModel:
        """The version scored by its shared base's worker, through a lane of its own."""
        group.start()
        return cls(
            reranker, settings, group.worker, group.lane(reranker, on_batch), lambda: group.retire(reranker)
        )

    async def score(
        self, queries, docs, disconnected=None, *, costs=None, instructions=None
    ) -> np.ndarray | None:
        """``InferenceWorker.score`` of the pairs, in this version's lane."""
        return await self.worker.score(
            queries, docs, disconnected, costs=costs, instructions=instructions, lane=self.lane
        )

    @property
    def queued_pairs(self) -> int:
        return self.lane.queued_pairs

    def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            self.when_unused()

    def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            self.when_unused()


class ServedModel:
    """A name, the settings its folder loads with, and the version in service."""

    def __init__(self, name: str, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.name, self.settings, self.metrics = name, settings, metrics
        self.current: LoadedModel | None = None
        self.load_error: str | None = None
        # the worker of the models on this one's shared base (None: a worker of its own)
        self.group: SharedGroup | None = None
        # held by the first load and each reload: one load of this model at a time
        self._loading = asyncio.Lock()

    @property
    def status(self) -> str:
        if self.current is not None:
            return "ready"
        return "failed" if self.load_error else "loading"

    def _loaded(self, reranker) -> LoadedModel:
        observer = self.metrics.batch_observer(self.name)
        if self.group is None or shared_base_of(reranker) is not self.group.shared:
            return LoadedModel.alone(reranker, self.settings, observer)
        return LoadedModel.in_group(reranker, self.settings, self.group, observer)

    def _load_again(self):
        """The folder's current contents, warmed: onto the shared base for a model that has one."""
        if self.group is None or self.current is None:
            return load_reranker(self.settings)
        settings = self.settings
        return self.group.reload(
            self.current.reranker,
            lambda reranker: load_reranker(settings, reranker),
            long_documents=settings.long_documents,
            prompt=settings.prompt,
            ensemble=settings.ensemble,
        )

    async def load(self, reranker=None) -> None:
        """The first load (of ``reranker`` when given); a failure is kept for /health. A reload
        asked for meanwhile is refused (409), so it cannot be overwritten by this older load."""
        async with self._loading:
            try:
                warmed = await asyncio.to_thread(load_reranker, self.settings, reranker)
                self.current = await asyncio.to_thread(self._loaded, warmed)
            except Exception as exc:  # reported by /health, never a crash of the server
                log.error("could not load model %s (%s): %s", self.name, self.settings.model, exc)
                self.load_error = str(exc)
                return
        self.metrics.ready.labels(model=self.name).set(1)
        log.info("model %s (%s) ready", self.name, self.settings.model)

    async def reload(self) -> LoadedModel:
        """Load the folder again beside the version in service and swap it in; 409 when this
        model is already loading, 422 (the old version still serving) when the folder does not
        load."""
        if self._loading.locked():
            raise HTTPException(
                status_code=409, detail=f"model {self.name!r} is already loading; retry when it is done"
            )
        # a client that hangs up does not stop a reload half-way (a worker started, not swapped in)
        return await asyncio.shield(self._reload())

    async def _reload(self) -> LoadedModel:
        async with self._loading:
            try:
                warmed = await asyncio.to_thread(self._load_again)
                fresh = await asyncio.to_thread(self._loaded, warmed)
            except Exception as exc:
                self.metrics.reloads.labels(model=self.name, outcome="failed").inc()
                keeps = "the previous version keeps serving" if self.current else "nothing was serving"
                log.error("reload of model %s failed (%s): %s", self.name, keeps, exc)
                raise HTTPException(
                    status_code=422,
                    detail=f"model {self.name!r}: reload failed, {keeps}: {short_reason(exc)}",
                ) from None
            old, self.current, self.load_error = self.current, fresh, None  # the swap
            if old is not None:
                old.retire()
            self.metrics.reloads.labels(model=self.name, outcome="ok").inc()
            self.metrics.ready.labels(model=self.name).set(1)
            log.info("model %s reloaded from %s", self.name, self.settings.model)
            return fresh

    @asynccontextmanager
    async def use(self) -> AsyncIterator[LoadedModel]:
        """The version in service, held for one request (503 while none is)."""
        loaded = self.current
        if loaded is None:
            reason = f": {self.load_error}" if self.load_error else " (still loading)"
            raise ServiceUnavailableException(detail=f"model not ready{reason}", headers={"Retry-After": "5"})
        loaded.users += 1
        try:
            yield loaded
        finally:
            loaded.release()

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop()
        elif self.current is not None:
            self.current.worker.stop()


class ServedModels:
    """The server's models by name, in the order given; the first answers requests that name
    none. ``any_name``: one model answering to whatever name a request gives (a bare
    ``--model PATH``)."""

    def __init__(self, models: list[ServedModel], *, any_name: bool) -> None:
        self.by_name = {m.name: m for m in models}
        self.first, self.any_name = models[0], any_name

    def __iter__(self):
        return iter(self.by_name.values())

    def get(self, name: str | None) -> ServedModel:
        """The model a request names; 404 naming the served models for any other name."""
        if name is None or self.any_name:
            return self.first
        model = self.by_name.get(name)
        if model is None:
            served = ", ".join(self.by_name)
            raise NotFoundException(
                detail=f"model {name[:100]!r} is not served here; served models: {served}"
            )
        return model


def served_models(settings: ServerSettings) -> tuple[ServedModels, ServerMetrics]:
    """The ServedModels ``settings`` describe and their metrics."""
    if settings.models:
        metrics = ServerMetrics([spec.name for spec in settings.models])
        models = [
            ServedModel(
                spec.name,
                replace(settings, model=spec.path, models=(), model_name=spec.name, **spec.overrides()),
                metrics,
            )
            for spec in settings.models
        ]
        return ServedModels(models, any_name=False), metrics
    metrics = ServerMetrics([settings.model_name])
    return ServedModels([ServedModel(settings.model_name, settings, metrics)], any_name=True), metrics


def join_groups(models: ServedModels, rerankers: Mapping) -> None:
    """The models whose rerankers (by name) score through one shared base join one worker."""
    groups = shared_groups(rerankers, lambda name: models.by_name[name].settings, cross_batching)
    for name, group in groups.items():
        models.by_name[name].group = group


def preloaded_for(models: ServedModels, reranker=None, rerankers: Mapping | None = None) -> dict:
    """Rerankers already loaded, by model name: ``reranker`` is the first model's."""
    given = dict(rerankers or {})
    if reranker is not None:
        given.setdefault(models.first.name, reranker)
    unknown = [name for name in given if name not in models.by_name]
    if unknown:
        raise ValueError(f"rerankers given for models not served: {', '.join(unknown)}")
    return given
