"""Bulk scoring: a file of (query, document) pairs to a file of scores (``rerankit score``).

    rerankit.score_file("outputs/run1", "pairs.jsonl", "scores.parquet")

The input is read and checked first (``rerankit.pairs_file``), then scored shard by shard by the
same ``Reranker.score`` as every other surface — runtimes, long-document windows and the
self-ensemble included, each pair's first-stage ``score`` passed along — in this process
(``engine="local"``) or by a Ray Data actor pool (``engine="ray"``, ``rerankit.bulk_ray``).

Each finished shard's scores are saved in a work folder next to the output (``.NAME.parts``),
beside a manifest that fingerprints the input's bytes, the model's files and the options. A
run that stops — an error, Ctrl-C, ``kill -9`` — resumes from the shards already saved when run
again with the same input, model and options; anything else starts over. The output is written
to a temporary file and renamed into place only when every row is in it, so a file at the
output path is always complete; the work folder is removed then.

The output has one row per input row, in input order: ``id`` (when the input has ids),
``query``, ``document``, ``first_stage_score`` (the input's ``score``, when it has one) and
``score``, the relevance probability (or, with ``raw=True``, the score before calibration),
and with ``cross_encoder_score=True`` the cross-encoder's logit before the self-ensemble
(``cross_encoder_score``), from the same forward passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerankit import pairs_file
from rerankit.errors import RerankitError
from rerankit.pairs_file import Pair, Plan, Shard

log = logging.getLogger(__name__)

# Rows per shard: what is lost to an interruption, and what one Ray task scores.
DEFAULT_SHARD_SIZE = 2048
ENGINES = ("local", "ray")
_MANIFEST = "manifest.json"
_LOCK = "lock"
_VERSION = 2  # 2: shards hold one column per score column


@dataclass(frozen=True)
class ScoreFileResult:
    """Where the scores went, how many rows and shards, and how many shards an earlier,
    interrupted run had already scored."""

    out: Path
    rows: int
    shards: int
    resumed_shards: int


def score_file(
    model,
    input: str | Path,
    out: str | Path,
    *,
    engine: str = "local",
    shard_size: int = DEFAULT_SHARD_SIZE,
    raw: bool = False,
    cross_encoder_score: bool = False,
    overwrite: bool = False,
    work_dir: str | Path | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    **load_options,
) -> ScoreFileResult:
    """Score every (query, document) row of ``input`` (.jsonl or .parquet) into ``out`` (.jsonl
    or .parquet), resuming an interrupted run of the same input, model and options.

    ``model``: a path or hub id, loaded with ``Reranker.load(model, **load_options)`` (by each
    Ray actor with ``engine="ray"``), or, with the local engine, an already loaded ``Reranker``
    (then ``load_options`` load nothing but still fingerprint the shards: pass the ones it was
    loaded with, so that a resumed run never mixes scores of differently loaded models).
    ``cross_encoder_score`` adds the column of the cross-encoder's logits before the ensemble.
    ``on_shard`` is called with each shard's index once its scores are saved. ``ray_address``,
    ``workers`` (actors; default one per CPU, or per GPU when the cluster has GPUs) and
    ``gpus_per_worker`` (default 1 when the cluster has GPUs) apply to ``engine="ray"``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    out = Path(out)
    out_format = pairs_file.file_format(out)
    if out.exists() and not overwrite:
        raise RerankitError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")
    if engine == "ray" and not isinstance(model, (str, Path)):
        raise ValueError(
            "engine='ray' loads the model in each actor: pass its path or hub id, not a Reranker"
        )
    if out_format == "parquet":
        pairs_file.parquet()  # before the work, not at its end
    plan = pairs_file.plan(input, shard_size)
    work = Path(work_dir) if work_dir is not None else out.with_name(f".{out.name}.parts")
    with _locked(work, out):
        return _score_plan(
            model,
            plan,
            work,
            out,
            out_format,
            engine,
            shard_size,
            raw,
            pairs_file.score_columns(cross_encoder_score),
            progress,
            on_shard,
            dict(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker),
            load_options,
        )


def _score_plan(
    model,
    plan,
    work,
    out,
    out_format,
    engine,
    shard_size,
    raw,
    columns,
    progress,
    on_shard,
    ray_options,
    load_options,
) -> ScoreFileResult:
    fingerprint = _fingerprint(
        plan, model, raw=raw, columns=columns, shard_size=shard_size, load_options=load_options
    )
    done = _resume(work, fingerprint, plan, len(columns))
    if done:
        log.info("resuming: %d of %d shards already scored in %s", len(done), len(plan.shards), work)
    pending = [shard for shard in plan.shards if shard.index not in done]
    cross_encoder_score = len(columns) == 2
    from tqdm import tqdm

    with tqdm(
        total=plan.rows,
        initial=sum(plan.shards[i].rows for i in done),
        unit="pair",
        disable=not progress,
        desc="scoring",
    ) as bar:
        if pending:
            if engine == "local":
                scored = _local_scores(
                    model,
                    plan,
                    pending,
                    raw=raw,
                    cross_encoder_score=cross_encoder_score,
                    load_options=load_options,
                )
            else:
                from rerankit.bulk_ray import ray_scores

                scored = ray_scores(
                    str(model),
                    plan,
                    pending,
                    raw=raw,
                    cross_encoder_score=cross_encoder_score,
                    load_options=load_options,
                    **ray_options,
                )
            for index, scores in scored:
                _save_shard(work, plan.shards[index], scores)
                bar.update(plan.shards[index].rows)
                if on_shard is not None:
                    on_shard(index)
    _assemble(plan, work, out, out_format, columns)
    for saved in work.glob("shard-*.npy"):
        saved.unlink()
    (work / _MANIFEST).unlink(missing_ok=True)
    return ScoreFileResult(out, plan.rows, len(plan.shards), len(done))


