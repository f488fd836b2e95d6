"""Long documents scored by windows: boundaries, aggregates, the query kept whole, and a
relevant passage past the first window found by windows and missed by truncation."""

import warnings

import numpy as np
import pytest
from conftest import NOISE, WORDS

from rerankit import Reranker
from rerankit.config import LongDocumentsConfig
from rerankit.windows import aggregate, boundary_spans, split_documents, window_spans

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("num_tokens, size, stride", [(100, 20, 5), (57, 16, 0), (33, 10, 9), (10, 10, 3)])
def test_windows_cover_every_token_and_overlap_by_the_stride_only(num_tokens, size, stride):
    spans = window_spans(num_tokens, size, stride, max_windows=1000)
    assert spans[0][0] == 0 and spans[-1][1] == num_tokens
    assert all(end - start <= size for start, end in spans)
    for (s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert s2 > s1 and e1 - s2 <= stride  # no gap, overlap at most the stride
        assert s2 <= e1  # no token lost
    assert window_spans(num_tokens, size, stride, max_windows=2) == spans[:2]


def test_aggregates_on_a_hand_made_example():
    scores = np.array([1.0, 3.0, 2.0, 5.0, -1.0])
    owner = [0, 0, 0, 1, 2]  # document 0 has three windows, the others one
    assert aggregate(scores, owner, 3, "max").tolist() == [3.0, 5.0, -1.0]
    assert aggregate(scores, owner, 3, "first").tolist() == [1.0, 5.0, -1.0]
    assert aggregate(scores, owner, 3, "mean").tolist() == [2.0, 5.0, -1.0]
    assert aggregate(scores, owner, 3, "max+first").tolist() == [2.0, 5.0, -1.0]


def test_every_window_holds_the_whole_query_fits_the_budget_and_the_windows_cover_the_document(
    fp32_reranker,
):
    tokenizer = fp32_reranker.tokenizer
    query = "tell me about the apple story"
    # Word-digit pairs that never repeat within the document, so each window's place is known.
    doc = " ".join(f"{WORDS[i % len(WORDS)]} {i % 10}" for i in range(60))
    options = LongDocumentsConfig(mode="windows", stride=4)
    queries, windows, owner = split_documents(tokenizer, [query], [doc], 48, options)
    assert len(windows) > 1 and set(owner) == {0} and set(queries) == {query}
    query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    covered = 0
    for window in windows:
        pair = tokenizer(query, window)  # untruncated: the window must fit as it is
        assert len(pair["input_ids"]) <= 48
        parts = pair.sequence_ids()
        assert [t for t, part in zip(pair["input_ids"], parts) if part == 0] == query_ids
        start = doc.find(window)
        assert 0 <= start <= covered  # a slice of the document, no gap after the previous one
        covered = max(covered, start + len(window))
    assert covered == len(doc)  # the end is read


def test_a_passage_past_the_first_window_is_found_by_windows_and_missed_by_truncation(tiny_bert_run):
    """The tiny toy model ranks documents with the query's topic word above noise. Both
    documents open with the same 60 noise words; only one has its topic past the first window."""
    opening = " ".join(NOISE[i % len(NOISE)] for i in range(60))
    docs = [opening + " the old zinc story" * 6, opening + " apple story with apple and the apple" * 4]
    query = "tell me about apple"
    run = tiny_bert_run[0].output_dir
    truncated = Reranker.load(run, device="cpu", dtype="float32")
    windowed = Reranker.load(
        run, device="cpu", dtype="float32", long_documents={"mode": "windows", "stride": 8}
    )
    cut = truncated.score([(query, d) for d in docs], raw=True)
    assert cut[0] == pytest.approx(cut[1], abs=1e-5)  # the same first window: no way to tell
    scores, counts = windowed.window_logits([query, query], docs)
    assert counts.min() > 1
    assert scores[1] > scores[0] + 0.5
    assert windowed.rerank(query, docs).indices == [1, 0]
    first = Reranker.load(
        run, device="cpu", dtype="float32", long_documents={"mode": "windows", "aggregate": "first"}
    )
    np.testing.assert_allclose(first.logits([query, query], docs), cut, atol=1e-5)


def test_server_meta_counts_the_windows(tiny_bert_run):
    pytest.importorskip("litestar")
    from conftest import wait_ready
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app

    windowed = Reranker.load(
        tiny_bert_run[0].output_dir, device="cpu", dtype="float32", long_documents={"mode": "windows"}
    )
    long_doc = " ".join(NOISE[i % len(NOISE)] for i in range(60)) + " apple"
    with TestClient(create_app(ServerSettings(model="in-memory"), reranker=windowed)) as client:
        wait_ready(client)
        body = {"query": "tell me about apple", "documents": ["apple story", long_doc]}
        meta = client.post("/v2/rerank", json=body).json()["meta"]
        assert meta["windows_scored"] == 1 + windowed.window_logits([body["query"]], [long_doc])[1][0] > 2
        cut = client.post("/v2/rerank", json={**body, "max_tokens_per_doc": 10}).json()["meta"]
        assert cut["windows_scored"] == 2  # cut to 10 tokens first: one window each


def test_a_megabyte_document_is_refused_or_bounded_never_a_stall(make_client):
    import time

    client = make_client()
    start = time.monotonic()
    response = client.post("/v2/rerank", json={"query": "apple", "documents": ["zinc " * 200_000]})
    assert response.status_code == 400 and "longer than 100000 characters" in response.json()["detail"]
    assert time.monotonic() - start < 10


def test_tensor_aggregate_matches_numpy_and_trains_the_best_window():
    import torch

    from rerankit.windows import aggregate_tensor

    scores = np.array([1.0, 3.0, 2.0, 5.0, -1.0])
    owner = [0, 0, 0, 1, 2]
    for how in ("max", "first", "mean", "max+first"):
        got = aggregate_tensor(torch.tensor(scores), torch.tensor(owner), 3, how)
        np.testing.assert_allclose(got.numpy(), aggregate(scores, owner, 3, how))
    window = torch.tensor(scores, requires_grad=True)
    aggregate_tensor(window, torch.tensor(owner), 3, "max").sum().backward()
    assert window.grad.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]  # MaxP: only the best window learns


