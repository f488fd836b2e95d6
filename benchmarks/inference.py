"""Inference speed: rerankit's runtimes against sentence-transformers' fastest backends.

    bash benchmarks/peer_envs.sh       # once: the peers' own environments (.peers/)
    python benchmarks/inference.py [--model outputs/demo] [--repeats 3]

The demo run is exported with its OpenVINO and ONNX graphs (fp32 and int8, behind the
accuracy gate). Every contender runs in its own process (sentence-transformers' ONNX and
OpenVINO backends in their own environments: their optimum pins clash with rerankit's
transformers) and scores the same (query, paragraph) pairs: SQuAD dev questions with their BM25
top-k paragraphs from ../shared/data/squad-v1.1-dev. Timed passes alternate between the
contenders and the median is reported, with the single 20-document request latency. Quality
is measured on other questions: identical top-10 order and largest |Δ logit| against
sentence-transformers torch fp32, and NDCG@10. The table ends with the machine's GEMM rates and
each row's share of them at the FLOPs per pair of the timing set. Writes
benchmarks/results/inference_<CPU class>.{json,md} (avx2, avx512, avx512_bf16), the CPU's
name and flags above the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_line  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"


def load_pairs(n_queries: int, top_k: int, seed: int = 0):
    """n_queries SQuAD questions, their BM25 top_k paragraphs, and qrels over those."""
    import random

    from rerankit.beir import read_corpus, read_qrels, read_queries
    from rerankit.held_out import first_stage_top_k

    corpus = read_corpus(DATA / "corpus.jsonl")
    queries = read_queries(DATA / "queries.jsonl")
    positive = {
        q: next(d for d, grade in judged.items() if grade > 0)
        for q, judged in read_qrels(DATA / "qrels" / "test.tsv").items()
    }
    qids = random.Random(seed).sample(sorted(positive), n_queries)
    hits = first_stage_top_k(corpus, [queries[q] for q in qids], top_k, "bm25")
    doc_ids = [hit.ids for hit in hits]
    qrels = {
        str(i): {d: int(d == positive[q]) for d in ids} | {positive[q]: 1}
        for i, (q, ids) in enumerate(zip(qids, doc_ids))
    }
    return [queries[q] for q in qids], [[corpus[d] for d in row] for row in doc_ids], doc_ids, qrels


def prepare_model(model: str | None) -> str:
    """A merged model folder: the given one, the demo run exported, or MiniLM with a seeded head."""
    if model and (Path(model) / "run.json").exists():
        from rerankit.export import export

        out = Path(tempfile.mkdtemp()) / "merged"
        return str(export(model, out))
    if model:
        return model
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path

    base = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp()) / "minilm-ce"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def top10_agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> int:
    return sum(
        list(np.argsort(-a, kind="stable")[:10]) == list(np.argsort(-b, kind="stable")[:10])
        for a, b in zip(reference, other)
    )


ST_PEERS = {
    "onnx": ["ST ONNX fp32", "ST ONNX O3", "ST ONNX int8 (dynamic, avx2)"],
    "openvino": ["ST OpenVINO fp32", "ST OpenVINO default", "ST OpenVINO int8 (static)"],
}
RUN_ROWS = ["rerankit run folder, default", "rerankit run folder, cross-encoder alone"]
RERANKIT = [
    "rerankit torch fp32",
    "rerankit openvino fp32",
    "rerankit openvino int8",
    "rerankit onnx fp32",
    "rerankit onnx int8",
    "rerankit default (auto)",
]
REFERENCE = "ST torch fp32"


def is_run(model: str) -> bool:
    return (Path(model) / "run.json").exists()


def results_name(cpu: str) -> str:
    """The results file of this CPU class: CPUs with bf16 units, with AVX512 or with AVX2 only
    run different kernels, so each class keeps its own table."""
    flags = set(cpu.split("flags:", 1)[-1].split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        return "inference_avx512_bf16"
    return "inference_avx512" if "avx512f" in flags else "inference_avx2"


def export_with_graphs(run: str, out: Path) -> Path:
    """The run exported with fp32 and int8 graphs of both runtimes (accuracy gate measured)."""
    from rerankit.export import export

    if (out / "rerankit_export.json").exists():
        return out
    return export(run, out, formats=["openvino", "onnx"], quantize="int8", force=True)


def hf_files_only(export_dir: Path, out: Path) -> Path:
    """The merged HF model of an export without its graphs: what the peers start from."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        export_dir, out, ignore=shutil.ignore_patterns("openvino", "onnx", "rerankit_export.json")
    )
    return out


class Worker:
    """One contender's process (benchmarks/inference_worker.py)."""

    def __init__(self, name: str, python: str, model: Path, pairs_file: Path, max_length: int) -> None:
        import subprocess

        self.name = name
        self.log = open(pairs_file.parent / f"{name}.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                python,
                str(ROOT / "benchmarks/inference_worker.py"),
                "--contender",
                name,
                "--model",
                str(model),
                "--pairs",
                str(pairs_file),
                "--max-length",
                str(max_length),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} died; see its log next to the pairs file")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, BrokenPipeError, ValueError):
            self.ask(cmd="quit")
        self.proc.wait(timeout=60)
        self.log.close()


