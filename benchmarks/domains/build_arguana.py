"""Build the ArguAna counterargument-retrieval domain in BEIR layout from the ArguAna
Counterargs Corpus (Wachsmuth, Syed and Stein, ACL 2018).

    python benchmarks/domains/build_arguana.py SOURCE OUT

SOURCE is the corpus folder that holds ``02-extracted-arguments/`` (one folder per
``<split>/<theme>/<debate>/`` with ``metadata.txt``, ``thesis.txt`` and ``pro|con/`` files
``<stance><NN>a-point.txt`` / ``<stance><NN>b-counter.txt``). OUT receives ``corpus.jsonl``,
``queries.jsonl`` and ``qrels/{train,dev,test}.tsv``. Standard library only; the output is
a pure function of the input (no sampling, fixed traversal order), so a rebuild is
byte-identical.

Task: a query is a point (an argument); its one relevant document is the counter written
against that point. The corpus is every counter, so a query's own text is never a document
(BEIR's ArguAna keeps points in the corpus and asks evaluators to skip identical ids).

The source lists one idebate.org debate under each theme it is tagged with, sometimes in
different splits, and idebate.org republished some debates, lightly edited, under another
address. Debate folders that share a URL or any argument (see ``argument_keys``) are
therefore one group, of which only the first folder in split priority (test, validation,
training) is kept: no debate or argument crosses splits. Counters repeated inside a debate
become one document; a repeated point is used as a query once.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Priority order: a debate listed in several splits stays in the first one, so the source's
# test side stays whole and the train side loses what leaked into it.
SPLITS = (("test", "test"), ("validation", "dev"), ("training", "train"))
STANCES = ("pro", "con")
# Words at each end of an argument that identify it across copies of a debate.
KEY_WORDS = 25


class SourceError(ValueError):
    """The source folder does not have the layout or content this build expects."""


@dataclass
class Stats:
    debate_folders: int = 0
    debates: int = 0
    same_url_copies: int = 0
    near_duplicate_debates: int = 0
    points_without_counter: int = 0
    counters_without_point: int = 0
    duplicate_counters: int = 0
    duplicate_queries: int = 0


def clean(text: str) -> str:
    """One paragraph per line, runs of whitespace inside a line collapsed, and the HTML
    entities the extraction left (``&amp;``, ``&lt;``) turned back into characters."""
    lines = (" ".join(html.unescape(line).split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def read_text(path: Path) -> str:
    try:
        text = clean(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    if not text:
        raise SourceError(f"{path}: empty after whitespace clean-up")
    return text


def debate_url(folder: Path) -> str:
    path = folder / "metadata.txt"
    read_text(path)  # same readability checks as the argument files
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("\t")
        if key == "url" and value:
            return value.strip()
    raise SourceError(f"{path}: no 'url<TAB>...' line")


def argument_files(folder: Path) -> dict[str, Path]:
    """``pro01a`` -> its file, for every point and counter of a debate."""
    files = {}
    for stance in STANCES:
        for path in sorted((folder / stance).glob("*.txt")):
            stem, _, role = path.stem.partition("-")
            if role not in ("point", "counter") or stem[-1:] not in ("a", "b"):
                raise SourceError(f"{path}: expected <stance><NN>a-point or <stance><NN>b-counter")
            files[stem] = path
    return files


def argument_keys(text: str) -> list[tuple[str, ...]]:
    """Keys that two copies of one argument share even after light editing: its first and
    its last words, or all of them when it is short."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if len(words) < 2 * KEY_WORDS:
        return [("all", *words)]
    return [("head", *words[:KEY_WORDS]), ("tail", *words[-KEY_WORDS:])]


def canonical_debates(root: Path, stats: Stats) -> list[tuple[str, str, Path]]:
    """(qrels split, id prefix, folder) for one debate of each group of copies, in a fixed
    order. Copies are folders with the same URL or sharing an argument (see
    ``argument_keys``); the first in split priority, then path order, is kept."""
    folders: list[tuple[str, Path]] = []
    for source_split, split in SPLITS:
        split_dir = root / source_split
        if not split_dir.is_dir():
            raise SourceError(f"{split_dir}: missing split folder")
        folders += [(split, p) for p in sorted(split_dir.glob("*/*")) if p.is_dir()]
    stats.debate_folders = len(folders)

    # Union-find over folder indices; the root of a group is always its earliest member.
    parent = list(range(len(folders)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with_key: dict[tuple[str, ...], int] = {}
    for i, (_, folder) in enumerate(folders):
        keys = [("url", debate_url(folder))]
        for path in argument_files(folder).values():
            keys += argument_keys(read_text(path))
        for key in keys:
            j = first_with_key.setdefault(key, i)
            a, b = find(i), find(j)
            parent[max(a, b)] = min(a, b)

    chosen = []
    for i, (split, folder) in enumerate(folders):
        if find(i) == i:
            chosen.append((split, str(folder.relative_to(root)), folder))
        elif debate_url(folder) == debate_url(folders[find(i)][1]):
            stats.same_url_copies += 1
        else:
            stats.near_duplicate_debates += 1
    stats.debates = len(chosen)
    return chosen


def build(source: Path, out: Path) -> Stats:
    root = source / "02-extracted-arguments"
    if not root.is_dir():
        raise SourceError(f"{source}: no 02-extracted-arguments/ folder")
    stats = Stats()
    corpus: dict[str, dict[str, str]] = {}
    doc_by_text: dict[str, str] = {}
    queries: dict[str, str] = {}
    query_texts: set[str] = set()
    qrels: dict[str, list[tuple[str, str]]] = {split: [] for _, split in SPLITS}

    for split, prefix, folder in canonical_debates(root, stats):
        thesis = read_text(folder / "thesis.txt").replace("\n", " ")
        files = argument_files(folder)
        for stem in sorted(files):
            if stem.endswith("b") and stem[:-1] + "a" not in files:
                stats.counters_without_point += 1
            if not stem.endswith("a"):
                continue
            counter = files.get(stem[:-1] + "b")
            if counter is None:
                stats.points_without_counter += 1
                continue
            counter_text = read_text(counter)
            doc_id = doc_by_text.get(counter_text)
            if doc_id is None:
                doc_id = f"{prefix}/{stem[:-1]}b"
                doc_by_text[counter_text] = doc_id
                corpus[doc_id] = {"_id": doc_id, "title": thesis, "text": counter_text}
            else:
                stats.duplicate_counters += 1
            point_text = read_text(files[stem])
            if point_text in query_texts:
                stats.duplicate_queries += 1
                continue
            query_id = f"{prefix}/{stem}"
            query_texts.add(point_text)
            queries[query_id] = point_text
            qrels[split].append((query_id, doc_id))

    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in corpus.values():
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for query_id, text in queries.items():
            f.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    for split, rows in qrels.items():
        with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t1\n" for q, d in rows)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="ArguAna Counterargs Corpus folder")
    parser.add_argument("out", type=Path, help="output folder (BEIR layout)")
    args = parser.parse_args(argv)
    try:
        stats = build(args.source, args.out)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, value in vars(stats).items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
