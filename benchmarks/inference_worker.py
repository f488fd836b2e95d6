"""One contender of benchmarks/inference.py, in its own process (and, for the peers, its own
environment: see benchmarks/peer_envs.sh). Loads the model once, then answers commands read
as JSON lines on stdin with JSON lines on stdout:

    {"cmd": "score", "set": "timing"|"quality"}  -> {"seconds": s, "scores": [...]}
    {"cmd": "latency", "repeats": n}             -> {"seconds": [...]}  (one 20-document request)
    {"cmd": "quit"}

Library output goes to stderr, so stdout carries the answers only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_DEFAULT = "rerankit run folder, default"
RUN_ALONE = "rerankit run folder, cross-encoder alone"


def st_cross_encoder(folder: str, max_length: int, **kwargs):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(folder, device="cpu", max_length=max_length, **kwargs)


def own_copy(folder: str, name: str) -> str:
    """A copy of the HF model files for a peer that writes its exports next to them."""
    target = Path(folder).parent / f"peer-{name}"
    if not target.exists():
        shutil.copytree(folder, target)
    return str(target)


def calibration_dataset(model, pairs, max_length: int):
    """Tokenized (query, document) pairs as a datasets.Dataset for optimum's quantizers."""
    from datasets import Dataset

    features = model.tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length
    )
    return Dataset.from_dict(dict(features))


def build(name: str, folder: str, max_length: int, calibration_pairs, batch_size: int):
    """name -> score(pairs) for the contender ``name``."""
    if name.startswith("rerankit"):
        sys.path.insert(0, str(ROOT))
        from rerankit import Reranker

        options = {
            "rerankit torch fp32": dict(backend="torch", dtype="float32"),
            "rerankit torch bf16": dict(backend="torch", dtype="bfloat16"),
            "rerankit openvino fp32": dict(backend="openvino", dtype="float32"),
            # measured whether or not they passed the export's accuracy gate (the table shows it)
            "rerankit openvino int8": dict(backend="openvino", dtype="int8", allow_failed_gate=True),
            "rerankit openvino bf16": dict(backend="openvino", dtype="bfloat16"),
            "rerankit onnx fp32": dict(backend="onnx", dtype="float32"),
            "rerankit onnx int8": dict(backend="onnx", dtype="int8", allow_failed_gate=True),
            "rerankit default (auto)": dict(),
            # the run folder as trained, its graphs picked at load (with its self-ensemble, or without)
            RUN_DEFAULT: dict(),
            RUN_ALONE: dict(ensemble="none"),
        }[name]
        reranker = Reranker.load(folder, device="cpu", max_length=max_length, **options)
        info = reranker.backend_info
        build.runtime = f"{info['backend']} {info['precision']}"
        return lambda pairs: reranker.score(pairs, raw=True)
    if name == "ST torch fp32":
        model = st_cross_encoder(folder, max_length)
    elif name == "ST ONNX fp32":
        model = st_cross_encoder(own_copy(folder, "onnx"), max_length, backend="onnx")
    elif name == "ST ONNX O3":
        from sentence_transformers import export_optimized_onnx_model

        path = own_copy(folder, "onnx-o3")
        export_optimized_onnx_model(st_cross_encoder(path, max_length, backend="onnx"), "O3", path)
        model = st_cross_encoder(
            path, max_length, backend="onnx", model_kwargs={"file_name": "onnx/model_O3.onnx"}
        )
    elif name == "ST ONNX int8 (dynamic, avx2)":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        path = own_copy(folder, "onnx-int8")
        export_dynamic_quantized_onnx_model(st_cross_encoder(path, max_length, backend="onnx"), "avx2", path)
        model = st_cross_encoder(
            path, max_length, backend="onnx", model_kwargs={"file_name": "onnx/model_quint8_avx2.onnx"}
        )
    elif name == "ST OpenVINO fp32":
        model = st_cross_encoder(
            own_copy(folder, "ov"),
            max_length,
            backend="openvino",
            model_kwargs={"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}},
        )
    elif name == "ST OpenVINO default":
        model = st_cross_encoder(own_copy(folder, "ov-default"), max_length, backend="openvino")
    elif name == "ST OpenVINO int8 (static)":
        # optimum-intel's quantizer, as sentence-transformers' export_static_quantized_openvino_model
        # uses it, calibrated on (query, document) pairs (its helper wants a Hub dataset of strings)
        from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer

        path = own_copy(folder, "ov-int8")
        model = st_cross_encoder(path, max_length, backend="openvino")
        config = OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(calibration_pairs)))
        quantizer = OVQuantizer.from_pretrained(model.transformers_model)
        quantizer.quantize(
            calibration_dataset=calibration_dataset(model, calibration_pairs, max_length),
            save_directory=str(Path(path) / "openvino-int8"),
            ov_config=config,
        )
        xml = next((Path(path) / "openvino-int8").rglob("*.xml"))
        (Path(path) / "openvino").mkdir(exist_ok=True)
        # named as sentence-transformers names its own (it only loads files matching openvino*.xml)
        target = Path(path) / "openvino" / "openvino_model_qint8_quantized.xml"
        shutil.copy(xml, target)
        shutil.copy(xml.with_suffix(".bin"), target.with_suffix(".bin"))
        model = st_cross_encoder(
            path, max_length, backend="openvino", model_kwargs={"file_name": f"openvino/{target.name}"}
        )
    else:
        raise SystemExit(f"unknown contender {name!r}")
    import torch

    identity = torch.nn.Identity()  # logits, as rerankit's raw=True
    return lambda pairs: model.predict(
        pairs, batch_size=batch_size, show_progress_bar=False, activation_fn=identity
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contender", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--pairs", required=True, type=Path, help="JSON: {timing, quality, request, calibration}"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    answers, sys.stdout = sys.stdout, sys.stderr
    data = json.loads(args.pairs.read_text())
    sets = {k: [tuple(p) for p in v] for k, v in data.items()}
    score = build(args.contender, args.model, args.max_length, sets["calibration"], args.batch_size)
    score(sets["request"])  # warm-up
    print(
        json.dumps({"ready": args.contender, "runtime": getattr(build, "runtime", "")}),
        file=answers,
        flush=True,
    )
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "score":
            started = time.perf_counter()
            scores = score(sets[command["set"]])
            answer = {"seconds": time.perf_counter() - started, "scores": [float(s) for s in scores]}
        else:
            times = []
            for _ in range(command["repeats"]):
                started = time.perf_counter()
                score(sets["request"])
                times.append(time.perf_counter() - started)
            answer = {"seconds": times}
        print(json.dumps(answer), file=answers, flush=True)


if __name__ == "__main__":
    main()
