"""The ``rerankit`` command line (click). Every RerankitError becomes one line on stderr and exit 2."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from pathlib import Path

import click

from rerankit.errors import RerankitError
from rerankit.graph_export import DEFAULT_TOLERANCE


def _one_line_errors(func):
    """Turn rerankit's own errors into a one-line message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RerankitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


class _FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses nan and inf too: both compare false against any bound."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@click.group()
@click.version_option(package_name="rerankit")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show debug logs and the libraries' own notices (or RERANKIT_LOG=debug).",
)
def main(verbose: bool) -> None:
    """Train, evaluate and serve cross-encoder rerankers."""
    from rerankit.quiet import quiet_third_parties, verbose_requested

    verbose = verbose_requested(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        quiet_third_parties()


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML training config, e.g. configs/train_qlora.yaml.",
)
@click.option("--output-dir", default=None, help="Run folder (overrides output.dir).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set training.epochs=2 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue the run from its newest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in the output folder.")
@_one_line_errors
def train(
    config_path: str, output_dir: str | None, overrides: tuple[str, ...], resume: bool, overwrite: bool
) -> None:
    """Fine-tune a cross-encoder (LoRA/QLoRA) and write a run folder."""
    from rerankit.config import parse_override
    from rerankit.report import SIGNAL_NAMES, metrics_table, verdict
    from rerankit.training import fit

    parsed = {".".join(k): v for k, v in map(parse_override, overrides)}
    result = fit(config_path, output_dir=output_dir, resume=resume, overwrite=overwrite, overrides=parsed)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the main process reports the run
        return
    m = result.metrics
    recall = next((k for k in m["baseline"] if k.startswith("recall@")), None)
    rows = [
        (f"first stage: {m['first_stage']['name']}", m["first_stage"]),
        ("untrained model", m["baseline"]),
        ("trained (best, as trained)", m["best"]),
    ]
    shipped = m.get("shipped") or {}
    for name, values in (shipped.get("signals") or {}).items():
        rows.append((SIGNAL_NAMES.get(name, name), values))
    if shipped.get("ensemble"):
        rows.append(("self-ensemble (what rerank uses)", shipped["final"]))
    click.echo("\n" + metrics_table(rows, recall))
    click.echo("\n" + verdict(m))
    click.echo(f"\nrun folder: {result.output_dir} ({m['wall_time_s']:.0f} s)")


def _read_docs(path: str) -> tuple[list[str], list[tuple[int, float | None]]]:
    """Documents from a .jsonl file (objects with "text", or strings) or one per line of text,
    and each document's line number with its retriever "score" (None when it has none)."""
    from rerankit.data import iter_jsonl
    from rerankit.errors import DataError

    docs, scores = [], []
    for number, line in iter_jsonl(path):
        if not path.endswith(".jsonl"):
            docs.append(line.rstrip("\n"))
            scores.append((number, None))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", path=path, line=number) from None
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise DataError(
                "expected a string or an object with a string 'text'", path=path, line=number, field="text"
            )
        docs.append(text)
        scores.append(
            (number, _score_of(item.get("score") if isinstance(item, dict) else None, path, number))
        )
    return docs, scores


def _score_of(value, path: str, line: int) -> float | None:
    from rerankit.data import is_finite_number
    from rerankit.errors import DataError

    if value is None:
        return None
    if not is_finite_number(value):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise DataError(f"expected a finite number, got {shown}", path=path, line=line, field="score")
    return float(value)


def _injected_scores(path: str, scores: list[tuple[int, float | None]]):
    """The documents' retriever scores a score-injection model reads, or DataError naming the
    first line without one."""
    from rerankit.errors import DataError

    for line, score in scores:
        if score is None:
            raise DataError(
                'no retriever "score": this model reads each document\'s first-stage score in its '
                'input (score injection); give every line of --docs a "score" (JSONL)',
                path=path,
                line=line,
                field="score",
            )
    import numpy as np

    return np.asarray([score for _, score in scores], dtype=np.float64)


_dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
    default="auto",
    show_default=True,
    help="Inference precision (auto: bf16 where the hardware runs it natively, else fp32, or "
    "whatever runtime --backend picks, int8 graphs included; float32: fp32 only; int8: an "
    "export's int8 graph).",
)


