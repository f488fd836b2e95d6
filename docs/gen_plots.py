"""The benchmark plots, drawn at build time from the results JSON beside each results table.

A mkdocs hook (``hooks:`` in mkdocs.yml): it adds one SVG per plot to the site as a generated
file, so a plot can never disagree with the table it illustrates; both come from the same
results file under ``benchmarks/results/``.

``python docs/gen_plots.py OUT_DIR`` writes the SVGs into a folder.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

# site path of each plot -> the function that draws it from its results file
PLOTS = {
    "results/quality_seeds.svg": "quality_seeds",
    "results/inference.svg": "inference",
}


def _figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fixed hash salt (and no date, below): the same results give the same SVG bytes; text stays
    # text, so the figures can be searched and checked.
    plt.rcParams["svg.hashsalt"] = "rerankit"
    plt.rcParams["svg.fonttype"] = "none"
    return plt.subplots(figsize=(7.5, height), dpi=100)


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buffer.getvalue()


def quality_seeds(results: Path = RESULTS) -> str:
    """NDCG@10 per domain: the first stages, and rerankit's rows as the mean over training seeds
    with their half-range as an error bar."""
    data = json.loads((results / "quality_seeds.json").read_text(encoding="utf-8"))
    domains = list(data)
    fig, axes = _figure(1.2 + 2.2 * len(domains))
    fig.clf()
    for i, domain in enumerate(domains, start=1):
        ax = fig.add_subplot(len(domains), 1, i)
        block = data[domain]
        labels = list(block["baselines"]) + [f"rerankit: {name}" for name in block["rows"]]
        values = list(block["baselines"].values()) + [row["mean"] for row in block["rows"].values()]
        errors = [0.0] * len(block["baselines"]) + [row["spread"] for row in block["rows"].values()]
        colours = ["tab:gray"] * len(block["baselines"]) + ["tab:blue"] * len(block["rows"])
        positions = list(range(len(labels)))[::-1]
        ax.barh(positions, values, xerr=errors, color=colours, capsize=3)
        ax.set_yticks(positions, labels, fontsize=8)
        ax.set_xlim(min(values) - 0.1, min(1.0, max(values) + 0.06))
        ax.set_title(f"{domain}: NDCG@10 (rerankit: mean over training seeds)", fontsize=9)
        for y, value, error in zip(positions, values, errors):
            ax.text(value + error, y, f" {value:.4f}", va="center", fontsize=7)
    return _svg(fig)


def inference(results: Path = RESULTS) -> str:
    """Pairs per second of every contender, coloured by whether its top-10 orders stayed identical."""
    table = (results / "inference_avx2.json").read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = json.loads(table)["rows"]
    fig, ax = _figure(0.8 + 0.28 * len(rows))
    positions = list(range(len(rows)))[::-1]
    exact = [r["identical_top10"].split("/")[0] == r["identical_top10"].split("/")[1] for r in rows]
    ax.barh(
        positions,
        [r["pairs_per_s"] for r in rows],
        color=["tab:blue" if e else "tab:orange" for e in exact],
    )
    ax.set_yticks(positions, [r["contender"] for r in rows], fontsize=8)
    for y, row in zip(positions, rows):
        ax.text(
            row["pairs_per_s"],
            y,
            f" {row['pairs_per_s']} (NDCG@10 {row['ndcg@10']})",
            va="center",
            fontsize=7,
        )
    ax.set_xlabel("pairs/s (blue: identical top-10 orders; orange: changed)", fontsize=8)
    ax.set_xlim(0, max(r["pairs_per_s"] for r in rows) * 1.45)
    return _svg(fig)


def on_files(files, config, **_: Any):
    """mkdocs hook: add every plot to the site as a generated file."""
    from mkdocs.structure.files import File

    for site_path, draw in PLOTS.items():
        files.append(File.generated(config, site_path, content=globals()[draw]()))
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for site_path, draw in PLOTS.items():
        target = out / Path(site_path).name
        target.write_text(globals()[draw](), encoding="utf-8")
        print(target)
