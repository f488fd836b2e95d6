"""Several LoRA rerankers of one base: merged copies against one shared base, in memory and
pairs per second.

    python benchmarks/adapters.py [--adapters 1 4 16] [--requests 32 --docs 8] [--repeats 3]
                                  [--data ../shared/data/squad-v1.1-dev]

N adapters are made on the embedded all-MiniLM-L6-v2 base the way ``rerankit.fit`` lays them
out (LoRA r=16 on query/key/value/dense, the score head and the pooler trained whole), with
random weights (the cost does not depend on them), and saved once to a cache folder. Each row
then runs in its own process, so its memory is its own:

- merged: N copies of the base, each with its adapter merged in (``Reranker.load``'s way, what
  ``--merge always`` serves); each request is scored on its own model;
- shared, one pass per adapter: one base with the N adapters beside it (``--merge never``),
  rerankit's own layout (a pooler trained whole is not a layer peft mixes), each batch scored
  one adapter at a time;
- shared, mixed batches: the same with the pooler's dense layer trained whole instead (the same
  weights), so that peft mixes adapters within one forward pass.

The load: ``requests`` SQuAD questions × ``docs`` paragraphs each, request i for adapter
i mod N, all waiting at once, as a server's queue holds them: merged scores each model's
requests together, shared scores them all in token-budget batches. Memory is the process's
resident set once the models are loaded and every weight read, less before loading (Linux
``VmRSS``; weights are mapped from their files lazily): what the models hold, not the
activations of a batch. fp32 on the CPU; the median of
``repeats`` passes. Writes benchmarks/results/adapters.{json,md} with the date, commit and the
CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import FLAGS_OF_INTEREST, cpu_flags  # noqa: E402

BASE = "sentence-transformers/all-MiniLM-L6-v2"
LAYOUTS = {
    "merged": "merged copies",
    "shared": "shared base, one pass per adapter",
    "mixed": "shared base, mixed batches",
}
MAX_LENGTH = 256


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def make_adapters(cache: Path, count: int) -> list[Path]:
    """``count`` random LoRA adapters of the base in rerankit's layout, saved under ``cache``
    (made once); each folder also gets a copy whose pooler is kept whole as its dense layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path

    base = resolve_model_path(BASE)
    folders = []
    for i in range(count):
        folder = cache / f"adapter-{i}"
        folders.append(folder)
        if (folder / "pooler" / "adapter_config.json").exists():
            continue
        torch.manual_seed(i)
        for layout, keep in (("pooler", "pooler"), ("dense", "pooler.dense")):
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
            config = LoraConfig(
                task_type="SEQ_CLS",
                r=16,
                lora_alpha=32,
                target_modules=["query", "key", "value", "dense"],
                modules_to_save=["classifier", keep],
            )
            peft = get_peft_model(model, config)
            torch.manual_seed(i)  # the same weights in both layouts
            with torch.no_grad():
                for name, param in peft.named_parameters():
                    if "lora_B" in name or "modules_to_save" in name:
                        param.add_(torch.randn_like(param) * 0.02)
            peft.save_pretrained(folder / layout)
        AutoTokenizer.from_pretrained(base).save_pretrained(folder / "pooler")
    return folders


def workload(data: Path, requests: int, docs: int) -> list[tuple[str, list[str]]]:
    """``requests`` SQuAD dev questions with ``docs`` paragraphs each (text: the cost depends on
    lengths only)."""
    import random

    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()]
    corpus = [json.loads(line)["text"] for line in (data / "corpus.jsonl").open()]
    rng = random.Random(0)
    return [(rng.choice(queries), rng.sample(corpus, docs)) for _ in range(requests)]