def _backend_options(func):
    """--backend and --allow-failed-gate: which runtime scores (rerankit.runtimes)."""
    from rerankit.runtimes import BACKENDS

    func = click.option(
        "--allow-failed-gate",
        is_flag=True,
        help="Run an exported graph even though it failed its accuracy gate.",
    )(func)
    func = click.option(
        "--ensemble",
        type=click.Choice(["auto", "none"]),
        default="auto",
        show_default=True,
        help="auto: score with the self-ensemble the run fitted (the cross-encoder with BM25 and "
        "the backbone's cosine); none: the cross-encoder alone.",
    )(func)
    return click.option(
        "--backend",
        type=click.Choice(list(BACKENDS)),
        default="auto",
        show_default=True,
        help="Runtime on the CPU (auto: the fastest one that passed an export's accuracy gate, "
        "else torch). openvino/onnx need rerankit[openvino]/rerankit[onnx].",
    )(func)


def _long_document_options(func):
    """--long-documents and --window-aggregate; unset, a run folder's own setting applies."""
    func = click.option(
        "--window-aggregate",
        type=click.Choice(["max", "first", "mean", "max+first"]),
        default=None,
        help="How a long document's window scores combine (with --long-documents windows; default max).",
    )(func)
    return click.option(
        "--long-documents",
        type=click.Choice(["truncate", "windows"]),
        default=None,
        help="Documents longer than the model's window: truncate, or score every window.",
    )(func)


def _prompt_option(func):
    """--prompt: the template a decoder LLM reads pairs through (unset: the model's own)."""
    return click.option(
        "--prompt",
        type=click.Choice(["auto", "none", "qwen3", "plain"]),
        default=None,
        help="Prompt template of a decoder LLM reranker (default: the one it was trained or "
        "exported with; auto for other checkpoints).",
    )(func)


def _windows(long_documents: str | None, window_aggregate: str | None) -> dict | None:
    """The --long-documents options as Reranker.load's long_documents (None: unset)."""
    chosen = {"mode": long_documents, "aggregate": window_aggregate}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    return chosen or None


def _load(model_path: str, long_documents: str | None, window_aggregate: str | None, **options):
    """``Reranker.load`` with the options rerank and eval share."""
    from rerankit.inference import Reranker

    return Reranker.load(model_path, long_documents=_windows(long_documents, window_aggregate), **options)


def _trust_options(func):
    """--trust-remote-code and --allow-pickle: only the caller turns either on."""
    func = click.option(
        "--allow-pickle",
        is_flag=True,
        help="Read pickle weights (.bin/.pt), which can run code; safetensors only otherwise.",
    )(func)
    return click.option(
        "--trust-remote-code",
        is_flag=True,
        help="Run Python code shipped with the model (auto_map). Only for folders you trust.",
    )(func)