def gemm_rates(threads: int) -> dict[str, float]:
    """GFLOP/s (int8: GOP/s) of a BERT-sized GEMM (2048 × 384 × 1536) on this machine."""
    import torch

    m, k, n = 2048, 384, 1536
    ops = 2 * m * k * n

    def rate(run) -> float:
        for _ in range(3):
            run()
        started, repeats = time.perf_counter(), 20
        for _ in range(repeats):
            run()
        return round(ops * repeats / (time.perf_counter() - started) / 1e9, 1)

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        rates[f"torch {name}"] = rate(lambda a=a, b=b: a @ b)
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [k, n]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options)
    feeds = {
        "a": np.random.randint(0, 255, (m, k), dtype=np.uint8),
        "b": np.random.randint(-127, 127, (k, n), dtype=np.int8),
    }
    rates["onnxruntime int8"] = rate(lambda: session.run(None, feeds))
    return rates


def flops_per_pair(model_dir: Path, tokenizer, pairs, max_length: int, max_tokens: int = 2048) -> float:
    """Encoder FLOPs per pair at the padded lengths of rerankit's token-budget batches."""
    from transformers import AutoConfig

    from rerankit.scoring import budget_batches

    config = AutoConfig.from_pretrained(model_dir)
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    encoded, batches = budget_batches(
        tokenizer,
        [q for q, _ in pairs],
        [d for _, d in pairs],
        max_length=max_length,
        max_tokens=max_tokens,
        max_batch=128,
    )
    lengths = [len(ids) for ids in encoded["input_ids"]]
    total = 0.0
    for batch in batches:
        b, width = len(batch), max(lengths[i] for i in batch)
        total += layers * (b * width * (8 * h * h + 4 * h * ffn) + 4 * b * width * width * h)
    return total / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(ROOT / "outputs/demo") if (ROOT / "outputs/demo/run.json").exists() else None
    )
    parser.add_argument("--export", type=Path, default=None, help="Reuse this export (with graphs).")
    parser.add_argument("--queries", type=int, default=20, help="Timed questions (× top-k pairs).")
    parser.add_argument("--quality-queries", type=int, default=60, help="Other questions for quality.")
    parser.add_argument("--top-k", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--peers", type=Path, default=ROOT / ".peers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument(
        "--name",
        default=None,
        help="Results file name (default: by the CPU's widest units, e.g. inference_avx2).",
    )
    args = parser.parse_args()

    import torch

    from rerankit.loading import bf16_is_native, load_tokenizer
    from rerankit.ranking_metrics import ranking_metrics

    if args.export is None and args.model is None:
        parser.error("give --model RUN (a run folder, e.g. outputs/demo) or --export EXPORT (with graphs)")
    work = Path(tempfile.mkdtemp(prefix="rerankit-inference-"))
    export_dir = args.export or export_with_graphs(args.model, work / "export")
    peer_dir = hf_files_only(export_dir, work / "hf")
    gate = json.loads((export_dir / "rerankit_export.json").read_text())["accuracy_gate"]

    queries, candidates, doc_ids, qrels = load_pairs(args.queries + args.quality_queries, args.top_k)
    flat = lambda rows: [(q, d) for q, docs in zip(queries[rows], candidates[rows]) for d in docs]
    timed, quality = slice(0, args.queries), slice(args.queries, None)
    sets = {
        "timing": flat(timed),
        "quality": flat(quality),
        "request": [(queries[0], d) for d in candidates[0][:20]],
        "calibration": flat(timed)[:300],
    }
    pairs_file = work / "pairs.json"
    pairs_file.write_text(json.dumps(sets))

    contenders = [(REFERENCE, sys.executable)]
    for extra, names in ST_PEERS.items():
        python = args.peers / f"st-{extra}" / "bin" / "python"
        if python.exists():
            contenders += [(name, str(python)) for name in names]
        else:
            print(f"skipping {names}: {python} missing (run benchmarks/peer_envs.sh)", file=sys.stderr)
    bf16_rows = ["rerankit torch bf16", "rerankit openvino bf16"] if bf16_is_native("cpu") else []
    rerankit_rows = RERANKIT + bf16_rows + (RUN_ROWS if args.model and is_run(args.model) else [])
    contenders += [(name, sys.executable) for name in rerankit_rows]

    workers = []
    for name, python in contenders:  # one at a time: loads and exports do not overlap
        print(f"starting {name}", file=sys.stderr, flush=True)
        workers.append(
            Worker(
                name,
                python,
                args.model if name in RUN_ROWS else export_dir if name.startswith("rerankit") else peer_dir,
                pairs_file,
                args.max_length,
            )
        )
    try:
        scores, seconds, latency = {}, {w.name: [] for w in workers}, {}
        for w in workers:  # quality pass (also a warm-up of the timed sizes)
            print(f"quality: {w.name}", file=sys.stderr, flush=True)
            scores[w.name] = np.asarray(w.ask(cmd="score", set="quality")["scores"], dtype=np.float64)
        for repeat in range(args.repeats):  # alternate so drift hits every contender alike
            for w in workers:
                seconds[w.name].append(w.ask(cmd="score", set="timing")["seconds"])
            print(f"timed round {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        for w in workers:
            latency[w.name] = statistics.median(w.ask(cmd="latency", repeats=args.latency_repeats)["seconds"])
    finally:
        for w in workers:
            w.close()
    ready = {w.name: w.ready.get("runtime", "") for w in workers}

    quality_ids = doc_ids[quality]
    quality_qrels = {str(i): qrels[str(args.queries + i)] for i in range(len(quality_ids))}
    bounds = np.cumsum([0] + [len(c) for c in candidates[quality]])

    def per_query(values) -> list[np.ndarray]:
        return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def ndcg(values) -> float:
        run = {str(i): dict(zip(ids, s)) for i, (ids, s) in enumerate(zip(quality_ids, per_query(values)))}
        return ranking_metrics(quality_qrels, run)["ndcg@10"]

    rates = gemm_rates(torch.get_num_threads())
    tokenizer = load_tokenizer(str(export_dir))
    flops = flops_per_pair(export_dir, tokenizer, sets["timing"], args.max_length)
    reference_ndcg = ndcg(scores[REFERENCE])
    reference_time = statistics.median(seconds[REFERENCE])
    ov_default = "ST OpenVINO default"
    ov_default_time = statistics.median(seconds[ov_default]) if ov_default in seconds else None
    rows = []
    for name, _ in contenders:
        median = statistics.median(seconds[name])
        rate = len(sets["timing"]) / median
        same = top10_agreement(per_query(scores[REFERENCE]), per_query(scores[name]))
        runtime = name + " " + ready[name]  # auto: the runtime it picked
        bound_name = (
            "onnxruntime int8" if "int8" in runtime else ("torch bf16" if "bf16" in runtime else "torch fp32")
        )
        rows.append(
            {
                "contender": name,
                "runtime": ready[name],
                "pairs_per_s": round(rate, 1),
                "x_st_torch": round(reference_time / median, 2),
                "x_st_openvino_default": round(ov_default_time / median, 2) if ov_default_time else None,
                "identical_top10": f"{same}/{len(quality_ids)}",
                "max_abs_logit_delta": float(np.max(np.abs(scores[name] - scores[REFERENCE]))),
                "ndcg@10": round(ndcg(scores[name]), 4),
                "ndcg@10_delta": round(ndcg(scores[name]) - reference_ndcg, 4),
                "latency_20_docs_ms": round(latency[name] * 1000, 1),
                "bound": bound_name,
                "share_of_bound": round(rate * flops / (rates[bound_name] * 1e9), 3),
            }
        )
    default = next((r for r in gate["runtimes"] if r["file"] is None), None)
    import datetime
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "timed_pairs": len(sets["timing"]),
        "quality_pairs": len(sets["quality"]),
        "quality_queries": len(quality_ids),
        "top_k": args.top_k,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "model": args.model,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "cpu": cpu_line(),
        "gemm_gflops": rates,
        "gflop_per_pair": round(flops / 1e9, 3),
        "accuracy_gate": gate["runtimes"],
        "torch_default_in_gate": default is not None,
    }
    table = [
        "| contender | pairs/s | × ST torch | × ST OpenVINO default | identical top-10 | max abs Δ logit "
        "| NDCG@10 | ΔNDCG@10 | 20-doc request ms | share of bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    picked = lambda r: "auto" in r["contender"] or r["contender"] in RUN_ROWS
    table += [
        f"| {r['contender']}{' → ' + r['runtime'] if picked(r) else ''} | "
        f"{r['pairs_per_s']} | {r['x_st_torch']} | {r['x_st_openvino_default'] or '–'} | "
        f"{r['identical_top10']} | "
        f"{r['max_abs_logit_delta']:.2e} | {r['ndcg@10']} | {r['ndcg@10_delta']:+.4f} | "
        f"{r['latency_20_docs_ms']} | {r['share_of_bound']:.0%} ({r['bound']}) |"
        for r in rows
    ]
    bound_line = ", ".join(f"{k} {v} GFLOP/s" for k, v in rates.items())
    text = (
        f"CPU: {meta['cpu']}\n\n"
        + "\n".join(table)
        + (
            f"\n\nGEMM on this machine ({meta['threads']} threads): {bound_line}. "
            f"{meta['gflop_per_pair']} GFLOP per pair at rerankit's padded lengths."
        )
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or results_name(meta["cpu"])
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(
        f"# Inference speed ({meta['timed_pairs']} timed pairs: {args.queries} questions × BM25 "
        f"top-{args.top_k}; quality on {meta['quality_queries']} other questions; {meta['cores']} cores, "
        f"torch {meta['torch']}; {meta['date']}, commit {meta['commit']})\n\n{text}\n"
    )

    shutil.rmtree(work, ignore_errors=True)  # scratch: the export (unless given), model copies


if __name__ == "__main__":
    main()
