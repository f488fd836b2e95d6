"""int8 graphs on this CPU: which quantizations keep a trained model's ranking, and what they buy.

    python benchmarks/int8_variants.py [--model outputs/demo] [--depth 10] [--timed-pairs 400]

The run is exported (merged, fp32) and converted into an ONNX and an OpenVINO fp32 graph. Each
int8 variant below scores the records of the run's validation split (each query's first
``--depth`` candidates: what ``rerankit export`` gates on) and is judged as the gate judges it
(``rerankit.graph_export``): NDCG@10 change against the torch fp32 model, the one-sided 95 %
upper bound of its loss (paired bootstrap over the queries), the share of queries whose top 10
kept its order. Every variant is then timed on the same validation pairs, the variants taking
turns, and the median of ``--repeats`` passes is reported. The variants:

- rerankit's own int8 graphs (``runtimes.quantize_int8``): OpenVINO static (NNCF, calibrated on
  256 validation pairs drawn with ``--seed``: not the run's own draw, so its figures can differ
  from the run's gate) and ONNX Runtime dynamic (u8 activations, s8 weights per channel);
- ONNX Runtime dynamic with 7-bit weights (``reduce_range``, ONNX Runtime's advice for CPUs
  without VNNI) and with u8 weights (the weight type of optimum's ``avx2`` config; optimum also
  quantizes the attention's activation-by-activation MatMuls and the embeddings, which these
  variants leave in fp32: every ONNX variant here quantizes the weight MatMuls only);
- the ONNX graph with ONNX Runtime's BERT fusions (``onnxruntime.transformers.optimizer``), in
  fp32 and quantized both ways;
- OpenVINO with int8 weights and fp32 activations (``nncf.compress_weights``).

Writes benchmarks/results/int8_variants_<CPU class>.{json,md} (avx2, avx512, avx512_bf16), the
CPU's name and flags above the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import cpu_line  # noqa: E402


def onnx_dynamic(source: Path, out: Path, *, fused: bool = False, **options) -> Path:
    """ONNX Runtime's dynamic int8 of ``source``'s weighted MatMuls (``options``: weight type,
    reduce_range), per channel; an unfused graph after the shape pre-processing rerankit's
    export runs."""
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source
    if not fused:
        prepared = out.with_name(out.stem + ".prepared.onnx")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    # fused nodes (BiasGelu, SkipLayerNormalization) carry no type the quantizer can infer
    extra = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT
    quantize_dynamic(
        str(prepared),
        str(out),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        extra_options=extra,
        **options,
    )
    if not fused:
        prepared.unlink()
    return out


def bert_fused(source: Path, out: Path, config) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # the embeddings' fusion is one ONNX Runtime's quantizer cannot read (optimum turns it off too)
    options.enable_embed_layer_norm = False
    fused = optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
    )
    fused.save_model_to_file(str(out))
    return out


def openvino_weights_int8(source: Path, out: Path) -> Path:
    import nncf
    import openvino as ov

    model = nncf.compress_weights(ov.Core().read_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def build_variants(reranker, vset, folder: Path, seed: int) -> dict[str, tuple[Path, str, str]]:
    """Every graph file: name → (path, backend, precision as rerankit loads it)."""
    from onnxruntime.quantization import QuantType

    from rerankit.graph_export import _batches, _sample_pairs
    from rerankit.runtimes import GRAPH_FILES, convert, example_batch, quantize_int8

    example = example_batch(reranker.tokenizer, reranker.max_length, reranker.prompt)
    onnx_fp32 = convert(reranker.model, example, "onnx", folder / GRAPH_FILES[("onnx", "fp32")])
    ov_fp32 = convert(reranker.model, example, "openvino", folder / GRAPH_FILES[("openvino", "fp32")])
    queries, docs = vset.flat_pairs(reranker.score_injection)
    calibration = _batches(reranker, _sample_pairs(queries, docs, 256, seed))
    onnx_dir, ov_dir = onnx_fp32.parent, ov_fp32.parent
    fused = bert_fused(onnx_fp32, onnx_dir / "fused.onnx", reranker.model.config)
    return {
        "OpenVINO fp32": (ov_fp32, "openvino", "fp32"),
        "OpenVINO int8 static (rerankit's)": (
            quantize_int8(ov_fp32, "openvino", ov_dir / "static_int8.xml", calibration),
            "openvino",
            "int8",
        ),
        "OpenVINO int8 weights, fp32 activations": (
            openvino_weights_int8(ov_fp32, ov_dir / "weights_int8.xml"),
            "openvino",
            "fp32",
        ),
        "ONNX fp32": (onnx_fp32, "onnx", "fp32"),
        "ONNX int8 dynamic u8s8 (rerankit's)": (
            quantize_int8(onnx_fp32, "onnx", onnx_dir / "u8s8.onnx"),
            "onnx",
            "int8",
        ),
        "ONNX int8 dynamic u8s8, 7-bit weights": (
            onnx_dynamic(
                onnx_fp32, onnx_dir / "u8s8_7bit.onnx", weight_type=QuantType.QInt8, reduce_range=True
            ),
            "onnx",
            "int8",
        ),
        "ONNX int8 dynamic u8u8": (
            onnx_dynamic(onnx_fp32, onnx_dir / "u8u8.onnx", weight_type=QuantType.QUInt8),
            "onnx",
            "int8",
        ),
        "ONNX fp32, BERT fusions": (fused, "onnx", "fp32"),
        "ONNX fused, int8 dynamic u8s8": (
            onnx_dynamic(fused, onnx_dir / "fused_u8s8.onnx", fused=True, weight_type=QuantType.QInt8),
            "onnx",
            "int8",
        ),
        "ONNX fused, int8 dynamic u8u8": (
            onnx_dynamic(fused, onnx_dir / "fused_u8u8.onnx", fused=True, weight_type=QuantType.QUInt8),
            "onnx",
            "int8",
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "outputs/demo"), help="a finished run folder")
    parser.add_argument("--depth", type=int, default=10, help="candidates per validation query")
    parser.add_argument("--timed-pairs", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="draw of the static int8's calibration pairs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", help="results file name (default: int8_variants_<CPU class>)")
    args = parser.parse_args()

    from inference import results_name

    from rerankit.export import export
    from rerankit.graph_export import _agreement, _ndcg, run_validation_set
    from rerankit.inference import Reranker
    from rerankit.runtimes import load_graph

    work = Path(tempfile.mkdtemp(prefix="rerankit-int8-"))
    vset = run_validation_set(Path(args.model))[0].at_depth(args.depth)
    reference = Reranker.load(str(export(args.model, work / "merged")), backend="torch", dtype="float32")
    queries, docs = vset.flat_pairs(reference.score_injection)
    print(f"torch fp32: scoring {len(vset)} validation queries, {len(queries)} pairs", file=sys.stderr)
    reference_logits = reference.input_logits(queries, docs)[0]
    reference_ndcg = _ndcg(vset, reference_logits)
    variants = build_variants(reference, vset, work / "graphs", args.seed)

    scorers, rows = {}, []
    for name, (path, backend, precision) in variants.items():
        print(f"{name}: scoring", file=sys.stderr, flush=True)
        scorer = Reranker(
            load_graph(path, backend, precision),
            reference.tokenizer,
            max_length=reference.max_length,
            long_documents=reference.long_documents,
            prompt=reference.prompt,
        )
        figures = _agreement(vset, reference_logits, scorer.input_logits(queries, docs)[0], reference_ndcg)
        scorers[name] = scorer
        rows.append({"variant": name, "file": path.name, **figures})
    timed_queries, timed_docs = queries[: args.timed_pairs], docs[: args.timed_pairs]
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    for repeat in range(args.repeats):  # in turns, so drift hits every variant alike
        for name, scorer in scorers.items():
            started = time.perf_counter()
            scorer.input_logits(timed_queries, timed_docs)
            seconds[name].append(time.perf_counter() - started)
        print(f"timed round {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    fp32_rate = len(timed_queries) / statistics.median(seconds["OpenVINO fp32"])
    for row in rows:
        rate = len(timed_queries) / statistics.median(seconds[row["variant"]])
        row["pairs_per_second"] = round(rate, 1)
        row["x_openvino_fp32"] = round(rate / fp32_rate, 2)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {
        "date": datetime.date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "cpu": cpu_line(),
        "model": args.model,
        "validation_queries": len(vset),
        "validation_pairs": len(queries),
        "timed_pairs": len(timed_queries),
        "repeats": args.repeats,
        "reference_ndcg@10": reference_ndcg,
    }
    table = [
        "| variant | pairs/s | × OpenVINO fp32 | NDCG@10 | Δ vs torch fp32 | loss bound (95 %) "
        "| identical top-10 | max abs Δ logit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['variant']} | {r['pairs_per_second']} | {r['x_openvino_fp32']} | {r['ndcg@10']:.4f} | "
        f"{r['ndcg@10_delta']:+.4f} | {r['ndcg@10_loss_upper_bound']:.4f} | {r['identical_top10']:.0%} | "
        f"{r['max_abs_logit_delta']:.3g} |"
        for r in rows
    ]
    text = f"CPU: {meta['cpu']}\n\n" + "\n".join(table)
    print(text)
    name = args.name or results_name(meta["cpu"]).replace("inference", "int8_variants")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(
        f"# int8 graphs of {args.model} ({len(vset)} validation queries × their first {args.depth} "
        f"candidates, torch fp32 NDCG@10 {reference_ndcg:.4f}; {len(timed_queries)} timed pairs, median of "
        f"{args.repeats}; {meta['date']}, commit {meta['commit']})\n\n{text}\n"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