@main.command()
@click.option("--model", "model_path", required=True, help="Run folder, exported folder or HF id.")
@click.option("--query", required=True, help="The query.")
@click.option(
    "--docs",
    "docs_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Documents: .jsonl with a 'text' field, or a text file with one per line.",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Show only the best K.")
@_dtype_option
@click.option("--raw", is_flag=True, help="Raw logits instead of sigmoid scores.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--instruction",
    default=None,
    help="The task in words for an LLM reranker's prompt template (its default otherwise); "
    "an encoder ignores it.",
)
@_long_document_options
@_prompt_option
@_backend_options
@_trust_options
@_one_line_errors
def rerank(
    model_path: str,
    query: str,
    docs_path: str,
    top_k: int | None,
    dtype: str,
    raw: bool,
    as_json: bool,
    instruction: str | None,
    long_documents: str | None,
    window_aggregate: str | None,
    prompt: str | None,
    backend: str,
    allow_failed_gate: bool,
    ensemble: str,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> None:
    """Rank documents for one query (a score-injection model reads each line's "score")."""
    docs, scores = _read_docs(docs_path)
    if not docs:
        raise RerankitError(f"{docs_path}: no documents")
    reranker = _load(
        model_path,
        long_documents,
        window_aggregate,
        dtype=dtype,
        prompt=prompt,
        backend=backend,
        allow_failed_gate=allow_failed_gate,
        ensemble=ensemble,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    from rerankit.context import RankContext

    # The lines' scores are checked as read (_score_of); only a score-injection model reads them.
    first_stage = _injected_scores(docs_path, scores) if reranker.score_injection else None
    try:
        context = RankContext.build(
            len(docs),
            first_stage,
            field=f"{docs_path}: score",
            instruction=instruction,
            instruction_field="--instruction",
        )
        results = reranker.rerank_with(query, docs, context, top_k, raw=raw)
    except ValueError as exc:  # an over-long query, an empty document, an instruction it cannot take
        raise RerankitError(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"rank": r.rank, "index": r.index, "score": r.score, "text": r.text}
                    | ({} if r.fused_score is None else {"fused_score": r.fused_score})
                    for r in results
                ],
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    click.echo(f"query: {query}")
    for r in results:
        text = r.text if len(r.text) <= 100 else r.text[:97] + "..."
        click.echo(f"{r.rank + 1:>3}. [{r.index:>3}] {r.score:8.4f}  {text}")


@main.command(name="score")
@click.option("--model", "model_path", required=True, help="Run folder, exported folder or HF id.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help='Pairs: .jsonl lines {"query", "document", "id"?, "score"?} or .parquet with those columns.',
)
@click.option("--out", required=True, help="Scores: .jsonl or .parquet, one row per input row, in order.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="Ray cluster to join (default: start a local one).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Ray actors (default: one per CPU/GPU)."
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Rows per shard: the unit saved for resuming and handed to a Ray actor.",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_dtype_option
@click.option("--raw", is_flag=True, help="Scores before calibration instead of probabilities.")
@_long_document_options
@_prompt_option
@_backend_options
@_trust_options
@_one_line_errors
def score(
    model_path: str,
    input_path: str,
    out: str,
    overwrite: bool,
    engine: str,
    ray_address: str | None,
    workers: int | None,
    shard_size: int,
    no_progress: bool,
    dtype: str,
    raw: bool,
    long_documents: str | None,
    window_aggregate: str | None,
    prompt: str | None,
    backend: str,
    allow_failed_gate: bool,
    ensemble: str,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> None:
    """Score a file of (query, document) pairs; an interrupted run resumes where it stopped."""
    from rerankit.bulk import score_file

    result = score_file(
        model_path,
        input_path,
        out,
        engine=engine,
        shard_size=shard_size,
        raw=raw,
        overwrite=overwrite,
        progress=not no_progress,
        ray_address=ray_address,
        workers=workers,
        long_documents=_windows(long_documents, window_aggregate),
        dtype=dtype,
        prompt=prompt,
        backend=backend,
        allow_failed_gate=allow_failed_gate,
        ensemble=ensemble,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    resumed = f" ({result.resumed_shards} resumed)" if result.resumed_shards else ""
    click.echo(f"{result.rows} scores in {result.shards} shards{resumed} -> {result.out}")


@main.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Folder for the merged model.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "auto"]),
    default="float32",
    show_default=True,
    help="Precision of the merged weights (auto: bf16 for a decoder where a GPU is there, merged on it).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--causal-lm",
    default=None,
    help="Also write the merged causal LM here (yes/no decoder runs), scored by logit(yes) - logit(no).",
)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["openvino", "onnx"]),
    multiple=True,
    help="Also write a CPU graph (repeatable), measured against the fp32 model on the run's validation set.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Also write int8 graphs (OpenVINO: static, calibrated on validation pairs; ONNX: dynamic).",
)
@click.option(
    "--tolerance",
    type=_FiniteFloatRange(min=0.0),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="Accuracy gate: the largest validation NDCG@10 loss a graph may cause (95% upper bound).",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Seed-format JSONL to measure (and calibrate int8) on, instead of the run's validation split.",
)
@click.option("--force", is_flag=True, help="Write graphs that failed the accuracy gate (marked failed).")
@_trust_options
@_one_line_errors
def export_command(
    run_dir: str,
    out: str,
    dtype: str,
    overwrite: bool,
    causal_lm: str | None,
    formats: tuple[str, ...],
    quantize: str | None,
    tolerance: float,
    validation: str | None,
    force: bool,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> None:
    """Merge a run's adapter into a plain Hugging Face cross-encoder (safetensors), and
    optionally OpenVINO / ONNX graphs behind an accuracy gate."""
    from rerankit.export import export
    from rerankit.prompts import EXPORT_INFO
    from rerankit.runtimes import describe

    path = export(
        run_dir,
        out,
        dtype=dtype,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        causal_lm=causal_lm,
        formats=formats,
        quantize=quantize,
        tolerance=tolerance,
        validation=validation,
        force=force,
    )
    click.echo(
        f"merged model written to {path} (load it with Reranker.load or sentence_transformers.CrossEncoder)"
    )
    gate = json.loads((Path(path) / EXPORT_INFO).read_text()).get("accuracy_gate")
    if gate:
        click.echo(f"runtimes measured on {gate['validation']['queries']} validation queries:")
        for runtime in gate["runtimes"]:
            click.echo(f"  {describe(runtime)}")
    if causal_lm:
        click.echo(f"merged causal LM written to {causal_lm} (Reranker.load scores it by yes/no)")


@main.command(name="eval")
@click.option("--model", "model_path", required=True, help="Run folder, exported folder or HF id.")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True),
    help="Seed-format JSONL, or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/).",
)
@click.option(
    "--first-stage",
    type=click.Choice(["bm25", "dense", "hybrid"]),
    default="bm25",
    show_default=True,
    help="First stage for a BEIR folder: BM25, a bi-encoder, or their RRF hybrid.",
)
@click.option(
    "--dense-model",
    default="sentence-transformers/all-MiniLM-L6-v2",
    show_default=True,
    help="Bi-encoder of the dense and hybrid first stages (the default is packaged).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Candidates the first stage hands the reranker (BEIR folder).",
)
@click.option("--split", default="test", show_default=True, help="qrels file of a BEIR folder.")
@click.option("--recall-at", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--max-queries", type=click.IntRange(min=1), default=None, help="Evaluate only the first N queries."
)
@_dtype_option
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Score the pairs through the bulk path of rerankit score (resumable; ray: a Ray actor "
    "pool) instead of query by query in this process.",
)
@click.option(
    "--ray-address", default=None, help="With --engine ray: the cluster to join (default: a local one)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="With --engine ray: actors (default: one per CPU/GPU).",
)
@_long_document_options
@_prompt_option
@_backend_options
@_trust_options
@_one_line_errors
def eval_command(
    model_path: str,
    data_path: str,
    first_stage: str,
    dense_model: str,
    top_k: int,
    split: str,
    recall_at: int,
    max_queries: int | None,
    dtype: str,
    out_path: str | None,
    engine: str | None,
    ray_address: str | None,
    workers: int | None,
    long_documents: str | None,
    window_aggregate: str | None,
    prompt: str | None,
    backend: str,
    allow_failed_gate: bool,
    ensemble: str,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> None:
    """Compare a reranker with its first stage on held-out data."""
    from rerankit.errors import require
    from rerankit.held_out import evaluate_beir, evaluate_seed_file
    from rerankit.inference import Reranker
    from rerankit.report import metrics_table

    if engine != "ray" and (ray_address is not None or workers is not None):
        raise RerankitError("--ray-address and --workers apply to --engine ray")
    require("ir_measures", "train")  # the metrics: said before the model loads, not after scoring
    load_options = dict(
        long_documents=_windows(long_documents, window_aggregate),
        dtype=dtype,
        prompt=prompt,
        backend=backend,
        allow_failed_gate=allow_failed_gate,
        ensemble=ensemble,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    reranker = Reranker.load(model_path, **load_options)
    bulk = None
    if engine is not None:
        from rerankit.held_out_bulk import BulkScoring, default_work_dir

        # what chooses and scores the pairs: the same command finds its shards again
        described = dict(
            model=str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
            data=str(Path(data_path).resolve()),
            first_stage=first_stage,
            dense_model=dense_model,
            top_k=top_k,
            split=split,
            max_queries=max_queries,
            **load_options,
        )
        bulk = BulkScoring(
            # locally the loaded model scores; each Ray actor loads its own
            reranker if engine == "local" else model_path,
            default_work_dir(out_path, described),
            dict(engine=engine, ray_address=ray_address, workers=workers, **load_options),
        )
    if Path(data_path).is_dir():
        result = evaluate_beir(
            reranker,
            data_path,
            top_k=top_k,
            split=split,
            recall_at=recall_at,
            max_queries=max_queries,
            first_stage=first_stage,
            dense_model=dense_model,
            bulk=bulk,
        )
    else:
        if first_stage != "bm25":
            raise RerankitError(
                "--first-stage applies to a BEIR folder; a seed file's first "
                "stage is BM25 over each query's candidates"
            )
        result = evaluate_seed_file(reranker, data_path, recall_at=recall_at, bulk=bulk)
    result["model"] = model_path
    click.echo(
        metrics_table(
            [
                (result["first_stage"]["name"], result["first_stage"]),
                (f"reranked by {model_path}", result["reranked"]),
                (result["fused_name"], result["fused"]),
                *(
                    [("fused: RRF (untuned)", result["fused_rrf"])]
                    if "RRF" not in result["fused_name"]
                    else []
                ),
            ],
            f"recall@{recall_at}",
        )
    )
    if result.get("depths"):
        click.echo("\nndcg@10 reordering the first stage's top d:")
        depths = list(result["depths"])
        click.echo("| | " + " | ".join(f"d = {d}" for d in depths) + " |\n|---|" + "---:|" * len(depths))
        for key, label in (
            ("first_stage", "first stage"),
            ("cross_encoder", "cross-encoder alone"),
            ("reranked", f"reranked by {model_path}"),
        ):
            cells = " | ".join(f"{result['depths'][d][key]['ndcg@10']:.4f}" for d in depths)
            click.echo(f"| {label} | {cells} |")
    delta = result["reranked"]["ndcg@10"] - result["first_stage"]["ndcg@10"]
    click.echo(f"\nndcg@10 {delta:+.4f} over the first stage on {result['queries']} queries")
    if delta < 0:
        click.echo("WARNING: the reranker ranks WORSE than the first stage on this data.", err=True)
    if out_path:
        Path(out_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


@main.command()
@click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="corpus.jsonl ({_id, text, title?} or {doc_id, text}).",
)
@click.option(
    "--queries",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="queries.jsonl ({_id, text}); only queries with a positive in --qrels are mined.",
)
@click.option(
    "--qrels",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TSV query-id, corpus-id, score; scores > 0 are positives.",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Seed JSONL lines with positives (instead of queries + qrels).",
)
@click.option("--method", type=click.Choice(["bm25", "dense", "hybrid"]), default="bm25", show_default=True)
@click.option("--num-negatives", type=click.IntRange(min=1), default=15, show_default=True)
@click.option(
    "--skip-top",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Skip the best N non-positive candidates (likely unlabelled positives).",
)
@click.option(
    "--margin",
    type=_FiniteFloatRange(min=0.0),
    default=None,
    help="False-negative guard: drop candidates scoring within this margin of the weakest positive.",
)
@click.option(
    "--dense-model",
    default="sentence-transformers/all-MiniLM-L6-v2",
    show_default=True,
    help="Bi-encoder for dense/hybrid (path or hub id; the default is packaged).",
)
@click.option(
    "--pseudo-queries",
    type=click.IntRange(min=1),
    default=None,
    help="Corpus adaptation: N inverse-cloze queries per --corpus passage (a sentence as the "
    "query, the passage without it as the positive), instead of --queries/--qrels.",
)
@click.option(
    "--keep-sentence",
    is_flag=True,
    help="With --pseudo-queries: leave the query's sentence in its positive.",
)
@click.option(
    "--teacher-scores",
    is_flag=True,
    help='Write the first stage\'s score of every document ("score"), a target for loss.distillation.',
)
@click.option(
    "--teacher-model",
    default=None,
    help="Score every written document by this cross-encoder instead (raw scores, through the "
    "bulk path of rerankit score: resumable, --teacher-engine ray for large jobs).",
)
@click.option("--teacher-engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="With --teacher-engine ray: the cluster to join.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="With --teacher-engine ray: actors."
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the pseudo-query draw."
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@_one_line_errors
def mine(
    corpus: str | None,
    queries: str | None,
    qrels: str | None,
    input_path: str | None,
    method: str,
    num_negatives: int,
    skip_top: int,
    margin: float | None,
    dense_model: str,
    pseudo_queries: int | None,
    keep_sentence: bool,
    teacher_scores: bool,
    teacher_model: str | None,
    teacher_engine: str,
    ray_address: str | None,
    workers: int | None,
    seed: int,
    out_path: str,
) -> None:
    """Mine hard negatives and write seed-format JSONL for training."""
    from rerankit import mining
    from rerankit import pseudo_queries as pq
    from rerankit.beir import read_corpus
    from rerankit.data import write_records

    options = dict(
        method=method,
        num_negatives=num_negatives,
        skip_top=skip_top,
        margin=margin,
        dense_model=dense_model,
        teacher_scores=teacher_scores,
    )
    if pseudo_queries:
        if not corpus or queries or qrels or input_path:
            raise RerankitError("--pseudo-queries builds queries from --corpus alone")
        documents = read_corpus(corpus)
        pseudo = pq.build(documents, pseudo_queries, remove_sentence=not keep_sentence, seed=seed)
        records = pq.mined_records(documents, pq.require(pseudo, corpus), **options)
        searched = len(documents)
    else:
        if input_path:
            data = mining.from_seed_lines(input_path, corpus)
        elif corpus and queries and qrels:
            data = mining.from_beir(corpus, queries, qrels)
        else:
            raise RerankitError("give --corpus, --queries and --qrels, or --input (seed lines)")
        if not data.positives:
            raise RerankitError(
                "no query has a positive document in the corpus (check that --qrels ids match "
                "--queries and --corpus, and that positives have a score > 0)"
            )
        records, searched = mining.mine(data, **options), len(data.corpus)
    if teacher_model:
        from rerankit.teacher import teacher_scored

        records = teacher_scored(
            records, teacher_model, out_path, engine=teacher_engine, ray_address=ray_address, workers=workers
        )
    write_records(records, out_path)
    short = sum(len(r.negatives) < num_negatives for r in records)
    click.echo(
        f"{len(records)} queries mined by {method} over {searched} documents -> "
        f"{out_path}" + (f" ({short} with fewer than {num_negatives} negatives)" if short else "")
    )


@main.command()
@click.argument("data_path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--valid-ratio",
    type=_FiniteFloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of the queries in the validation file (between 0 and 1).",
)
@click.option(
    "--group-by",
    type=click.Choice(["query", "source_chunk"]),
    default="query",
    show_default=True,
    help="Keep each query (or also each source chunk) on one side.",
)
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where train.jsonl and valid.jsonl go (default: beside the input).",
)
@_one_line_errors
def split(data_path: str, valid_ratio: float, group_by: str, seed: int, out_dir: str | None) -> None:
    """Split seed-format JSONL into train/valid by query, deterministically for the seed."""
    from rerankit.data import read_records, write_records
    from rerankit.split import split_records

    records, report = read_records(data_path)
    try:
        train, valid = split_records(records, valid_ratio, seed, group_by)
    except ValueError as exc:
        raise RerankitError(f"{data_path}: {exc}") from None
    folder = Path(out_dir) if out_dir else Path(data_path).parent
    stem = Path(data_path).stem
    paths = {name: folder / f"{stem}.{name}.jsonl" for name in ("train", "valid")}
    write_records(train, paths["train"])
    write_records(valid, paths["valid"])
    summary = {
        "input": data_path,
        "seed": seed,
        "group_by": group_by,
        "valid_ratio": valid_ratio,
        "train": {"path": str(paths["train"]), "queries": len(train)},
        "valid": {"path": str(paths["valid"]), "queries": len(valid)},
        "data_report": report.summary(),
    }
    (folder / f"{stem}.split.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(report.summary())
    click.echo(
        f"train: {len(train)} queries -> {paths['train']}\nvalid: {len(valid)} queries -> {paths['valid']}"
    )


def _ray_serve_options(func):
    """--engine ray and its replicas (rerankit.server.ray_serve)."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local: this process (uvicorn); ray: replicas on Ray Serve (rerankit[ray]).",
        ),
        click.option("--ray-address", default=None, help="Ray cluster to join (default: start a local one)."),
        click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True),
        click.option(
            "--min-replicas", type=click.IntRange(min=0), default=None, help="Autoscale from this many."
        ),
        click.option(
            "--max-replicas", type=click.IntRange(min=1), default=None, help="Autoscale up to this many."
        ),
        click.option(
            "--target-ongoing-requests",
            type=_FiniteFloatRange(min=0.1),
            default=2.0,
            show_default=True,
            help="Autoscaling aims at this many requests in flight per replica.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@click.option(
    "--model",
    "model_paths",
    multiple=True,
    help="Run folder, exported folder or HF id; or NAME=PATH, repeated, to serve several models "
    "that requests pick by name (the first answers requests that name none).",
)
@click.option(
    "--models",
    "models_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A YAML file listing the models to serve (models: [{name, path, ...}]), instead of --model.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind (127.0.0.1: this machine only)."
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--api-key",
    envvar="RERANKIT_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on the rerank routes (env RERANKIT_API_KEY).",
)
@_dtype_option
@click.option(
    "--max-batch-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per forward pass (default: 2048 on CPU, 32768 on GPU).",
)
@click.option("--max-documents", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--max-queue-pairs",
    type=click.IntRange(min=1),
    default=20000,
    show_default=True,
    help="Pairs waiting before requests are answered 429. A pair is one document window the "
    "model scores: one per document, one per window with --long-documents windows.",
)
@click.option(
    "--max-request-pairs",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="Pairs (document windows) one request may cost; a larger request is answered 413.",
)
@click.option(
    "--max-pairs-per-round",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Pairs scored at most per round; larger requests are scored in chunks, shared fairly "
    "with the others, so this bounds how long a small request waits behind a large one.",
)
@click.option(
    "--request-read-timeout",
    type=_FiniteFloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a client has to send a whole request (slow clients are disconnected).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Open connections (and requests) at most; past it the answer is 503.",
)
@click.option(
    "--cross-batching/--no-cross-batching",
    default=None,
    help="Merge concurrent requests into shared batches (default: only in fp32, where scores do "
    "not depend on batch neighbours).",
)
@click.option("--model-name", default="rerankit", show_default=True, help="Name echoed in responses.")
@click.option(
    "--merge",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="LoRA runs of one base: merged copies each (always), one shared base with the adapters "
    "beside it (never), or shared where it pays: several runs on a GPU or a large base (auto).",
)
@_ray_serve_options
@_long_document_options
@_prompt_option
@_backend_options
@_trust_options
@_one_line_errors
def serve(
    model_paths: tuple[str, ...],
    models_file: str | None,
    host: str,
    port: int,
    api_key: str | None,
    dtype: str,
    max_batch_tokens: int | None,
    max_documents: int,
    max_queue_pairs: int,
    max_request_pairs: int,
    max_pairs_per_round: int,
    cross_batching: bool | None,
    request_read_timeout: float,
    max_connections: int,
    model_name: str,
    merge: str,
    long_documents: str | None,
    window_aggregate: str | None,
    prompt: str | None,
    backend: str,
    allow_failed_gate: bool,
    ensemble: str,
    trust_remote_code: bool,
    allow_pickle: bool,
    engine: str = "local",
    ray_address: str | None = None,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    target_ongoing_requests: float = 2.0,
) -> None:
    """Serve a reranker over HTTP: POST /v2/rerank (Cohere), /rerank (Cohere or TEI body).

    The model is loaded (and checked to score) before the server starts: a model that does
    not load is a one-line error and exit code 2, never a server answering 503 forever.
    """
    from rerankit.errors import ConfigError
    from rerankit.server import ServerSettings, create_app
    from rerankit.server.model_specs import parse_model_options, read_models_file
    from rerankit.server.served_models import load_models
    from rerankit.server.serving import run

    if bool(model_paths) == bool(models_file):
        raise ConfigError("serve: give --model (once, or NAME=PATH repeated) or --models FILE")
    specs = read_models_file(models_file) if models_file else parse_model_options(model_paths)
    settings = ServerSettings(
        model=None if specs else model_paths[0],
        models=tuple(specs or ()),
        model_name=model_name,
        merge=merge,
        dtype=dtype,
        api_key=api_key,
        max_batch_tokens=max_batch_tokens,
        max_documents=max_documents,
        max_queue_pairs=max_queue_pairs,
        max_request_pairs=max_request_pairs,
        max_pairs_per_round=max_pairs_per_round,
        cross_batching=cross_batching,
        request_read_timeout_s=request_read_timeout,
        max_connections=max_connections,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        long_documents=_windows(long_documents, window_aggregate),
        prompt=prompt,
        backend=backend,
        allow_failed_gate=allow_failed_gate,
        ensemble=ensemble,
    )
    if engine == "ray":
        if specs:
            raise ConfigError("serve --engine ray: one model per deployment (give --model PATH once)")
        from rerankit.server.ray_serve import ReplicaOptions, run_on_ray

        replicas = ReplicaOptions(replicas, min_replicas, max_replicas, target_ongoing_requests)
        run_on_ray(settings, replicas, host, port, address=ray_address)
        return
    # every model loads (and scores) before the server starts: one that does not is exit 2
    rerankers = load_models(settings)
    run(create_app(settings, rerankers=rerankers), settings, host, port)


if __name__ == "__main__":  # pragma: no cover
    main()
