"""The self-ensemble: the cross-encoder fused with signals it can compute from (query, document)
alone, so that a reranker brings its own first stage and does not lose what its backbone knew.

Signals (each a number per pair, none depending on the other documents of a call):

- ``reranker``: the cross-encoder's logit;
- ``bm25``: BM25 (bm25s's Lucene variant and tokenization, English stopwords) with the term
  statistics of the corpus the run was validated on, stored in the run folder, divided by the
  query's largest possible score so that long and short queries share one scale;
- ``cosine``: the cosine of the backbone's own sentence embeddings, with its pooling and the
  base weights (the fine-tuned adapter plays no part), when the backbone is a sentence-embedding
  model (a sentence-transformers folder with a Pooling module);
- ``bm25_sentence`` and ``cosine_sentence``: the same two scores of the document's best-matching
  sentence (``rerankit.text_units``): a question is often answered by one sentence of a passage
  whose other sentences dilute a whole-passage score.

The fused score is ``sum_i w_i (x_i - mean_i) / std_i`` with means and spreads taken over the
validation pairs: a linear model with one global scale per signal, so a document's score is its
own whatever else is ranked beside it. ``normalization: rank_gauss`` maps each signal to normal
scores through its quantiles over the validation pairs instead (a fixed monotone map, so a
document's score is its own there too): a skewed signal such as BM25 then no longer counts for
more than its weight at the top of a list. The weights are fitted on validation as deployed (the
first stage's real top-k, scored by the model as it ships): equal weights per family of signals
(the cross-encoder, BM25's two, the cosine's two), unless weights picked from a grid, or those
shrunk halfway to equal, rank held-out validation folds clearly better (``fit_ensemble``).
Calibration is fitted on the fused score afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np

from rerankit.errors import short_reason
from rerankit.files import swap_in
from rerankit.selection import FOLDS, beats_noise, gain_and_error, held_out_values, query_folds

log = logging.getLogger(__name__)

SIGNALS = ("reranker", "bm25", "cosine", "bm25_sentence", "cosine_sentence")
# Each best-sentence signal and the whole-document signal it reuses (statistics, encoder, caches).
SENTENCE_SIGNALS = {"bm25_sentence": "bm25", "cosine_sentence": "cosine"}
# A long document's sentences past this many are not scored: it bounds what one pair costs.
MAX_SENTENCES = 64
# Where a run folder or an export keeps the signals: BM25's statistics, and (exports) the encoder.
ENSEMBLE_DIR = "ensemble"
BM25_FILE = "bm25_stats.json"
ENCODER_DIR = "encoder"
# Grid step of the weights tried.
WEIGHT_STEP = 0.1
# How each signal is put on one scale before weighing: z-scores, or normal scores (rank-Gauss).
NORMALIZATIONS = ("zscore", "rank_gauss")
# At most this many quantiles of a signal are kept for its rank-Gauss map (run.json holds them).
MAX_KNOTS = 201
# Texts whose embeddings (cosine) or term counts (BM25) are kept once seen: a RAG corpus sends
# the same passages again and again.
CACHE_ENTRIES = 50_000


class RecentValues:
    """Values of the keys seen last, at most ``limit`` (least recently used out); safe to use
    from several threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def found(self, keys: Sequence) -> dict:
        """The values of those ``keys`` that are kept; they become the most recent."""
        with self._lock:
            known = {k: self._items[k] for k in keys if k in self._items}
            for k in known:
                self._items.move_to_end(k)
        return known

    def take(self, keys: Sequence) -> dict:
        """The values of those ``keys`` that are kept, no longer kept here."""
        with self._lock:
            return {k: self._items.pop(k) for k in keys if k in self._items}

    def add(self, values: Mapping) -> None:
        with self._lock:
            self._items.update(values)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """bm25s's tokenization with English stopwords (as ``rerankit.first_stage`` indexes)."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", show_progress=False, return_ids=False)


@dataclass(frozen=True)
class BM25Signal:
    """BM25 of any (query, document) pair against a corpus's term statistics."""

    num_docs: int
    avg_length: float
    doc_freq: Mapping[str, int] = field(repr=False)
    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        # Term counts and lengths of recent documents (a RAG corpus sends the same passages
        # again and again): tokenizing them is most of this signal's cost.
        object.__setattr__(self, "_doc_terms", RecentValues(CACHE_ENTRIES))

    @classmethod
    def from_corpus(cls, texts: Sequence[str]) -> BM25Signal:
        tokens = bm25_tokens(texts)
        freq: Counter = Counter()
        for doc in tokens:
            freq.update(set(doc))
        lengths = [len(doc) for doc in tokens]
        return cls(len(texts), float(np.mean(lengths)) if lengths else 1.0, dict(freq))

    def idf(self, token: str) -> float:
        df = self.doc_freq.get(token, 0)
        return math.log(1 + (self.num_docs - df + 0.5) / (df + 0.5))

    def scores(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """BM25 of each pair over the query's largest possible score, in [0, 1); query terms
        the corpus never holds are left out, as bm25s does."""
        unique = list(dict.fromkeys(queries))
        query_terms = {
            q: [t for t in toks if t in self.doc_freq] for q, toks in zip(unique, bm25_tokens(unique))
        }
        best = {q: sum(self.idf(t) for t in terms) for q, terms in query_terms.items()}
        out = np.zeros(len(docs), dtype=np.float64)
        avg = self.avg_length or 1.0
        for i, (query, (counts, length)) in enumerate(zip(queries, self._terms(docs))):
            if not best[query]:
                continue
            norm = self.k1 * ((1 - self.b) + self.b * length / avg)
            total = 0.0
            for term in query_terms[query]:
                tf = counts.get(term, 0)
                if tf:
                    total += self.idf(term) * tf / (norm + tf)
            out[i] = total / best[query]
        return out

    def _terms(self, docs: Sequence[str]) -> list[tuple[Counter, int]]:
        """(term counts, length) of each document, through the cache of recent documents."""
        unique = list(dict.fromkeys(docs))
        known = self._doc_terms.found(unique)
        missing = [d for d in unique if d not in known]
        if missing:
            fresh = {d: (Counter(toks), len(toks)) for d, toks in zip(missing, bm25_tokens(missing))}
            self._doc_terms.add(fresh)
            known |= fresh
        return [known[d] for d in docs]

    def save(self, path: Path) -> None:
        from rerankit.files import write_json

        write_json(
            path,
            {"num_docs": self.num_docs, "avg_length": self.avg_length, "k1": self.k1, "b": self.b}
            | {"doc_freq": dict(self.doc_freq)},
        )

    @classmethod
    def load(cls, path: Path) -> BM25Signal:
        """The statistics ``save`` wrote; ValueError naming the first field out of range (a
        damaged file must not serve NaN or silently other scores)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, dict) or not isinstance(data.get("doc_freq"), dict):
            raise ValueError(f"{path}: expected an object with doc_freq")
        ranges = {"num_docs": (1, math.inf), "avg_length": (1e-9, math.inf), "k1": (0, 100), "b": (0, 1)}
        for key, (low, high) in ranges.items():
            value = data.get(key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"{path}: {key} must be a number from {low} to {high}, got {value!r}")
        if not float(data["num_docs"]).is_integer():
            raise ValueError(f"{path}: num_docs must be an integer, got {data['num_docs']!r}")
        n = int(data["num_docs"])
        if any(
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= n
            for v in data["doc_freq"].values()
        ):
            raise ValueError(f"{path}: doc_freq values must be integers from 1 to num_docs ({n})")
        return cls(n, float(data["avg_length"]), data["doc_freq"], float(data["k1"]), float(data["b"]))


POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def sentence_pooling(folder: str | Path) -> tuple[str, int] | None:
    """(pooling, max tokens) of a sentence-transformers folder; None when it is not one (or
    pools in a way this signal does not reproduce)."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        pooling_dir = next(m["path"] for m in modules if m.get("type", "").endswith("models.Pooling"))
        pooling = json.loads((folder / pooling_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return None
    modes = [name for key, name in POOLING_MODES.items() if pooling.get(key)]
    if len(modes) != 1:
        return None
    try:
        bert_config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        max_tokens = int(bert_config.get("max_seq_length") or 256)
    except (OSError, ValueError, TypeError):
        max_tokens = 256
    return modes[0], max_tokens


# The corpus's embeddings a run keeps (``ensemble/corpus_embeddings.npz``), computed at the end of
# ``fit``: its passages, and their sentences, then cost no encoder pass. At most PIN_LIMIT texts:
# the passages first, their sentences only while the total stays within it.
CORPUS_EMBEDDINGS = "corpus_embeddings.npz"
PIN_LIMIT = 50_000
# Where a run or an export keeps its sentence encoder converted to OpenVINO (fp32), inside its
# ensemble folder: the conversion costs seconds at every load otherwise.
ENCODER_GRAPH = "encoder_openvino/openvino_model.xml"
# The least cosine between a kept encoder graph's embedding of a probe text and the encoder's own
# (bf16 against fp32 stays far above it; another model's graph falls far below).
GRAPH_AGREEMENT = 0.99
# About how many probe texts, of lengths spread over the window, the encoder graph is checked on.
PROBE_TEXTS = 12


def _pooled(hidden, mask, pooling: str):
    """Normalized fp32 sentence embeddings of a batch's token states (torch tensors)."""
    import torch

    hidden = hidden.float()
    mask = mask.unsqueeze(-1).float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    else:
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _pooling_module(model, pooling: str, names: Sequence[str]):
    """The encoder and its pooling as one torch module of keyword inputs, for tracing."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {"token_type_ids": token_type_ids} if "token_type_ids" in names else {}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            return _pooled(hidden, attention_mask, pooling)

    return Pooled().eval()


class CosineSignal:
    """Cosine of a sentence-embedding backbone's pooled embeddings of query and document.

    Embeddings of recent texts are kept (at most ``cache_entries``, least recently used out),
    keyed by a digest of the text: a passage that comes back costs no second encoder pass."""

    def __init__(
        self,
        model,
        tokenizer,
        pooling: str,
        max_length: int,
        max_tokens: int = 8192,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.model, self.tokenizer, self.pooling = model.eval(), tokenizer, pooling
        self.max_length, self.max_tokens = max_length, max_tokens
        # set by use_openvino: run(batches, out), the graph's input names, the width multiple
        self._graph: tuple | None = None
        self.runtime = "torch " + str(next(model.parameters()).dtype).removeprefix("torch.")
        # whether a text's embedding is the same whatever shares its batch: in torch, fp32 on the
        # CPU (a GPU's kernels are picked by shape)
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.neighbour_independent = self.runtime == "torch float32" and on_cpu
        # a fast tokenizer's truncation settings are shared state: calls take turns
        self._lock = threading.Lock()
        self._recent = RecentValues(cache_entries)  # embeddings by digest of the text
        self._pinned: dict[bytes, np.ndarray] = {}  # the corpus's embeddings, never evicted

    @classmethod
    def load(cls, folder: str | Path, dtype=None, device: str = "cpu", revision: str | None = None):
        """The backbone at ``folder`` (a local folder, or a hub id fetched by huggingface_hub;
        safetensors only), or None when it is no sentence embedder."""
        from transformers import AutoModel, AutoTokenizer

        folder = _local_snapshot(folder, revision)
        found = sentence_pooling(folder)
        if found is None:
            return None
        pooling, max_tokens = found
        model = AutoModel.from_pretrained(str(folder), dtype=dtype, use_safetensors=True).to(device)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # Padded tokens per forward pass, as the cross-encoder batches: small batches stay in a
        # CPU's cache; a GPU wants large ones.
        budget = 2048 if str(device).startswith("cpu") else 32768
        return cls(model, tokenizer, pooling, min(max_tokens, 512), max_tokens=budget)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized embeddings, fp32, in input order (token-budget batches, longest first)."""
        return self._embed_with(self._graph, texts)

    def _embed_with(self, graph: tuple | None, texts: Sequence[str], width: int | None = None) -> np.ndarray:
        """``embed`` by ``graph`` (run, input names, width multiple), or by torch when None;
        every batch padded to ``width`` tokens when given."""
        import torch

        from rerankit.encoding import pad_batch
        from rerankit.scoring import token_budget_batches

        with self._lock:
            encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        run, names, multiple = graph or (None, (), None)
        # the budget counts the tokens a batch pads to
        lengths = [-(-len(ids) // (multiple or 1)) * (multiple or 1) for ids in encoded["input_ids"]]
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        batches = token_budget_batches(lengths, self.max_tokens, 256)
        if run is not None:

            def padded():
                for batch in batches:
                    features = pad_batch(self.tokenizer, encoded, batch, "np", multiple, width)
                    yield np.asarray(batch), {n: np.asarray(features[n], dtype=np.int64) for n in names}

            run(padded(), out)
            return out
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for batch in batches:
                features = pad_batch(self.tokenizer, encoded, batch, "pt", None, width)
                features = {k: v.to(device) for k, v in features.items()}
                hidden = self.model(**features).last_hidden_state
                out[batch] = _pooled(hidden, features["attention_mask"], self.pooling).cpu().numpy()
        return out

    def openvino_model(self):
        """The encoder and its pooling converted to an fp32 OpenVINO model (what ``use_openvino``
        runs; a run keeps it as ``ENCODER_GRAPH``). Raises what OpenVINO raises when the encoder
        cannot be converted."""
        import copy

        import torch

        from rerankit.runtimes import openvino_module

        probes = ["a probe", "a longer probe of the encoder"]
        example = self.tokenizer(probes, padding=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]
        # traced on the CPU, where the graph runs, whatever device the encoder serves on
        cpu_copy = copy.deepcopy(self.model).to("cpu", torch.float32).eval()
        module = _pooling_module(cpu_copy, self.pooling, names)
        return openvino_module(module, {n: example[n] for n in names})

    def write_openvino(self, path: Path) -> None:
        """``openvino_model`` written at ``path`` (.xml, beside its .bin), in a folder of its own
        that is replaced whole."""
        from rerankit.runtimes import save_openvino

        folder = Path(path).parent
        staging, previous = (folder.with_name(f"{folder.name}.{part}") for part in ("staging", "previous"))
        for stale in (staging, previous):
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            save_openvino(self.openvino_model(), staging / Path(path).name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
            raise
        swap_in(staging, folder, previous)
        shutil.rmtree(previous, ignore_errors=True)

    def use_openvino(self, precision: str, graph_file: Path | None = None) -> None:
        """Embed from now on with an OpenVINO graph of the encoder compiled for ``precision``
        (fp32 or bf16): ``graph_file`` where given, else the encoder converted in memory;
        ValueError when the graph's embeddings of probe texts are not the encoder's.

        Batches pad to the smallest width multiple from which an embedding is the same whatever
        shares its batch (``runtimes.steady_multiple``), where one holds on this CPU (a graph's
        rounding moves with a batch's padded width otherwise: in bf16, and in fp32's last
        bits); ``neighbour_independent`` says whether one did. A cached embedding then does not
        depend on which request first embedded its text. Raises what OpenVINO raises when the
        encoder cannot be converted."""
        from rerankit.runtimes import read_openvino, rows_runner, steady_multiple

        if graph_file is not None:
            model, names = read_openvino(graph_file)
        else:
            model = self.openvino_model()
            names = [port.get_any_name() for port in model.inputs]
        run = rows_runner(model, precision)
        # texts from one word to past the window: widths spread over every multiple
        step = max(1, self.max_length // PROBE_TEXTS)
        probe = [" ".join(["probe"] * count) for count in range(1, self.max_length + step, step)]
        mine = self._embed_with(None, probe)  # the encoder's own, in torch
        agreement = (mine * self._embed_with((run, names, None), probe)).sum(axis=1)
        if agreement.min() < GRAPH_AGREEMENT:
            where = graph_file or "the converted graph"
            raise ValueError(f"{where}: not this encoder's graph (cosine {agreement.min():.3f} with its own)")

        def embed(picked: list[int], multiple: int, width: int | None) -> np.ndarray:
            return self._embed_with((run, names, multiple), [probe[i] for i in picked], width)

        # unpadded where no multiple fits the window: a cached embedding's last bits are the most
        # a wrong verdict could move, not which pairs a server batches together
        multiple = steady_multiple(embed, len(probe), self.max_length, unpadded=True)
        with self._lock:
            self._graph = (run, names, multiple)
            self.runtime = f"openvino {precision}"
        self.neighbour_independent = multiple is not None

    def save(self, folder: Path) -> None:
        """A sentence-transformers folder (safetensors) that ``load`` reads back."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pooling = {key: name == self.pooling for key, name in POOLING_MODES.items()}
        pooling["word_embedding_dimension"] = self.model.config.hidden_size
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.max_length}))

    def pin(self, texts: Sequence[str]) -> None:
        """Keep the embeddings of ``texts`` (a corpus) for good: those already in the cache
        (validation embedded many of them) move over, only the others are embedded."""
        texts = list(dict.fromkeys(texts))
        keys = [_digest(t) for t in texts]
        known = self._recent.take(keys)
        missing = [(k, t) for k, t in zip(keys, texts) if k not in known]
        fresh = self.embed([t for _, t in missing]) if missing else []
        with self._lock:
            self._pinned.update(known)
            self._pinned.update(zip((k for k, _ in missing), fresh))

    def save_pinned(self, path: Path) -> None:
        keys = np.array(list(self._pinned), dtype="S16")
        rows = np.stack(list(self._pinned.values())) if self._pinned else np.zeros((0, 0), np.float32)
        with open(path, "wb") as handle:
            np.savez(handle, keys=keys, embeddings=rows.astype(np.float32))

    def load_pinned(self, path: Path) -> None:
        """The corpus embeddings ``save_pinned`` wrote; ValueError when the file does not fit
        this encoder (wrong width, not finite, keys and rows of different counts)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, rows = data["keys"], data["embeddings"]
        except (zipfile.BadZipFile, KeyError, EOFError) as exc:  # damaged or not ours
            raise ValueError(f"{path}: not a corpus-embeddings file ({type(exc).__name__}: {exc})") from None
        width = self.model.config.hidden_size
        if keys.dtype != np.dtype("S16") or rows.ndim != 2 or len(keys) != len(rows):
            raise ValueError(f"{path}: expected 16-byte keys and one row per key")
        if len(rows) and (rows.shape[1] != width or not np.isfinite(rows).all()):
            raise ValueError(f"{path}: rows must be {width} finite numbers")
        self._pinned = {bytes(k): r for k, r in zip(keys, rows.astype(np.float32))}

    @property
    def pinned(self) -> int:
        return len(self._pinned)

    def forget(self) -> None:
        """Drop every kept embedding, the corpus's too (what a text costs when it is new)."""
        with self._lock:
            self._pinned = {}
        self._recent.clear()

    def cached_embed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` of distinct ``texts``, through the corpus's embeddings and the cache."""
        keys = [_digest(t) for t in texts]
        with self._lock:
            known = {k: self._pinned[k] for k in keys if k in self._pinned}
        known |= self._recent.found([k for k in keys if k not in known])
        missing = [i for i, k in enumerate(keys) if k not in known]
        fresh = self.embed([texts[i] for i in missing]) if missing else None
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in known:
                out[i] = known[k]
        if fresh is not None:
            out[missing] = fresh
            self._recent.add({keys[i]: row for i, row in zip(missing, fresh)})
        return out

    def scores(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        """Cosine of each pair; each distinct text is embedded once (or found in the cache)."""
        texts = list(dict.fromkeys([*queries, *docs]))
        where = {t: i for i, t in enumerate(texts)}
        emb = self.cached_embed(texts)
        q = emb[[where[t] for t in queries]]
        d = emb[[where[t] for t in docs]]
        return (q * d).sum(axis=1).astype(np.float64)


def write_encoder_graph(cosine: CosineSignal, path: Path) -> bool:
    """``cosine.write_openvino(path)``; where the encoder cannot be converted, False and the log
    says why (a load then converts it, or serves it in torch)."""
    try:
        cosine.write_openvino(path)
    except Exception as exc:  # the converter raises many error types
        log.warning("the sentence encoder's OpenVINO graph was not written: %s", short_reason(exc))
        return False
    return True


def document_sentences(doc: str) -> list[str]:
    """The sentences a best-sentence signal scores: the first MAX_SENTENCES (the text itself
    when it has none)."""
    from rerankit.text_units import sentences

    return sentences(doc)[:MAX_SENTENCES] or [doc]


class BestSentence:
    """``signal``'s score of each document's best-scoring sentence."""

    def __init__(self, signal) -> None:
        self.signal = signal

    def scores(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        if not len(docs):
            return np.zeros(0, dtype=np.float64)
        parts = {d: document_sentences(d) for d in dict.fromkeys(docs)}
        values = self.signal.scores(
            [q for q, d in zip(queries, docs) for _ in parts[d]], [s for d in docs for s in parts[d]]
        )
        starts = np.cumsum([0] + [len(parts[d]) for d in docs[:-1]])
        return np.maximum.reduceat(np.asarray(values, dtype=np.float64), starts)


def base_signals(names: Sequence[str]) -> set[str]:
    """The whole-document signals that ``names`` need loaded (a best-sentence signal reuses its
    whole-document one)."""
    return {SENTENCE_SIGNALS.get(n, n) for n in names} - {"reranker"}


def with_sentence_signals(signals: Mapping, names: Sequence[str]) -> dict:
    """``signals`` (whole-document signals by name) and the best-sentence signals among
    ``names`` built on them, where their whole-document signal is there and they are not."""
    out = dict(signals)
    for name in names:
        base = SENTENCE_SIGNALS.get(name)
        if base in signals and name not in out:
            out[name] = BestSentence(signals[base])
    return out


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _local_snapshot(name: str | Path, revision: str | None) -> Path:
    """A local folder as it is; a hub id as huggingface_hub's local snapshot (offline mode and
    the cache as the hub library is set up)."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name), revision=revision))
    except Exception as exc:  # no network, unknown id, offline cache miss: no such local folder
        raise OSError(
            f"{name}: not a local folder and not fetched from the hub ({type(exc).__name__})"
        ) from None


def load_signals(needs: Sequence[str], folder: Path, encoder, *, dtype=None, device: str = "cpu") -> dict:
    """The signals named in ``needs``: BM25 from ``folder``'s statistics, the cosine of the
    sentence encoder at ``encoder``, and their best-sentence forms. The whole-document signal a
    best-sentence one reuses is there too. OSError or ValueError saying which is missing or
    damaged."""
    signals: dict = {}
    loaded = base_signals(needs)
    if "bm25" in loaded:
        signals["bm25"] = BM25Signal.load(Path(folder) / BM25_FILE)
    if "cosine" in loaded:
        if not Path(encoder).is_dir():
            raise OSError(f"{encoder}: the sentence encoder is missing")
        cosine = CosineSignal.load(encoder, dtype=dtype, device=device)
        if cosine is None:
            raise ValueError(f"{encoder} is not a sentence-embedding model (no Pooling module)")
        if (Path(folder) / CORPUS_EMBEDDINGS).is_file():
            cosine.load_pinned(Path(folder) / CORPUS_EMBEDDINGS)
        signals["cosine"] = cosine
    return with_sentence_signals(signals, needs)


@dataclass(frozen=True)
class Ensemble:
    """Weights and per-signal scales of the fused score (see the module docstring)."""

    signals: tuple[str, ...]
    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    strategy: str = "equal"
    normalization: str = "zscore"
    # rank_gauss: per signal, increasing values (``knots``) and the normal score of each
    # (``normal_at``); a score between two knots is interpolated, one outside them clamped
    knots: tuple[tuple[float, ...], ...] = ()
    normal_at: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.signals)
        if n == 0 or not (len(self.weights) == len(self.means) == len(self.stds) == n):
            raise ValueError("signals, weights, means and stds must have one entry per signal")
        unknown = set(self.signals) - set(SIGNALS)
        if unknown or "reranker" not in self.signals or len(set(self.signals)) != n:
            raise ValueError(
                f"signals must include 'reranker', without repeats, among {SIGNALS}; got {self.signals}"
            )
        for name, values in (("weights", self.weights), ("means", self.means), ("stds", self.stds)):
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ValueError(f"{name} must be finite numbers, got {values}")
        if any(w < 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0, abs_tol=1e-4):
            raise ValueError(f"weights must be non-negative and sum to 1, got {self.weights}")
        if any(s <= 0 for s in self.stds):
            raise ValueError(f"stds must be above 0, got {self.stds}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.normalization == "rank_gauss":
            self._check_maps()
        elif self.knots or self.normal_at:
            raise ValueError("knots and normal_at belong to the rank_gauss normalization only")

    def _check_maps(self) -> None:
        if not (len(self.knots) == len(self.normal_at) == len(self.signals)):
            raise ValueError("rank_gauss needs knots and normal_at for every signal")
        for name, knots, normal in zip(self.signals, self.knots, self.normal_at):
            if len(knots) != len(normal) or len(knots) < 2:
                raise ValueError(
                    f"{name}: knots and normal_at must be two lists of the same length, 2 or more"
                )
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in (*knots, *normal)
            ):
                raise ValueError(f"{name}: knots and normal_at must be finite numbers")
            k, v = np.asarray(knots, dtype=np.float64), np.asarray(normal, dtype=np.float64)
            if np.any(np.diff(k) <= 0) or np.any(np.diff(v) < 0):
                raise ValueError(f"{name}: knots must increase and normal_at must not decrease")

    def combine(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(len(features["reranker"]), dtype=np.float64)
        for i, (name, w) in enumerate(zip(self.signals, self.weights)):
            if w:
                total += w * self.scaled(i, np.asarray(features[name], dtype=np.float64))
        return total

    def scaled(self, i: int, values: np.ndarray) -> np.ndarray:
        """Signal ``i``'s values on the common scale."""
        if self.normalization == "rank_gauss":
            return np.interp(values, self.knots[i], self.normal_at[i])
        return (values - self.means[i]) / self.stds[i]

    @property
    def needs(self) -> tuple[str, ...]:
        """The signals besides the cross-encoder that carry weight."""
        return tuple(s for s, w in zip(self.signals, self.weights) if w and s != "reranker")

    def to_dict(self) -> dict:
        return {
            "signals": list(self.signals),
            "weights": list(self.weights),
            "means": list(self.means),
            "stds": list(self.stds),
            "strategy": self.strategy,
            "normalization": self.normalization,
        } | (
            {"knots": [list(k) for k in self.knots], "normal_at": [list(v) for v in self.normal_at]}
            if self.knots
            else {}
        )

    @classmethod
    def from_dict(cls, data: Mapping) -> Ensemble:
        try:
            return cls(
                tuple(data["signals"]),
                tuple(data["weights"]),
                tuple(data["means"]),
                tuple(data["stds"]),
                str(data.get("strategy", "")),
                str(data.get("normalization", "zscore")),
                tuple(map(tuple, data.get("knots", ()))),
                tuple(map(tuple, data.get("normal_at", ()))),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"expected signals, weights, means and stds: {exc}") from None


def weight_grid(n: int, step: float = WEIGHT_STEP) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` non-negative multiples of ``step`` that sums to 1, the
    cross-encoder's weight (the first) above 0."""
    units = round(1 / step)
    grid = []
    for combo in product(range(units + 1), repeat=n):
        if sum(combo) == units and combo[0] > 0:
            grid.append(tuple(c / units for c in combo))
    return grid


def signal_families(signals: Sequence[str]) -> list[list[int]]:
    """The positions of ``signals`` grouped by family, in order of first appearance: a
    best-sentence signal is in the family of its whole-document one."""
    families: dict[str, list[int]] = {}
    for i, name in enumerate(signals):
        families.setdefault(SENTENCE_SIGNALS.get(name, name), []).append(i)
    return list(families.values())


def per_signal_weights(signals: Sequence[str], family_weights: Sequence[float]) -> tuple[float, ...]:
    """Each signal's weight from its family's (``signal_families`` order), split equally within
    the family."""
    weights = [0.0] * len(signals)
    for w, members in zip(family_weights, signal_families(signals)):
        for i in members:
            weights[i] = w / len(members)
    return tuple(weights)


def equal_weights(signals: Sequence[str]) -> tuple[float, ...]:
    """The ``equal`` strategy: every family the same weight, split equally within it."""
    count = len(signal_families(signals))
    return per_signal_weights(signals, [1 / count] * count)


def rank_gauss_map(values: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots and normal scores of ``values``' quantiles: value ``x`` maps to the normal score of
    its plotting position ``(rank - 0.5) / n``, so the map is bounded by the outermost pairs.
    Tied quantiles share one knot at their mean position; a constant signal maps to 0."""
    from statistics import NormalDist

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0 or values.min() == values.max():
        low = float(values[0]) if n else 0.0
        return (low, low + 1.0), (0.0, 0.0)
    levels = np.linspace(0.5 / n, 1 - 0.5 / n, min(MAX_KNOTS, n))
    cuts = np.quantile(values, levels)
    knots, inverse = np.unique(cuts, return_inverse=True)
    positions = np.bincount(inverse, weights=levels) / np.bincount(inverse)
    normal = NormalDist()
    return tuple(map(float, knots)), tuple(normal.inv_cdf(float(p)) for p in positions)


def fit_ensemble(
    features: Sequence[Mapping[str, np.ndarray]],
    quality: Callable[[list[np.ndarray], Sequence[int]], float],
    signals: Sequence[str],
    *,
    normalization: str = "zscore",
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[Ensemble, dict]:
    """The ensemble of ``signals`` whose fused scores of validation queries ``quality`` rates
    best, and a report.

    ``features``: per validation query, each signal's scores of its candidates. ``quality(scores,
    queries)``: the metric (NDCG@10, say) of per-query scores of the queries at those indices, a
    mean over those queries. Weights are given per family (``signal_families``: a best-sentence
    signal shares its whole-document signal's weight equally), so the fit has one free weight
    fewer than families, not signals. Three strategies are compared by cross-validation over
    ``folds`` folds of queries: equal weights, the grid's best, and the grid's best shrunk halfway
    to equal. A fitted strategy replaces equal weights only when its held-out gain over them is
    larger than the gain's standard error over the queries (the one-standard-error rule: validation
    sets are small, and a gain within noise does not carry over). The winner is refitted on every
    query. The report holds each strategy's cross-validated value, its gain over equal weights with
    that standard error, and its full fit. ``normalization`` puts each signal on one scale before
    the weights: z-scores over the validation pairs, or their normal scores (``rank_gauss_map``).
    """
    signals = tuple(signals)
    flat = {s: np.concatenate([np.asarray(f[s], dtype=np.float64) for f in features]) for s in signals}
    means = tuple(float(flat[s].mean()) for s in signals)
    stds = tuple(float(flat[s].std()) or 1.0 for s in signals)
    maps = [rank_gauss_map(flat[s]) for s in signals] if normalization == "rank_gauss" else []
    scale = {
        "normalization": normalization,
        "knots": tuple(k for k, _ in maps),
        "normal_at": tuple(v for _, v in maps),
    }
    n = len(features)

    equal = equal_weights(signals)
    grid = [per_signal_weights(signals, w) for w in weight_grid(len(signal_families(signals)))]

    def fused(weights, queries):
        ens = Ensemble(signals, weights, means, stds, **scale)
        return [ens.combine(features[q]) for q in queries]

    seen: dict[tuple[int, ...], tuple[float, ...]] = {}

    def best_on(queries):
        key = tuple(queries)
        if key not in seen:  # the grid and shrunk strategies fit the same folds
            values = {w: quality(fused(w, queries), queries) for w in grid}
            seen[key] = max(grid, key=lambda w: (values[w], w[0]))  # ties: more weight on the reranker
        return seen[key]

    def shrunk(weights):
        return tuple((a + b) / 2 for a, b in zip(weights, equal))

    strategies = {"equal": lambda qs: equal, "grid": best_on, "shrunk": lambda qs: shrunk(best_on(qs))}
    parts = query_folds(n, folds, seed)
    report: dict = {"signals": list(signals), "folds": len(parts), "strategies": {}}
    held_out: dict[str, np.ndarray] = {}
    everyone = list(range(n))
    full_fit = {}  # each strategy's weights on every query, unrounded: the report rounds them
    for name, strategy in strategies.items():
        held_out[name] = held_out_values(n, parts, strategy, lambda w, q: quality(fused(w, [q]), [q]))
        gain, error = gain_and_error(held_out[name] - held_out["equal"])
        weights = full_fit[name] = strategy(everyone)
        report["strategies"][name] = {
            "cross_validated": float(held_out[name].mean()) if n else 0.0,
            "gain_over_equal": gain,
            "standard_error": error,
            "weights": [round(w, 4) for w in weights],
            "fitted_value": quality(fused(weights, everyone), everyone),
        }
    clear = [
        name
        for name, s in report["strategies"].items()
        if name == "equal" or beats_noise(s["gain_over_equal"], s["standard_error"], n)
    ]
    chosen = max(clear, key=lambda s: report["strategies"][s]["cross_validated"])
    report["chosen"] = chosen
    report["normalization"] = normalization
    return Ensemble(signals, full_fit[chosen], means, stds, chosen, **scale), report