def _buried(lines, words=40):
    """Toy lines whose documents open with ``words`` filler words: the topic lies past the
    first window of the tiny model's 48 tokens. Doc ids are hashes: trec_eval breaks score
    ties by doc id, and the toy's "q0p1" (positive) > "q0n1" (negative) would reward ties."""
    import hashlib

    from conftest import FILLER

    prefix = " ".join(FILLER[i % len(FILLER)] for i in range(words))
    for line in lines:
        for doc in line["positives"] + line["negatives"]:
            doc["text"] = f"{prefix} {doc['text']}"
            doc["doc_id"] = hashlib.sha1(doc["doc_id"].encode()).hexdigest()[:10]
    return lines


def test_maxp_training_learns_what_firstp_cannot_see(tiny_bert_dir, tmp_path):
    import json

    from conftest import tiny_config, toy_lines, write_jsonl

    import rerankit

    train = write_jsonl(tmp_path / "train.jsonl", _buried(toy_lines(48, seed=1)))
    valid_lines = [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)]
    valid = write_jsonl(tmp_path / "valid.jsonl", _buried(valid_lines))
    results = {}
    for mode in ("truncate", "windows"):
        config = tiny_config(tiny_bert_dir, train, valid, tmp_path / mode)
        config["model"]["long_documents"] = {"mode": mode, "stride": 8}
        results[mode] = rerankit.fit(config).metrics["best"]["ndcg@10"]
    assert results["windows"] > results["truncate"] + 0.05, results
    manifest = json.loads((tmp_path / "windows" / "run.json").read_text())
    assert manifest["long_documents"]["mode"] == "windows"
    loaded = Reranker.load(tmp_path / "windows", device="cpu", dtype="float32")
    assert loaded.long_documents.mode == "windows"


