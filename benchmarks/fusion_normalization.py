"""How the self-ensemble puts its signals on one scale, probed on finished runs of
``benchmarks/quality.py``: the shipped z-score beside other per-signal normalizations and
fitted fusions, each fitted on the run's validation as deployed and judged on the benchmark's
test questions, plus (``--fresh``) a second sample of test questions that no choice was made on.

Every variant is a fixed map per signal, fitted on validation pairs, followed by weights, so
a document's score stays its own whatever else is ranked beside it (per-query normalization
is ruled out for that reason). The cross-encoder's logits and the signals are computed once
per run with the run's own ``Reranker`` (the model as it ships).

    python benchmarks/fusion_normalization.py --fresh \\
        --case "SQuAD seed 42" squad full outputs/quality/squad/full/rerankit_0 \\
        --case "ArguAna seed 42" arguana quick outputs/quality/arguana/quick/rerankit_0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import quality  # noqa: E402
from machine import cpu_line  # noqa: E402

# ArguAna's queries as quality.py cuts them by default.
ARGUANA_QUERY_WORDS = 60
# The seed that draws the fresh test questions (the benchmark's own sample uses the run's seed).
FRESH_SEED = 7
# Where a standardized signal is clipped (the ``clip`` variants).
CLIPS = (2.5, 3.0)

Variant = Callable[[np.ndarray], np.ndarray]


def test_set(side, n_queries: int, seed: int, exclude: set[str] = frozenset()):
    """The benchmark's test questions (BM25's top 30 of the whole corpus) as a ValidationSet,
    leaving out the questions in ``exclude``; its missed positives count against every row."""
    from rerankit.validation import ValidationSet

    docs, queries, positives = side
    pool = {q: t for q, t in queries.items() if q not in exclude}
    test = quality.first_stage_candidates((docs, pool, positives), min(n_queries, len(pool)), 30, seed)
    candidates = tuple(tuple((d, docs[d]) for d in ids) for ids in test["hits"])
    relevant = tuple(
        frozenset(set(ids) & set(test["qrels"][q])) for q, ids in zip(test["qids"], test["hits"])
    )
    missed = tuple(len(test["qrels"][q]) - len(r) for q, r in zip(test["qids"], relevant))
    first_stage = tuple(tuple(map(float, b)) for b in test["bm25"])
    vset = ValidationSet(tuple(test["queries"]), candidates, relevant, first_stage, missed)
    return vset, test["qids"]


def signal_matrix(reranker, vset) -> np.ndarray:
    """One row per pair of ``vset``, one column per signal of the run's ensemble (its order)."""
    queries, docs = vset.flat_pairs()
    columns = {"reranker": np.asarray(reranker.logits(queries, docs), dtype=np.float64)}
    columns |= reranker.signal_scores(queries, docs)
    return np.stack([np.asarray(columns[s], dtype=np.float64) for s in reranker.ensemble.signals], 1)