@contextlib.contextmanager
def _locked(work: Path, out: Path):
    """Hold the work folder's lock, so two runs never write one output's shards; the folder
    goes once the output is complete (unless it holds files of someone else's)."""
    from filelock import FileLock, Timeout

    work.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work / _LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RerankitError(
            f"{out} is being scored by another rerankit process; wait for it to end"
        ) from None
    try:
        yield
    finally:
        lock.release()
    if not (work / _MANIFEST).exists():  # done: nothing left to resume
        (work / _LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            work.rmdir()


def _local_scores(
    model, plan: Plan, pending: Iterable[Shard], *, raw: bool, cross_encoder_score: bool, load_options: dict
):
    if isinstance(model, (str, Path)):
        from rerankit.inference import Reranker

        model = Reranker.load(model, **load_options)
    for shard in pending:
        pairs = pairs_file.read_shard(plan.path, plan.format, shard)
        yield (
            shard.index,
            pairs_file.score_pairs(
                model, pairs, raw=raw, path=plan.path, cross_encoder_score=cross_encoder_score
            ),
        )


def _fingerprint(
    plan: Plan, model, *, raw: bool, columns: tuple[str, ...], shard_size: int, load_options: dict
) -> str:
    """What the saved shards were scored from: the input's bytes, the model's files, the options."""
    described = {
        "version": _VERSION,
        "input": plan.digest,
        "model": _model_identity(model),
        "raw": raw,
        "columns": list(columns),
        "shard_size": shard_size,
        "options": {key: repr(value) for key, value in sorted(load_options.items())},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _model_identity(model) -> str:
    if not isinstance(model, (str, Path)):
        # A loaded Reranker: the folder or id it was loaded from.
        model = getattr(model, "source", "") or repr(model)
    folder = Path(model)
    if not folder.exists():
        return str(model)  # a hub id
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard-{index:06d}.npy"


def _resume(work: Path, fingerprint: str, plan: Plan, width: int) -> set[int]:
    """The shards already scored in ``work`` for this fingerprint; a work folder left by another
    input, model or options is cleared and given this run's manifest."""
    manifest = work / _MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("fingerprint") == fingerprint:
        return {shard.index for shard in plan.shards if _saved(work, shard, width) is not None}
    if recorded is not None:
        log.info("%s holds shards of another input, model or options: starting over", work)
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("shard-*.npy"):
        old.unlink()
    _write_atomically(
        manifest,
        json.dumps(
            {"fingerprint": fingerprint, "input": plan.path, "rows": plan.rows, "shards": len(plan.shards)},
            indent=2,
        ).encode(),
    )
    return set()


def _saved(work: Path, shard: Shard, width: int) -> np.ndarray | None:
    """A shard's saved scores (a row per pair, ``width`` columns), or None when it has none (or
    an unreadable or short file)."""
    try:
        scores = np.load(_shard_path(work, shard.index), allow_pickle=False)
    except (OSError, ValueError):
        return None
    return scores if scores.shape == (shard.rows, width) else None


def _save_shard(work: Path, shard: Shard, scores: np.ndarray) -> None:
    if scores.ndim != 2 or scores.shape[0] != shard.rows:
        raise RerankitError(f"shard {shard.index}: {scores.shape} scores for {shard.rows} rows")
    tmp = _shard_path(work, shard.index).with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, scores.astype(np.float64))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, _shard_path(work, shard.index))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _scored_rows(plan: Plan, work: Path, width: int) -> Iterator[tuple[list[Pair], np.ndarray]]:
    for shard, pairs in zip(plan.shards, pairs_file.iter_pairs(plan)):
        scores = _saved(work, shard, width)
        if scores is None:
            raise RerankitError(f"{_shard_path(work, shard.index)} is missing or damaged: run again")
        yield pairs, scores


def _assemble(plan: Plan, work: Path, out: Path, out_format: str, columns: tuple[str, ...]) -> None:
    """Write the output next to its final path and rename it into place once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if out_format == "jsonl":
            _write_jsonl(plan, work, tmp, columns)
        else:
            _write_parquet(plan, work, tmp, columns)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _row(pair: Pair, scores: np.ndarray, plan: Plan, columns: tuple[str, ...]) -> dict:
    row = {"id": pair.id} if plan.has_ids else {}
    row |= {"query": pair.query, "document": pair.document}
    if plan.has_first_stage:
        row["first_stage_score"] = pair.first_stage
    row |= {name: float(value) for name, value in zip(columns, scores)}
    return row


def _write_jsonl(plan: Plan, work: Path, path: Path, columns: tuple[str, ...]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for pairs, scores in _scored_rows(plan, work, len(columns)):
            for pair, row_scores in zip(pairs, scores):
                handle.write(json.dumps(_row(pair, row_scores, plan, columns), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_parquet(plan: Plan, work: Path, path: Path, columns: tuple[str, ...]) -> None:
    pq = pairs_file.parquet()
    import pyarrow as pa

    fields = [("id", pa.string())] if plan.has_ids else []
    fields += [("query", pa.string()), ("document", pa.string())]
    fields += [("first_stage_score", pa.float64())] if plan.has_first_stage else []
    schema = pa.schema([*fields, *((name, pa.float64()) for name in columns)])
    with pq.ParquetWriter(path, schema) as writer:
        for pairs, scores in _scored_rows(plan, work, len(columns)):
            writer.write_table(
                pa.Table.from_pylist([_row(p, s, plan, columns) for p, s in zip(pairs, scores)], schema)
            )