def run_row(layout: str, folders: list[Path], load: list, repeats: int) -> dict:
    """One row, in this process: memory after loading and pairs/s."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path
    from rerankit.scoring import score_pairs
    from rerankit.shared_adapters import SharedBase

    torch.set_grad_enabled(False)
    base = resolve_model_path(BASE)
    tokenizer = AutoTokenizer.from_pretrained(folders[0] / "pooler")
    names = [f"a{i}" for i in range(len(folders))]
    before = rss_bytes()

    def base_model():
        return AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).eval()

    if layout == "merged":
        models = [
            PeftModel.from_pretrained(base_model(), str(f / "pooler")).merge_and_unload().eval()
            for f in folders
        ]
    else:
        sub = "dense" if layout == "mixed" else "pooler"
        model = PeftModel.from_pretrained(base_model(), str(folders[0] / sub), adapter_name=names[0])
        for name, folder in zip(names[1:], folders[1:]):
            model.load_adapter(str(folder / sub), adapter_name=name)
        shared = SharedBase(model.eval(), tokenizer, dict.fromkeys(names, Path()), {}, MAX_LENGTH)
        assert shared.mixable is (layout == "mixed")
        models = [shared.model]
    for model in models:  # every weight read once: they are mapped from their files lazily
        for param in model.parameters():
            param.sum()
    held = rss_bytes() - before

    # request i is for adapter i mod N; all are waiting at once
    by_adapter: dict[int, list[tuple[str, str]]] = {}
    for i, (query, docs) in enumerate(load):
        by_adapter.setdefault(i % len(folders), []).extend((query, d) for d in docs)
    pairs = sum(len(p) for p in by_adapter.values())

    def one_pass() -> float:
        started = time.perf_counter()
        if layout == "merged":
            for index, chunk in by_adapter.items():
                queries, docs = zip(*chunk)
                score_pairs(models[index], tokenizer, queries, docs, max_length=MAX_LENGTH, max_tokens=2048)
        else:
            queries = [q for chunk in by_adapter.values() for q, _ in chunk]
            docs = [d for chunk in by_adapter.values() for _, d in chunk]
            tags = [names[index] for index, chunk in by_adapter.items() for _ in chunk]
            shared.score(queries, docs, tags)
        return pairs / (time.perf_counter() - started)

    one_pass()  # warm-up
    rates = [one_pass() for _ in range(repeats)]
    return {
        "layout": layout,
        "adapters": len(folders),
        "rss_mb": held / 2**20,
        "pairs": pairs,
        "passes": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "squad-v1.1-dev")
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "adapter-bench")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row in a child process
    args = parser.parse_args()

    if args.row:
        layout, count = args.row.split(":")
        folders = [args.cache / f"adapter-{i}" for i in range(int(count))]
        load = workload(args.data, args.requests, args.docs)
        print(json.dumps(run_row(layout, folders, load, args.repeats)))
        return

    make_adapters(args.cache, max(args.adapters))
    rows = []
    for count in args.adapters:
        for layout in LAYOUTS:
            command = [sys.executable, __file__, "--row", f"{layout}:{count}"]
            for option in ("requests", "docs", "repeats", "data", "cache"):
                command += [f"--{option}", str(getattr(args, option))]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["pairs_per_s"] = statistics.median(row["passes"])
            rows.append(row)
            rate = row["pairs_per_s"]
            print(f"{LAYOUTS[layout]:>36} × {count:>2}: {row['rss_mb']:7.0f} MB {rate:7.1f} pairs/s")
    name, flags = cpu_flags()
    result = {
        "base": BASE,
        "dtype": "float32",
        "requests": args.requests,
        "docs_per_request": args.docs,
        "max_length": MAX_LENGTH,
        "repeats": args.repeats,
        "cpu": name,
        "flags": flags,
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    lines = [
        f"# LoRA rerankers of one base: merged copies against one shared base ({BASE}, fp32, CPU)",
        "",
        f"{args.requests} requests × {args.docs} SQuAD paragraphs, request i for adapter i mod N, all "
        "waiting at once; memory: resident set once loaded with every weight read, less before loading. "
        f"CPU: {name}; flags: "
        f"{', '.join(flags) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)}; median of {args.repeats} "
        f"passes; {result['date']}, commit {result['commit']}.",
        "",
        "| adapters | layout | memory (MB) | pairs/s |",
        "|---:|---|---:|---:|",
        *(
            f"| {r['adapters']} | {LAYOUTS[r['layout']]} | {r['rss_mb']:.0f} | {r['pairs_per_s']:.1f} |"
            for r in rows
        ),
        "",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "adapters.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "adapters.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
