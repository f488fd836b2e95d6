"""loss.complement: the cross-encoder trained inside the fusion it ships in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rerankit
from rerankit.collator import EpochGroupDataset, GroupCollator
from rerankit.complement import build_prior
from rerankit.config import validate_config
from rerankit.data import read_records
from rerankit.ensemble import BestSentence, BM25Signal, CosineSignal
from rerankit.errors import ConfigError
from rerankit.sampling import NegativeSampler
from tests.conftest import tiny_config, toy_lines, write_jsonl

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize(
    "names", [["bm25", "bm25_sentence", "cosine", "cosine_sentence"], ["bm25", "bm25_sentence"]]
)
def test_each_signal_weighs_against_the_cross_encoder_as_the_ensembles_equal_weights_do(names):
    from rerankit.ensemble import equal_weights, fit_ensemble

    rng = np.random.default_rng(0)
    signals = ("reranker", *names)
    features = [{s: rng.normal(size=6) for s in signals} for _ in range(10)]
    equal, report = fit_ensemble(features, lambda scores, queries: 0.0, signals)
    assert report["chosen"] == "equal"
    assert equal.weights == pytest.approx(equal_weights(signals))
    weights = dict(zip(signals, equal_weights(signals)))
    ratios = {s: weights[s] / weights["reranker"] for s in names}
    assert ratios == pytest.approx(dict.fromkeys(names, 0.5))


def test_the_prior_is_the_standardized_signals_of_the_training_documents(toy_data, tiny_sentence_bert_dir):
    train, _ = toy_data
    records = read_records(train)[0]
    corpus = list(dict.fromkeys(d.text for r in records for d in r.positives + r.negatives))
    prior = build_prior(records, corpus, str(tiny_sentence_bert_dir))
    assert set(prior.signals) == {"bm25", "bm25_sentence", "cosine", "cosine_sentence"}

    # by hand: each signal standardized over every (query, document) of the training lines
    bm25, cosine = BM25Signal.from_corpus(corpus), CosineSignal.load(tiny_sentence_bert_dir)
    signals = {
        "bm25": bm25,
        "bm25_sentence": BestSentence(bm25),
        "cosine": cosine,
        "cosine_sentence": BestSentence(cosine),
    }
    queries = [r.query for r in records for _ in r.positives + r.negatives]
    docs = [d.text for r in records for d in r.positives + r.negatives]
    record = records[3]
    group = [d.text for d in record.positives + record.negatives]
    expected = np.zeros(len(group))
    for signal in signals.values():
        everyone = signal.scores(queries, docs)
        expected += (
            0.5 * (signal.scores([record.query] * len(group), group) - everyone.mean()) / everyone.std()
        )
    assert prior(record.query, group) == pytest.approx(expected, abs=1e-5)


def test_groups_carry_the_prior_into_the_batch(tmp_path, tiny_sentence_bert_dir, tiny_bert_dir):
    from transformers import AutoTokenizer

    # one positive or two: groups of 4 and 5 documents, padded to 5 in the batch
    lines = toy_lines(6, seed=1, positives=1) + [
        dict(row, query_text="two " + row["query_text"]) for row in toy_lines(6, seed=2, positives=2)
    ]
    records = read_records(write_jsonl(tmp_path / "train.jsonl", lines))[0]
    corpus = [d.text for r in records for d in r.positives + r.negatives]
    prior = build_prior(records, corpus, str(tiny_sentence_bert_dir))
    dataset = EpochGroupDataset(NegativeSampler(records, num_negatives=3, hard_ratio=0.5), prior)
    groups = [dataset[0], dataset[len(records) - 1]]
    assert [len(g.docs) for g in groups] == [4, 5]
    assert all(len(g.prior) == len(g.docs) for g in groups)
    assert groups[0].prior == pytest.approx(prior(groups[0].query, groups[0].docs))
    collate = GroupCollator(AutoTokenizer.from_pretrained(tiny_bert_dir), 48)
    batch = collate(groups)
    for row, group in enumerate(groups):
        assert batch["group_prior"][row, : len(group.docs)].tolist() == pytest.approx(group.prior)
    assert not batch["group_mask"][0, 4] and batch["group_prior"][0, 4] == 0
    assert "group_prior" not in collate([EpochGroupDataset(dataset.sampler)[0]])


class _Logits:
    def __init__(self, logits):
        self.logits = logits


def _loss(logits, prior=None):
    from rerankit.config import LongDocumentsConfig
    from rerankit.losses import build_loss
    from rerankit.training import RerankTrainer

    trainer = RerankTrainer.__new__(RerankTrainer)
    trainer.loss_fn, trainer.long_documents, trainer.distillation = (
        build_loss("listwise"),
        LongDocumentsConfig(),
        None,
    )
    inputs = {
        "group_labels": torch.tensor([[1, 0, 0]]),
        "group_mask": torch.ones(1, 3, dtype=torch.bool),
        "pair_slots": torch.arange(3),
    }
    if prior is not None:
        inputs["group_prior"] = torch.tensor([prior])
    return float(trainer.compute_loss(lambda **_: _Logits(torch.tensor(logits)), inputs))


def test_the_loss_reads_the_logits_fused_with_the_prior_at_the_logits_own_spread():
    logits = [0.0, 1.0, -1.0]  # the positive (first) in the middle
    alone = _loss(logits)
    assert _loss(logits, [2.0, -1.0, -1.0]) < alone < _loss(logits, [-2.0, 1.0, 1.0])
    # the prior weighs at the logits' spread (the population standard deviation, as the
    # ensemble's): scaled logits keep the same fused order
    for scale in (1.0, 10.0):
        scaled = np.array(logits) * scale
        fused = scaled + scaled.std() * np.array([2.0, -1.0, -1.0])
        assert _loss(scaled.tolist(), [2.0, -1.0, -1.0]) == pytest.approx(_loss(fused.tolist()), rel=1e-5)


def test_a_complement_without_the_ensemble_is_refused(toy_data, tiny_bert_dir, tmp_path):
    train, valid = toy_data
    config = tiny_config(tiny_bert_dir, train, valid, tmp_path / "run", loss={"complement": "ensemble"})
    with pytest.raises(ConfigError, match="loss.complement .* ensemble is 'none'"):
        validate_config(config)


def test_a_run_trained_as_the_complement_ships_its_ensemble(
    toy_data, tiny_sentence_bert_dir, tmp_path, monkeypatch
):
    train, valid = toy_data
    config = tiny_config(
        tiny_sentence_bert_dir,
        train,
        valid,
        tmp_path / "run",
        loss={"name": "listwise", "complement": "ensemble"},
        ensemble="auto",
        evaluation={"candidates": "deployed", "depth": 8},
        training={"epochs": 1},
    )
    from rerankit.training import RerankTrainer

    read = []
    compute_loss = RerankTrainer.compute_loss

    def recorded(self, model, inputs, *args, **kwargs):
        read.append("group_prior" in inputs)
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(RerankTrainer, "compute_loss", recorded)
    result = rerankit.fit(config)
    assert read and all(read)  # every training step read the signals
    manifest = json.loads((result.output_dir / "run.json").read_text())
    assert manifest["ensemble"]["signals"] == [
        "reranker",
        "bm25",
        "bm25_sentence",
        "cosine",
        "cosine_sentence",
    ]
    losses = [entry["loss"] for entry in result.metrics["train_loss"]]
    assert losses and all(np.isfinite(losses))
