"""Real-data quality: rerankit against BM25, a bi-encoder, the untrained cross-encoder and a
sentence-transformers ``CrossEncoderTrainer`` peer, on SQuAD split by article.

    python benchmarks/quality.py [--quick] [--train-queries 600] [--test-queries 200]
                                 [--ablation "name: key=value key=value"] ...

Protocol (all fixed by seeds, so a rerun gives the same table):

- ``../shared/data/squad-v1.1-dev`` (BEIR layout; documents are title + paragraph). Every
  fifth article (0, 5, ..., 45) is the test side, the other 38 articles the train side; no
  paragraph or question crosses.
- Train side: ``--train-queries`` questions sampled from the train articles, negatives mined
  with ``rerankit.mining`` (BM25 over the train-side paragraphs only), then split by query
  (10 % validation) with ``rerankit.split``. Both trainers get exactly these two files.
- rerankit: ``rerankit.fit`` with ``--config`` (the shipped QLoRA recipe: listwise loss,
  epoch-resampled negatives), one epoch unless ``--set training.epochs=N``; validation picks
  the best evaluation. A second row trains the same recipe on the full-precision base
  (``quantization.mode=none``; ``--no-lora`` skips it). Each trained model is also shown fused
  (reciprocal-rank fusion) with BM25's order, as ``rerankit eval`` reports it, and with BM25's
  and the bi-encoder's orders together; the hybrid first stage (BM25 ⊕ bi-encoder) has a row.
- Peer: ``CrossEncoderTrainer`` + ``BinaryCrossEntropyLoss(pos_weight=num_negatives)`` from
  the same backbone (full fine-tuning, as sentence-transformers trains cross-encoders), on the
  same queries with the same number of negatives per query (the top mined ones) and the same
  epochs, pairs per step and precision; ``CrossEncoderRerankingEvaluator`` on the same
  validation file picks its best epoch (``load_best_model_at_end``). Learning rate 1e-4: it
  beat sentence-transformers' documented 2e-5 on this protocol (0.30 against 0.19 NDCG@10 at 8
  queries per step, 0.48 against 0.21 at 4); ``--peer-lr`` runs others. The peer's result
  swings with the training seed (results/quality_ablations.md).
- Corpus adaptation: a run whose config enables ``adaptation`` (e.g. ``--ablation "ICT:
  adaptation.corpus=yes"``) adapts to this benchmark's corpus, every paragraph of all 48
  articles and no question: what a user has. The mined training lines carry the miner's
  scores (BM25's unless ``--mining`` says otherwise), the teacher of ``loss.distillation`` runs
  and what score injection reads.
- Test side: ``--test-queries`` questions sampled from the test articles; BM25 retrieves the
  top 30 of the whole corpus (all 48 articles, as a deployed retriever would search) and
  each model reorders those 30. NDCG@10 and MRR@10 (``ir_measures``) count a positive BM25
  missed against every row alike.

Each training runs in a fresh process, so its wall time and peak memory (max RSS) are its
own. Needs the ``train`` extra (``datasets``) for the peer. Writes
``benchmarks/results/quality.{json,md}`` (``quality_quick`` with ``--quick``) and the work files
(mined data, run folders) under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # also when loaded as a module, as the tests do
from machine import cpu_line  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"
# The second domain (argument retrieval), built by benchmarks/domains/build_arguana.py.
DOMAINS = {"squad": DATA, "arguana": ROOT.parent / "shared" / "data" / "arguana-counterargs"}
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
TEST_ARTICLES = {str(i) for i in range(0, 48, 5)}
DOMAIN_TITLES = {
    "squad": "SQuAD split by article",
    "arguana": "ArguAna (argument retrieval, split by debate)",
}
# Rerank depths of the depth table: how far into the first stage's list the reranker reads.
DEPTHS = (10, 30, 100)


def article(doc_id: str) -> str:
    """SQuAD BEIR ids are ``<article>_<paragraph>``."""
    return doc_id.rsplit("_", 1)[0]


def split_by_article(data: Path):
    """(corpus, queries, positives) for the train side, the test side and the whole corpus.

    The test questions are ranked over the whole corpus (what a deployed retriever searches);
    training questions and their mined negatives come from train-side paragraphs only.
    """
    from rerankit.beir import read_corpus, read_qrels, read_queries

    corpus = read_corpus(data / "corpus.jsonl", with_title=True)
    queries = read_queries(data / "queries.jsonl")
    positives = {
        q: sorted(d for d, grade in judged.items() if grade > 0 and d in corpus)
        for q, judged in read_qrels(data / "qrels" / "test.tsv").items()
        if q in queries
    }
    sides = {}
    for name, wanted in (("train", False), ("test", True)):
        docs = {d: t for d, t in corpus.items() if (article(d) in TEST_ARTICLES) == wanted}
        pos = {q: ids for q, ids in positives.items() if ids and all(d in docs for d in ids)}
        sides[name] = (docs, {q: queries[q] for q in pos}, pos)
    sides["all"] = (corpus, sides["test"][1], sides["test"][2])
    return sides


def split_by_debate(data: Path, max_query_words: int | None):
    """ArguAna (argument retrieval, ``benchmarks/domains/arguana``): queries are arguments, each
    relevant document the counter written against it. The source's own splits (by debate): the
    train side is the training and validation debates' queries over their counters; the test
    questions are ranked over the whole corpus. Queries are cut to their first
    ``max_query_words`` words (rerankit never truncates a query; a whole argument often fills
    the window)."""
    from rerankit.beir import read_corpus, read_qrels, read_queries

    corpus = read_corpus(data / "corpus.jsonl", with_title=True)
    queries = read_queries(data / "queries.jsonl")
    if max_query_words:
        queries = {q: " ".join(text.split()[:max_query_words]) for q, text in queries.items()}

    def positives(split: str) -> dict[str, list[str]]:
        judged = read_qrels(data / "qrels" / f"{split}.tsv")
        found = {q: sorted(d for d, g in j.items() if g > 0 and d in corpus) for q, j in judged.items()}
        return {q: ids for q, ids in found.items() if ids and q in queries}

    train_pos = {**positives("train"), **positives("dev")}
    test_pos = positives("test")
    train_docs = {d: t for d, t in corpus.items() if not d.startswith("test/")}
    return {
        "train": (train_docs, {q: queries[q] for q in train_pos}, train_pos),
        "test": (corpus, {q: queries[q] for q in test_pos}, test_pos),
        "all": (corpus, {q: queries[q] for q in test_pos}, test_pos),
    }


def sample(ids, n: int | None, seed: int) -> list[str]:
    ids = sorted(ids)
    return ids if n is None or n >= len(ids) else sorted(random.Random(seed).sample(ids, n))


def prepare_training_files(
    train_side, n_queries: int | None, num_negatives: int, seed: int, work: Path, mining: str = "bm25"
) -> dict[str, Any]:
    """Mine negatives on the train side (BM25 unless ``mining`` says otherwise) and split by query
    into train/valid JSONL."""
    from rerankit.data import write_records
    from rerankit.mining import MiningInput, mine
    from rerankit.split import split_records

    docs, queries, positives = train_side
    qids = sample(queries, n_queries, seed)
    records = mine(
        MiningInput(docs, {q: queries[q] for q in qids}, {q: positives[q] for q in qids}),
        method=mining,
        num_negatives=num_negatives,
        teacher_scores=True,  # the miner's scores: distillation targets, and what score injection reads
    )
    train, valid = split_records(records, 0.1, seed=seed, group_by="query")
    work.mkdir(parents=True, exist_ok=True)
    write_records(train, work / "train.jsonl")
    write_records(valid, work / "valid.jsonl")
    return {
        "train": str(work / "train.jsonl"),
        "valid": str(work / "valid.jsonl"),
        "train_queries": len(train),
        "valid_queries": len(valid),
        "mined_negatives": num_negatives,
        "mined_by": mining,
        "corpus": len(docs),
    }


def ensemble_teacher(path: str) -> None:
    """Rewrite the mined lines of ``path`` with the self-ensemble's untrained signals as the
    teacher of ``loss.distillation``: per line, the sum of BM25's and the backbone's cosine
    scores, each z-scored over the line's documents (instead of BM25's score alone)."""
    import dataclasses

    from rerankit.data import read_records, write_records
    from rerankit.ensemble import CosineSignal
    from rerankit.fusion import zscore
    from rerankit.loading import resolve_model_path

    records, _ = read_records(path)
    cosine = CosineSignal.load(resolve_model_path(BACKBONE))
    rewritten = []
    for record in records:
        docs = (*record.positives, *record.negatives)
        bm25 = np.array([d.score for d in docs], dtype=np.float64)
        cos = cosine.scores([record.query] * len(docs), [d.text for d in docs])
        teacher = iter(zscore(bm25) + zscore(np.asarray(cos, dtype=np.float64)))
        rewritten.append(
            dataclasses.replace(
                record,
                positives=tuple(dataclasses.replace(d, score=float(next(teacher))) for d in record.positives),
                negatives=tuple(dataclasses.replace(d, score=float(next(teacher))) for d in record.negatives),
            )
        )
    write_records(rewritten, path)


def write_corpus(corpus: dict[str, str], path: Path) -> str:
    """The whole corpus (every article's paragraphs, no question) for corpus adaptation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in corpus.items()))
    return str(path)


def first_stage_candidates(side, n_queries: int | None, top_k: int, seed: int):
    """BM25 top-k of the given corpus for the sampled test questions."""
    from rerankit.held_out import first_stage_top_k

    docs, queries, positives = side
    qids = sample(queries, n_queries, seed)
    hits = first_stage_top_k(docs, [queries[q] for q in qids], top_k, "bm25")
    qrels = {q: dict.fromkeys(positives[q], 1) for q in qids}
    return {
        "qids": qids,
        "queries": [queries[q] for q in qids],
        "docs": docs,
        "qrels": qrels,
        "hits": [hit.ids for hit in hits],
        "bm25": [hit.scores for hit in hits],
    }


def metrics_of(test, scores: list[np.ndarray]) -> dict[str, float]:
    from rerankit.ranking_metrics import ranking_metrics

    run = {q: dict(zip(ids, map(float, s))) for q, ids, s in zip(test["qids"], test["hits"], scores)}
    m = ranking_metrics(test["qrels"], run, recall_at=10)
    return {"ndcg@10": m["ndcg@10"], "mrr@10": m["mrr@10"]}


def score_with(reranker, test) -> list[np.ndarray]:
    """The reranker's raw scores of every test candidate, one array per question."""
    if getattr(reranker, "score_injection", None) is not None:
        # A model trained with score injection reads BM25's score of each candidate; peers do not.
        return [
            reranker.logits([query] * len(ids), [test["docs"][d] for d in ids], first_stage=bm25)
            for query, ids, bm25 in zip(test["queries"], test["hits"], test["bm25"])
        ]
    pairs = [(q, test["docs"][d]) for q, ids in zip(test["queries"], test["hits"]) for d in ids]
    flat = np.asarray(reranker.score(pairs, raw=True))
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return np.split(flat, sizes)


def dense_scores(test) -> list[np.ndarray]:
    """Cosine of the packaged MiniLM bi-encoder (the model every row starts from)."""
    from rerankit.first_stage import DenseIndex

    doc_ids = sorted({d for ids in test["hits"] for d in ids})
    cosine = DenseIndex([test["docs"][d] for d in doc_ids], BACKBONE).scores(test["queries"])
    column = {d: i for i, d in enumerate(doc_ids)}
    return [row[[column[d] for d in ids]] for row, ids in zip(cosine, test["hits"])]


def at_depth(test, depth: int):
    """``test`` with each question's first-stage list cut to its top ``depth``."""
    return {**test, "hits": [h[:depth] for h in test["hits"]], "bm25": [b[:depth] for b in test["bm25"]]}


def depth_table(deep, scores: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Metrics when the reranker reorders the first stage's top d (d in DEPTHS) of ``deep``."""
    return {str(d): metrics_of(at_depth(deep, d), [s[:d] for s in scores]) for d in DEPTHS}


def ensemble_scores(reranker, test) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The cross-encoder's logits and the self-ensemble's scores of every candidate, per question
    (one pass of the cross-encoder; each distinct text embedded once for the cosine)."""
    queries = [q for q, ids in zip(test["queries"], test["hits"]) for _ in ids]
    docs = [test["docs"][d] for ids in test["hits"] for d in ids]
    first = np.concatenate(test["bm25"]) if reranker.score_injection is not None else None
    logits = np.asarray(reranker.logits(queries, docs, first_stage=first), dtype=np.float64)
    final = reranker.final_scores(logits, reranker.signal_scores(queries, docs))
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return np.split(logits, sizes), np.split(final, sizes)


def ensemble_weights(reranker) -> str:
    e = reranker.ensemble
    return ", ".join(f"{s} {w:.2f}" for s, w in zip(e.signals, e.weights))


def untrained_reranker(max_length: int, seed: int):
    """The backbone with a fresh score head, seeded as training initialises it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rerankit.inference import Reranker, default_dtype
    from rerankit.loading import load_tokenizer, resolve_model_path

    torch.manual_seed(seed)
    path = resolve_model_path(BACKBONE)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=default_dtype("cpu"))
    return Reranker(model, load_tokenizer(path), max_length=max_length, source="untrained")


# ---- trainings, each in its own process -------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train_rerankit(config: str, files: dict, out: str, overrides: dict) -> dict[str, Any]:
    import rerankit
    from rerankit.config import load_config

    started = time.perf_counter()
    overrides = {"data.train": files["train"], "data.valid": files["valid"], **overrides}
    # Corpus adaptation, when the run's override (any value: on; null: off) or else its config
    # asks for it, always uses this benchmark's corpus, never the config's.
    if "adaptation.corpus" in overrides:
        adapt = bool(overrides.pop("adaptation.corpus"))
    else:
        adapt = bool(load_config(config, overrides).adaptation.corpus)
    overrides["adaptation.corpus"] = files["corpus_file"] if adapt else None
    # Validation as deployed ranks over the corpus a user searches: this benchmark's whole one.
    overrides.setdefault("data.corpus", files["corpus_file"])
    result = rerankit.fit(config, output_dir=out, overwrite=True, overrides=overrides)
    return {
        "wall_s": time.perf_counter() - started,
        "peak_rss_mib": _peak_rss_mib(),
        "valid_best": result.metrics["best"],
        "path": out,
    }


def reused_run(folder: Path) -> dict[str, Any]:
    """What ``train_rerankit`` reports, read back from a finished run folder (no wall time)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"valid_best": metrics["best"], "path": str(folder), "reused": True}


def _st_samples(path: str, num_negatives: int | None):
    from rerankit.data import read_records

    records, _ = read_records(path)
    return [
        {
            "query": r.query,
            "positive": [d.text for d in r.positives],
            "negative": [d.text for d in r.negatives[:num_negatives]],
        }
        for r in records
    ]


def train_peer(
    files: dict,
    out: str,
    *,
    epochs: int,
    num_negatives: int,
    queries_per_step: int,
    max_length: int,
    learning_rate: float,
    bf16: bool,
    seed: int,
) -> dict[str, Any]:
    """sentence-transformers' documented cross-encoder recipe: BCE with pos_weight."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.evaluation import (
        CrossEncoderRerankingEvaluator,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from rerankit.loading import resolve_model_path

    started = time.perf_counter()
    rows: dict[str, list] = {"query": [], "passage": [], "label": []}
    for s in _st_samples(files["train"], num_negatives):
        for text, label in [(p, 1.0) for p in s["positive"]] + [(n, 0.0) for n in s["negative"]]:
            rows["query"].append(s["query"])
            rows["passage"].append(text)
            rows["label"].append(label)
    model = CrossEncoder(resolve_model_path(BACKBONE), num_labels=1, max_length=max_length, device="cpu")
    evaluator = CrossEncoderRerankingEvaluator(
        _st_samples(files["valid"], None), at_k=10, name="valid", write_csv=False
    )
    args = CrossEncoderTrainingArguments(
        output_dir=str(Path(out) / "checkpoints"),
        num_train_epochs=epochs,
        per_device_train_batch_size=queries_per_step * (1 + num_negatives),
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        bf16=bf16,
        use_cpu=True,
        seed=seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_valid_ndcg@10",
        logging_steps=10,
        report_to="none",
        dataloader_num_workers=0,
    )
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        loss=BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(num_negatives)),
        evaluator=evaluator,
    )
    trainer.train()
    model.save_pretrained(str(Path(out) / "model"))
    best = trainer.state.best_metric
    return {
        "wall_s": time.perf_counter() - started,
        "peak_rss_mib": _peak_rss_mib(),
        "valid_best": {"ndcg@10": best},
        "path": str(Path(out) / "model"),
    }