def _random_layout(rng, num_tokens):
    """Paragraph and sentence starts (token indices) of a made-up document."""
    sentences = sorted(set(rng.integers(1, num_tokens, size=num_tokens // 9).tolist()))
    paragraphs = sorted(set(rng.choice(sentences, size=max(1, len(sentences) // 3)).tolist()))
    return paragraphs, sentences


@pytest.mark.parametrize("seed", range(30))
def test_boundary_windows_cover_every_token_fit_and_keep_each_paragraph_that_fits_whole(seed):
    rng = np.random.default_rng(seed)
    num_tokens, size, stride = int(rng.integers(40, 400)), int(rng.integers(12, 60)), int(rng.integers(0, 16))
    paragraphs, sentences = _random_layout(rng, num_tokens)
    spans = boundary_spans(num_tokens, paragraphs, sentences, size, stride, max_windows=10_000)
    assert spans[0][0] == 0 and spans[-1][1] == num_tokens
    assert all(0 < end - start <= size for start, end in spans)
    for (s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert s1 < s2 <= e1 and e1 - s2 <= stride  # no gap, overlap at most the stride
    edges = [0, *paragraphs, num_tokens]
    for start, end in zip(edges, edges[1:]):
        if end - start <= size:
            assert any(s <= start and end <= e for s, e in spans), (start, end)
    cuts = sorted({0, *paragraphs, *sentences, num_tokens})
    for start, _ in spans:  # a window starts mid-sentence only where a sentence outgrows it
        if start not in cuts:
            before = max(c for c in cuts if c < start)
            after = min(c for c in cuts if c > start)
            assert after - before > size
    assert boundary_spans(num_tokens, paragraphs, sentences, size, stride, max_windows=2) == spans[:2]


def _paragraphs(n, words, seed):
    rng = np.random.default_rng(seed)
    return [
        " ".join(
            f"{WORDS[rng.integers(len(WORDS))].capitalize()} {' '.join(rng.choice(WORDS, size=words - 1))}."
            for _ in range(3)
        )
        for _ in range(n)
    ]


def test_a_paragraph_that_fits_a_window_is_read_whole_by_one_and_token_cuts_split_it(fp32_reranker):
    tokenizer = fp32_reranker.tokenizer
    paragraphs = _paragraphs(5, words=7, seed=3)
    doc = "\n\n".join(paragraphs)
    options = LongDocumentsConfig(mode="windows", stride=4)
    by_boundaries = split_documents(tokenizer, ["q"], [doc], 64, options)[1]
    by_tokens = split_documents(tokenizer, ["q"], [doc], 64, options.model_copy(update={"cut": "tokens"}))[1]
    for paragraph in paragraphs:
        assert any(paragraph in window for window in by_boundaries)
    # the fixed windows of the same budget split at least one paragraph between two windows
    assert not all(any(p in window for window in by_tokens) for p in paragraphs)
    assert all(window.strip() == window for window in by_boundaries)


def test_a_paragraph_longer_than_a_window_is_cut_at_sentence_ends(fp32_reranker):
    tokenizer = fp32_reranker.tokenizer
    sentences = _paragraphs(1, words=6, seed=5)[0].split(". ")
    doc = ". ".join(sentences * 4)  # one paragraph, twelve sentences, longer than a window
    windows = split_documents(tokenizer, ["q"], [doc], 40, LongDocumentsConfig(mode="windows", stride=0))[1]
    assert len(windows) > 1
    assert all(window.endswith(".") for window in windows)
    assert all(window[0].isupper() for window in windows)


def test_documents_cut_by_max_windows_are_warned_about(fp32_reranker):
    tokenizer = fp32_reranker.tokenizer
    doc = "\n\n".join(_paragraphs(8, words=7, seed=4))
    options = LongDocumentsConfig(mode="windows", max_windows=2)
    with pytest.warns(UserWarning, match="max_windows"):
        split_documents(tokenizer, ["q"], [doc], 64, options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_documents(tokenizer, ["q"], ["One short paragraph."], 64, options)


def _window_batch(tiny_bert_dir):
    """A tiny model in eval mode (no dropout) and a batch of two groups of long documents."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.collator import GroupCollator
    from rerankit.sampling import Group

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    docs = ["\n\n".join(_paragraphs(8, words=6, seed=s)) for s in range(6)]
    groups = [
        Group(query="apple river", docs=tuple(docs[:3]), labels=(1, 0, 0), doc_ids=("a", "b", "c")),
        Group(query="tiger castle", docs=tuple(docs[3:]), labels=(1, 0, 0), doc_ids=("d", "e", "f")),
    ]
    options = LongDocumentsConfig(mode="windows", stride=4)
    return model, GroupCollator(tokenizer, 48, options)(groups)


@pytest.mark.parametrize("how", ["max", "max+first", "first"])
def test_best_window_training_gives_the_all_windows_loss_and_gradients_from_fewer_rows(tiny_bert_dir, how):
    import torch

    from rerankit.training import scored_windows
    from rerankit.windows import aggregate_tensor

    model, batch = _window_batch(tiny_bert_dir)
    owner, num_docs = batch.pop("window_owner"), len(batch.pop("pair_slots"))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    rows_with_grad = []
    hook = model.bert.embeddings.register_forward_hook(
        lambda module, args, out: rows_with_grad.append(len(out)) if torch.is_grad_enabled() else None
    )

    def loss_and_grads(inputs, owner):
        model.zero_grad()
        scores = aggregate_tensor(model(**inputs).logits.view(-1), owner, num_docs, how)
        loss = torch.nn.functional.cross_entropy(scores.view(2, 3), torch.tensor([0, 0]))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    full_loss, full_grads = loss_and_grads(inputs, owner)
    picked, picked_owner = scored_windows(model, inputs, owner, num_docs, how)
    best_loss, best_grads = loss_and_grads(picked, picked_owner)
    hook.remove()
    assert len(owner) > num_docs  # the documents are long: several windows each
    assert rows_with_grad[1] <= (2 if how == "max+first" else 1) * num_docs < rows_with_grad[0]
    assert best_loss == pytest.approx(full_loss, abs=1e-5)
    for full, best in zip(full_grads, best_grads):
        torch.testing.assert_close(best, full, atol=1e-5, rtol=1e-4)


def test_a_step_cap_keeps_every_documents_first_window_then_takes_windows_in_turn():
    from rerankit.collator import capped_windows

    owner = [0, 0, 0, 1, 2, 2, 2, 2]
    assert capped_windows(owner, None) == list(range(8))
    assert capped_windows(owner, 5) == [0, 1, 3, 4, 5]  # firsts, then each document's second
    assert capped_windows(owner, 2) == [0, 3, 4]  # every document keeps its first
    model_batch_owner = [owner[i] for i in capped_windows(owner, 6)]
    assert model_batch_owner == [0, 0, 0, 1, 2, 2]


def test_groups_of_documents_are_batched_as_the_groups_of_their_windows(tiny_bert_run):
    """A server round of several requests (groups of documents) hands the scorer the groups of
    windows those documents make, and each request gets the scores it gets alone."""
    windowed = Reranker.load(
        tiny_bert_run[0].output_dir,
        device="cpu",
        dtype="float32",
        long_documents={"mode": "windows", "stride": 8},
    )
    opening = " ".join(NOISE[i % len(NOISE)] for i in range(60))
    requests = [[opening + " apple"], ["short apple", opening * 2, "banana"]]
    seen = []
    score = windowed._score
    windowed._score = lambda *args, groups=None: seen.append(groups) or score(*args, groups=groups)
    alone = [windowed.input_logits(["apple"] * len(docs), docs) for docs in requests]
    docs = [d for request in requests for d in request]
    logits, counts = windowed.input_logits(["apple"] * len(docs), docs, groups=[1, 3])
    assert seen[-1] == [int(alone[0][1].sum()), int(alone[1][1].sum())] and seen[-1][0] > 1
    np.testing.assert_allclose(logits, np.concatenate([a[0] for a in alone]), atol=1e-5)
    np.testing.assert_array_equal(counts, np.concatenate([a[1] for a in alone]))