def variants(ensemble, valid: np.ndarray, labels: np.ndarray) -> dict[str, Variant]:
    """Each fusion, fitted on the validation pairs ``valid`` (rows: pairs, columns: the
    ensemble's signals) and their 0/1 ``labels``; the first is the run's own."""
    from scipy.stats import norm
    from sklearn.linear_model import LogisticRegression

    weights = np.asarray(ensemble.weights)
    mean, std = valid.mean(0), valid.std(0)
    std[std == 0] = 1.0

    def z(x):
        return (x - mean) / std

    # The empirical distribution of each signal over validation pairs, mapped to a normal's
    # quantiles (rank-Gauss): skewed signals such as BM25 lose their long upper tail.
    levels = np.linspace(0.5 / len(valid), 1 - 0.5 / len(valid), 1001)
    cuts = np.quantile(valid, levels, axis=0)

    def normal_scores(x):
        return np.stack([norm.ppf(np.interp(x[:, i], cuts[:, i], levels)) for i in range(x.shape[1])], 1)

    def one_normalized(i):
        def fused(x):
            scaled = z(x)
            scaled[:, i] = normal_scores(x)[:, i]
            return scaled @ weights

        return fused

    median = np.median(valid, 0)
    spread = np.subtract(*np.percentile(valid, [75, 25], 0))
    spread[spread == 0] = 1.0
    out: dict[str, Variant] = {
        f"shipped: z-score, weights {', '.join(f'{w:.2f}' for w in weights)}": ensemble_combine(ensemble),
        "normal scores (rank-Gauss), every signal": lambda x: normal_scores(x) @ weights,
    }
    for i, name in enumerate(ensemble.signals):
        out[f"normal scores of {name} only"] = one_normalized(i)
    for c in CLIPS:
        out[f"z-score clipped at ±{c}"] = lambda x, c=c: np.clip(z(x), -c, c) @ weights
    out["tanh(z / 2)"] = lambda x: np.tanh(z(x) / 2) @ weights
    out["median and interquartile range"] = lambda x: ((x - median) / spread) @ weights
    for c in (0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(z(valid), labels)
        out[f"logistic regression on z-scores, C {c}"] = lambda x, m=model: m.decision_function(z(x))
    # Each signal's own Platt log-odds of relevance, summed with the ensemble's weights.
    platt = [LogisticRegression(max_iter=2000).fit(z(valid)[:, [i]], labels) for i in range(valid.shape[1])]
    out["per-signal log-odds (Platt), summed"] = lambda x: sum(
        w * p.decision_function(z(x)[:, [i]]) for i, (w, p) in enumerate(zip(weights, platt))
    )
    return out


def ensemble_combine(ensemble) -> Variant:
    return lambda x: ensemble.combine({s: x[:, i] for i, s in enumerate(ensemble.signals)})


def per_query(vset, fused: Variant, features: np.ndarray) -> np.ndarray:
    return vset.per_query(vset.split_scores(fused(features)))


def probe_case(label: str, domain: str, slice_: str, folder: Path, fresh: bool, seed: int) -> dict:
    """Every variant's NDCG@10 on one run: validation (in sample), the benchmark's test
    questions, and the fresh ones; with the paired gain over the shipped fusion."""
    from rerankit.config import load_config
    from rerankit.data import read_records
    from rerankit.deployed import DeployedCorpus, deployed_validation
    from rerankit.inference import Reranker

    started = time.perf_counter()
    cfg = load_config(str(folder / "config.yaml"), {})
    valid_records, _ = read_records(cfg.data.valid)
    vset, _ = deployed_validation(valid_records, DeployedCorpus.read(cfg.data.corpus), "bm25", 30)
    data = quality.DOMAINS[domain]
    sides = (
        quality.split_by_article(data)
        if domain == "squad"
        else quality.split_by_debate(data, ARGUANA_QUERY_WORDS)
    )
    n_test = 150 if slice_ == "quick" else 200
    tests = {"test": test_set(sides["all"], n_test, seed)}
    if fresh:
        tests["fresh"] = test_set(sides["all"], 2 * n_test, FRESH_SEED, exclude=set(tests["test"][1]))
    reranker = Reranker.load(str(folder))
    if reranker.ensemble is None:
        raise SystemExit(f"{folder}: the run has no self-ensemble to probe")
    valid = signal_matrix(reranker, vset)
    found = {name: (t, signal_matrix(reranker, t)) for name, (t, _) in tests.items()}
    print(f"[{label}] signals computed in {time.perf_counter() - started:.0f} s", flush=True)

    fused = variants(reranker.ensemble, valid, np.asarray(vset.flat_labels()))
    shipped = next(iter(fused.values()))
    baseline = np.concatenate([per_query(t, shipped, x) for t, x in found.values()])
    rows = []
    for name, variant in fused.items():
        row: dict = {"variant": name, "valid": float(per_query(vset, variant, valid).mean())}
        values = []
        for side, (t, x) in found.items():
            values.append(per_query(t, variant, x))
            row[side] = float(values[-1].mean())
        gain = np.concatenate(values) - baseline
        row["gain"] = float(gain.mean())
        row["gain_error"] = float(gain.std(ddof=1) / np.sqrt(len(gain)))
        rows.append(row)
    first_stage = {
        side: float(t.per_query(list(map(np.asarray, t.first_stage))).mean())
        for side, (t, _) in found.items()
    }
    return {
        "label": label,
        "domain": domain,
        "slice": slice_,
        "run": quality._shown(folder),
        "validation_queries": len(vset),
        "test_queries": {side: len(t) for side, (t, _) in found.items()},
        "bm25": first_stage,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "# The self-ensemble's normalization of its signals, probed on finished runs",
        "",
        f"{result['date']}, commit {result['commit']}; {result['machine']}. Command: "
        f"`python benchmarks/fusion_normalization.py{' --fresh' if result['fresh'] else ''} --case ...`.",
        "",
        "NDCG@10. *valid*: the run's validation as deployed (BM25's top 30), where each variant is "
        "fitted (in sample); *test*: the benchmark's test questions (BM25's top 30 of the whole "
        "corpus); *fresh*: as many again, twice over, drawn from the test side's other questions. "
        "*gain*: the paired gain per question over the shipped fusion, over test and fresh "
        "questions together, ± its standard error.",
    ]
    for case in result["cases"]:
        sides = list(case["test_queries"])
        lines += [
            "",
            f"## {case['label']} ({case['domain']}, {case['slice']} slice; `{case['run']}`)",
            "",
            f"{case['validation_queries']} validation queries; "
            + "; ".join(
                f"{s}: {n} questions, BM25 {case['bm25'][s]:.4f}" for s, n in case["test_queries"].items()
            ),
            "",
            "| fusion | valid | " + " | ".join(sides) + " | gain ± error |",
            "|---|---:|" + "---:|" * len(sides) + "---:|",
        ]
        for row in case["rows"]:
            cells = " | ".join(f"{row[s]:.4f}" for s in sides)
            gain = f"{row['gain']:+.4f} ± {row['gain_error']:.4f}"
            lines.append(f"| {row['variant']} | {row['valid']:.4f} | {cells} | {gain} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--case",
        nargs=4,
        action="append",
        required=True,
        metavar=("LABEL", "DOMAIN", "SLICE", "RUN"),
        help="a finished run of benchmarks/quality.py: a label, its domain (squad|arguana), its "
        "slice (full|quick) and its run folder",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="also rank a second, disjoint sample of test questions"
    )
    parser.add_argument("--seed", type=int, default=42, help="the benchmark's seed (its test sample)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="quality_fusion_normalization")
    args = parser.parse_args(argv)
    for _, domain, slice_, _ in args.case:
        if domain not in quality.DOMAINS or slice_ not in ("full", "quick"):
            parser.error(f"--case: domain must be one of {sorted(quality.DOMAINS)}, slice full or quick")
    cases = [probe_case(lab, dom, sl, Path(run), args.fresh, args.seed) for lab, dom, sl, run in args.case]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": quality._commit(),
        "machine": cpu_line(),
        "fresh": args.fresh,
        "cases": cases,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (args.results / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