def in_fresh_process(func, *args, **kwargs):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(func, args, kwargs)


# ---- the run ------------------------------------------------------------------------------


def parse_ablation(text: str) -> tuple[str, dict[str, Any]]:
    """``"name: training.learning_rate=1e-4 loss.name=bce"`` -> (name, overrides)."""
    import yaml

    name, _, rest = text.partition(":")
    overrides = {}
    for item in rest.split():
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return name.strip(), overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="squad")
    parser.add_argument("--data", type=Path, help="the domain's BEIR folder (default: under ../shared/data)")
    parser.add_argument(
        "--max-query-words", type=int, help="cut queries to this many words (arguana default 60)"
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_qlora.yaml"))
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "quality")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--train-queries", type=int, help="default 600 (--quick: 400)")
    parser.add_argument("--test-queries", type=int, help="default 200 (--quick: 150)")
    parser.add_argument("--mined-negatives", type=int, default=15)
    parser.add_argument(
        "--mining",
        choices=["bm25", "dense", "hybrid"],
        default="bm25",
        help="the first stage that mines the training negatives and the validation file's candidates "
        "(the test questions, and rerankit's validation as deployed, keep BM25's top-k)",
    )
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument(
        "--peer-lr",
        type=float,
        action="append",
        help="peer learning rate, repeatable (one peer run each); default 1e-4, "
        "which beat sentence-transformers' documented 2e-5 here",
    )
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--no-default",
        action="store_true",
        help="skip the default recipe's row (ablations only; the same files give the same row as before)",
    )
    parser.add_argument(
        "--no-lora",
        action="store_true",
        help="skip the row of LoRA on the full-precision base (the same recipe without 4-bit quantization)",
    )
    parser.add_argument(
        "--ablation",
        action="append",
        default=[],
        help='extra rerankit run: "name: key=value ..." (config overrides)',
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="override for the main rerankit run (and ablations), key=value",
    )
    parser.add_argument(
        "--quick", action="store_true", help="400 train / 150 test questions (the slice of the ablations)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--score-windows",
        action="store_true",
        help="score each trained run a second time by windows (long_documents mode windows, MaxP) "
        "beside its own setting",
    )
    parser.add_argument(
        "--teacher",
        choices=["bm25", "ensemble"],
        default="bm25",
        help="the mined lines' scores, the teacher of loss.distillation: BM25's, or BM25 and the "
        "backbone's cosine z-scored and summed per line (the untrained self-ensemble)",
    )
    parser.add_argument(
        "--reuse-runs",
        action="store_true",
        help="score a run folder the same --work already holds finished instead of training it again",
    )
    args = parser.parse_args(argv)

    from rerankit.config import load_config
    from rerankit.model_builder import training_precision

    args.data = args.data or DOMAINS[args.domain]
    if args.domain == "arguana" and args.max_query_words is None:
        args.max_query_words = 60
    base = dict(parse_ablation("main: " + " ".join(args.overrides))[1])
    # the mined scores are what distillation, score injection and the ensemble teacher read as
    # BM25's; another miner's would train on one score and test on another
    reads_scores = ("loss.distillation", "model.score_injection")
    overridden = [base, *(parse_ablation(a)[1] for a in args.ablation)]
    uses_scores = any(o.get(k) not in (None, False, "none") for o in overridden for k in reads_scores)
    if args.mining != "bm25" and (args.teacher != "bm25" or uses_scores):
        parser.error("--mining other than bm25 excludes --teacher ensemble, distillation and score injection")
    args.train_queries = args.train_queries or (400 if args.quick else 600)
    args.test_queries = args.test_queries or (150 if args.quick else 200)
    # One pass over many questions beats several over few, and keeps the run near 30 minutes.
    base.setdefault("training.epochs", 1)
    cfg = load_config(args.config, base)
    suffix = f"_{args.domain}" + ("_quick" if args.quick else "")
    work = args.work / args.domain / ("quick" if args.quick else "full")
    started = time.perf_counter()

    sides = (
        split_by_article(args.data)
        if args.domain == "squad"
        else split_by_debate(args.data, args.max_query_words)
    )
    files = prepare_training_files(
        sides["train"], args.train_queries, args.mined_negatives, args.seed, work / "data", args.mining
    )
    if args.teacher == "ensemble":
        ensemble_teacher(files["train"])
    # Retrieved as deep as the depth table reads; every other row reranks the top --top-k.
    deep = first_stage_candidates(sides["all"], args.test_queries, max(args.top_k, *DEPTHS), args.seed)
    test = at_depth(deep, args.top_k)
    files["corpus_file"] = write_corpus(sides["all"][0], work / "data" / "corpus.jsonl")
    print(
        f"[{(time.perf_counter() - started) / 60:.1f} min] train side: {files['train_queries']} "
        f"+ {files['valid_queries']} valid questions; test side: {len(test['qids'])} questions "
        f"over {len(test['docs'])} paragraphs",
        flush=True,
    )

    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        shown = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in row.items()
            if k in ("name", "ndcg@10", "mrr@10", "wall_s", "peak_rss_mib")
        }
        print(f"[{(time.perf_counter() - started) / 60:.1f} min] {shown}", flush=True)

    from rerankit.fusion import rrf

    add({"name": f"BM25 top-{args.top_k} (bm25s)", **metrics_of(test, test["bm25"])})
    dense = dense_scores(test)
    add({"name": "MiniLM bi-encoder (cosine)", **metrics_of(test, dense)})
    # A hybrid first stage (BM25 and the bi-encoder fused), the other bar a reranker must clear.
    add(
        {
            "name": "BM25 ⊕ bi-encoder (RRF, hybrid first stage)",
            "fused": True,
            **metrics_of(test, [rrf([b, d]) for b, d in zip(test["bm25"], dense)]),
        }
    )
    add(
        {
            "name": "untrained cross-encoder",
            **metrics_of(test, score_with(untrained_reranker(cfg.model.max_length, cfg.seed), test)),
        }
    )

    from rerankit.inference import Reranker

    depth_rows: list[dict[str, Any]] = [
        {
            "name": "first stage (BM25)",
            **{str(d): metrics_of(at_depth(deep, d), at_depth(deep, d)["bm25"]) for d in DEPTHS},
        }
    ]

    def add_trained(name: str, trained: dict[str, Any], reranker, **extra) -> None:
        if reranker.ensemble is not None:  # rerankit's default: the self-ensemble
            logits, final = ensemble_scores(reranker, deep)
            alone = [x[: args.top_k] for x in logits]
            add({"name": f"{name}: cross-encoder alone (ensemble none)", **extra, **metrics_of(test, alone)})
            depth_rows.append({"name": f"{name}: cross-encoder alone", **depth_table(deep, logits)})
            depth_rows.append({"name": f"{name}: default rerank (self-ensemble)", **depth_table(deep, final)})
            scores = [x[: args.top_k] for x in final]
            name = f"{name}: default rerank (self-ensemble {ensemble_weights(reranker)})"
        else:
            scores = score_with(reranker, test)
        add({"name": name, **extra, **trained, **metrics_of(test, scores)})
        if reranker.fusion is not None:  # learned on the run's validation queries, never on these
            add(
                {
                    "name": f"{name} ⊕ BM25 ({reranker.fusion_name}, fitted on validation)",
                    "fused": True,
                    **metrics_of(test, [reranker.fuse(s, [b]) for b, s in zip(test["bm25"], scores)]),
                }
            )
        # The lever `rerankit eval` and `Reranker.rerank(first_stage=...)` offer: RRF with the first stage(s).
        add(
            {
                "name": f"{name} ⊕ BM25 (RRF)",
                "fused": True,
                **metrics_of(test, [rrf([b, s]) for b, s in zip(test["bm25"], scores)]),
            }
        )
        add(
            {
                "name": f"{name} ⊕ BM25 ⊕ bi-encoder (RRF)",
                "fused": True,
                **metrics_of(test, [rrf([b, d, s]) for b, d, s in zip(test["bm25"], dense, scores)]),
            }
        )

    runs = [] if args.no_default else [(f"rerankit (QLoRA, {cfg.loss.name} loss)", base)]
    if not args.no_lora:
        # What the 4-bit base costs or saves on this small backbone, measured beside it.
        runs.append(
            (
                f"rerankit (LoRA on the full-precision base, {cfg.loss.name} loss)",
                {**base, "quantization.mode": "none"},
            )
        )
    runs += [(name, {**base, **o}) for name, o in map(parse_ablation, args.ablation)]
    for i, (name, overrides) in enumerate(runs):
        folder = work / f"rerankit_{i}"
        if args.reuse_runs and (folder / "run.json").is_file():  # finished before: only score it
            trained = reused_run(folder)
        else:
            trained = in_fresh_process(train_rerankit, args.config, files, str(folder), overrides)
        add_trained(name, trained, Reranker.load(trained["path"]), overrides=overrides)
        if args.score_windows:  # the same weights reading every window of a long document
            windows = Reranker.load(trained["path"], long_documents={"mode": "windows", "aggregate": "max"})
            add_trained(f"{name}, scored by windows (MaxP)", {}, windows, overrides=overrides)
    for i, lr in enumerate([] if args.no_peer else args.peer_lr or [1e-4]):
        trained = in_fresh_process(
            train_peer,
            files,
            str(work / f"peer_{i}"),
            epochs=cfg.training.epochs,
            num_negatives=cfg.sampling.num_negatives,
            queries_per_step=cfg.training.batch_size,
            max_length=cfg.model.max_length,
            learning_rate=lr,
            # As rerankit's own precision resolves: bf16 only where the hardware runs it natively.
            bf16=training_precision(cfg) == "bf16",
            seed=cfg.seed,
        )
        add_trained(
            f"sentence-transformers CrossEncoderTrainer (BCE, lr {lr:.0e})",
            trained,
            Reranker.load(trained["path"]),
        )

    result = {
        "protocol": {
            "domain": args.domain,
            "max_query_words": args.max_query_words,
            "data": _shown(args.data),
            "test_articles": sorted(TEST_ARTICLES, key=int),
            "test_queries": len(test["qids"]),
            "test_corpus": len(test["docs"]),
            "top_k": args.top_k,
            **files,
            "config": _shown(args.config),
            "epochs": cfg.training.epochs,
            "seed": args.seed,
        },
        "machine": {
            "cpu": cpu_line(),
            "cores": multiprocessing.cpu_count(),
            # bf16 autocast where the CPU runs it natively, fp32 elsewhere: rows trained in
            # different precisions are not strictly comparable.
            "training_precision": training_precision(cfg),
        },
        "rows": rows,
        "depth_rows": depth_rows,
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d"),
        "total_s": time.perf_counter() - started,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"quality{suffix}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.results / f"quality{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _shown(path) -> str:
    """A path relative to the repository when it lies inside it, so results read the same anywhere."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(Path("..") / path.relative_to(ROOT.parent)) if ROOT.parent in path.parents else str(path)


def machine_text(machine: dict[str, Any]) -> str:
    """Cores, CPU and training precision; results from before they were recorded show cores alone."""
    text = f"{machine['cores']} CPU cores"
    if "training_precision" in machine:
        text += f" ({machine['cpu']}), training in {machine['training_precision']}"
    return text


MINERS = {"bm25": "BM25", "dense": "the backbone's cosine", "hybrid": "BM25 and the backbone's cosine"}


def markdown(result: dict[str, Any]) -> str:
    p = result["protocol"]
    bm25 = result["rows"][0]["ndcg@10"]
    lines = [
        (
            f"# Quality on {DOMAIN_TITLES[p.get('domain', 'squad')]} ({p['test_queries']} test questions, "
            f"BM25 top-{p['top_k']} of all {p['test_corpus']} documents)"
        ),
        "",
        (
            f"Training: {p['train_queries']} questions (+{p['valid_queries']} validation) from "
            f"the train side, {p['mined_negatives']} negatives each mined by "
            f"{MINERS[p.get('mined_by', 'bm25')]}, "
            f"{p['epochs']:g} epoch(s), seed {p['seed']}; {machine_text(result['machine'])}"
            + (f"; queries cut to {p['max_query_words']} words." if p.get("max_query_words") else ".")
        ),
        "",
        "| | NDCG@10 | Δ vs BM25 | MRR@10 | train wall | peak RSS | best valid NDCG@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        wall = f"{row['wall_s']:.0f} s" if "wall_s" in row else ""
        rss = f"{row['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in row else ""
        valid = row.get("valid_best", {}).get("ndcg@10")
        lines.append(
            f"| {row['name']} | {row['ndcg@10']:.4f} | {row['ndcg@10'] - bm25:+.4f} | "
            f"{row['mrr@10']:.4f} | {wall} | {rss} | "
            f"{'' if valid is None else f'{valid:.4f}'} |"
        )
    lines += ensemble_targets(result)
    ours = next((r for r in result["rows"] if r["name"].startswith("rerankit")), None)
    peers = [
        r for r in result["rows"] if r["name"].startswith("sentence-transformers") and not r.get("fused")
    ]
    if ours is not None and p.get("domain", "squad") == "squad":  # the earlier targets are SQuAD's
        met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
        gain = ours["ndcg@10"] - bm25
        lines += ["", f"Target: the reranker alone ≥ BM25: {gain:+.4f}, {met(round(gain, 4) >= 0)}."]
        fused = [r for r in result["rows"] if r["name"].startswith("rerankit") and r.get("fused")]
        if fused:
            best = max(fused, key=lambda r: r["ndcg@10"])
            lines.append(
                f"Target: a fused pipeline ≥ 0.90 NDCG@10: best {best['ndcg@10']:.4f} ({best['name']}), "
                f"{met(round(best['ndcg@10'], 4) >= 0.90)}."
            )
        if peers:
            best_peer = max(r["ndcg@10"] for r in peers)
            margin = ours["ndcg@10"] - best_peer
            lines.append(
                f"Target rerankit above the sentence-transformers peer: "
                f"{margin:+.4f} against its best run, {met(margin > 0)}."
            )
    lines += ["", *depth_markdown(result.get("depth_rows") or [])]
    lines += [
        "",
        (
            f"Whole benchmark: {result['total_s'] / 60:.1f} min (`python benchmarks/quality.py --domain "
            f"{p.get('domain', 'squad')}`), {result.get('date', '')}, commit {result.get('commit', '')}."
        ),
        "",
    ]
    return "\n".join(lines)


def ensemble_targets(result: dict[str, Any]) -> list[str]:
    """The targets of the default recipe (the self-ensemble) on this domain."""
    rows = result["rows"]
    default = next((r for r in rows if "default rerank" in r["name"] and not r.get("fused")), None)
    if default is None:
        return []
    piped = next((r for r in rows if "default rerank" in r["name"] and "learned" in r["name"]), None)
    bm25, cosine = rows[0]["ndcg@10"], rows[1]["ndcg@10"]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = ["", f"Default `rerank` (the self-ensemble): {default['ndcg@10']:.4f}."]
    if result["protocol"].get("domain", "squad") == "squad":
        lines.append(f"Target default ≥ 0.87: {met(round(default['ndcg@10'], 4) >= 0.87)}.")
        if piped:
            lines.append(
                f"Target with first-stage scores ≥ 0.89: {piped['ndcg@10']:.4f}, "
                f"{met(round(piped['ndcg@10'], 4) >= 0.89)}."
            )
    else:
        bar = max(bm25, cosine) + 0.03
        lines.append(
            f"Target default ≥ max(BM25, cosine) + 0.03 = {bar:.4f}: {met(default['ndcg@10'] >= bar)}."
        )
    if any(r.get("reused") for r in rows):
        lines.append("The trained run was reused from an earlier run of the same protocol (`--reuse-runs`).")
    return lines


def depth_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """NDCG@10 when the reranker reorders the first stage's top 10, 30 or 100."""
    if not rows:
        return []
    lines = [
        "## Rerank depth (NDCG@10 reordering the first stage's top d)",
        "",
        "| | " + " | ".join(f"d = {d}" for d in DEPTHS) + " |",
        "|---|" + "---:|" * len(DEPTHS),
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | " + " | ".join(f"{row[str(d)]['ndcg@10']:.4f}" for d in DEPTHS) + " |"
        )
    return lines


if __name__ == "__main__":
    main()
