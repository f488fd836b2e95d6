"""loss.complement: the cross-encoder trained inside the fusion it ships in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rerankit
from rerankit.collator import EpochGroupDataset, GroupCollator
from rerankit.complement import build_prior, equal_ratios
from rerankit.config import validate_config
from rerankit.data import read_records
from rerankit.ensemble import BestSentence, BM25Signal, CosineSignal
from rerankit.errors import ConfigError
from rerankit.sampling import NegativeSampler
from tests.conftest import tiny_config

pytestmark = pytest.mark.smoke


def test_each_signal_weighs_as_equal_family_weights_weigh_it_against_the_cross_encoder():
    both = equal_ratios(["bm25", "bm25_sentence", "cosine", "cosine_sentence"])
    assert both == pytest.approx({"bm25": 0.5, "bm25_sentence": 0.5, "cosine": 0.5, "cosine_sentence": 0.5})
    assert equal_ratios(["bm25"]) == pytest.approx({"bm25": 1.0})
    assert equal_ratios(["bm25", "cosine"]) == pytest.approx({"bm25": 1.0, "cosine": 1.0})


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


def test_groups_carry_the_prior_into_the_batch(toy_data, tiny_sentence_bert_dir, tiny_bert_dir):
    from transformers import AutoTokenizer

    train, _ = toy_data
    records = read_records(train)[0]
    corpus = [d.text for r in records for d in r.positives + r.negatives]
    prior = build_prior(records, corpus, str(tiny_sentence_bert_dir))
    dataset = EpochGroupDataset(NegativeSampler(records, num_negatives=3, hard_ratio=0.5), prior)
    groups = [dataset[0], dataset[1]]
    assert all(len(g.prior) == len(g.docs) for g in groups)
    assert groups[0].prior == pytest.approx(prior(groups[0].query, groups[0].docs))
    batch = GroupCollator(AutoTokenizer.from_pretrained(tiny_bert_dir), 48)(groups)
    width = batch["group_mask"].shape[1]
    assert batch["group_prior"][1, : len(groups[1].prior)].tolist() == pytest.approx(groups[1].prior)
    assert batch["group_prior"][batch["group_mask"] == 0].abs().sum() == 0 and width >= len(groups[0].docs)
    assert "group_prior" not in GroupCollator(AutoTokenizer.from_pretrained(tiny_bert_dir), 48)(
        [EpochGroupDataset(dataset.sampler)[0]]
    )


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
    # the prior weighs at the logits' spread: scaled logits keep the same fused order
    for scale in (1.0, 10.0):
        scaled = torch.tensor(logits) * scale
        fused = scaled + scaled.std() * torch.tensor([2.0, -1.0, -1.0])
        assert _loss(scaled.tolist(), [2.0, -1.0, -1.0]) == pytest.approx(_loss(fused.tolist()), rel=1e-5)


def test_a_complement_without_the_ensemble_is_refused(toy_data, tiny_bert_dir, tmp_path):
    train, valid = toy_data
    config = tiny_config(tiny_bert_dir, train, valid, tmp_path / "run", loss={"complement": "ensemble"})
    with pytest.raises(ConfigError, match="loss.complement .* ensemble is 'none'"):
        validate_config(config)


def test_a_run_trained_as_the_complement_ships_its_ensemble(toy_data, tiny_sentence_bert_dir, tmp_path):
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
    result = rerankit.fit(config)
    manifest = json.loads((result.output_dir / "run.json").read_text())
    assert manifest["ensemble"]["signals"][0] == "reranker"
    losses = [entry["loss"] for entry in result.metrics["train_loss"]]
    assert losses and all(np.isfinite(losses))
    # the same run without the prior: the same draws, other losses once the logits spread
    config["loss"]["complement"], config["output"]["dir"] = "none", str(tmp_path / "alone")
    alone = [entry["loss"] for entry in rerankit.fit(config).metrics["train_loss"]]
    assert alone[-1] != pytest.approx(losses[-1], rel=1e-3)
