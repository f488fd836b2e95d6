"""Training end to end on tiny random models (4-bit QLoRA on CPU), and the run folder."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from safetensors import safe_open

import rerankit
from rerankit.data import read_records
from rerankit.errors import ModelLoadError, RerankitError
from rerankit.validation import ValidationSet, Validator

pytestmark = pytest.mark.smoke


def _fit(model_dir, train, valid, out, **sections):
    return rerankit.fit(tiny_config(model_dir, train, valid, out, **sections))


def _validator(result, valid_path):
    records, _ = read_records(valid_path)
    return Validator(
        ValidationSet.from_records(records),
        result.tokenizer,
        result.config.model.max_length,
        prompt=result.prompt,
    )


def _reload_4bit(run_dir, base_dir):
    """The saved adapter on a fresh 4-bit base, with the same 4-bit kernel it trained with."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rerankit.loading import load_tokenizer
    from rerankit.model_builder import HEAD_NAMES, keep_training_layout, quantization_config

    quant = quantization_config("4bit", compute_dtype="float32", skip_modules=list(HEAD_NAMES) + [".*pooler"])
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, quantization_config=quant, dtype=torch.float32
    )
    if base.config.pad_token_id is None:
        base.config.pad_token_id = load_tokenizer(str(run_dir / "model")).pad_token_id
    keep_training_layout(base)
    return PeftModel.from_pretrained(base, str(run_dir / "model"))


def test_qlora_bert_learns_the_task(tiny_bert_run):
    result, _ = tiny_bert_run
    m = result.metrics
    losses = [e["loss"] for e in m["train_loss"]]
    assert losses[-1] < 0.6 * losses[0], losses
    assert m["best"]["ndcg@10"] > m["baseline"]["ndcg@10"] + 0.1, (m["baseline"], m["best"])
    assert len(m["evaluations"]) == 3  # once per epoch
    assert m["valid_queries"] == 16 and m["valid_pairs"] == 16 * 6  # full set: 2 pos + 4 neg


def test_run_folder_is_complete(tiny_bert_run):
    result, _ = tiny_bert_run
    out = result.output_dir
    for name in (
        "run.json",
        "config.yaml",
        "metrics.json",
        "baseline.json",
        "report.md",
        "training_curve.png",
        "model/adapter_model.safetensors",
        "model/adapter_config.json",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["adapter"] and manifest["trained_quantization"] == "4bit"
    assert set(manifest["modules_to_save"]) == {"classifier", "pooler"}
    with safe_open(out / "model/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("classifier" in k for k in keys) and any("pooler" in k for k in keys)
    assert any("lora_A" in k for k in keys)
    report = (out / "report.md").read_text()
    assert "| first stage |" in report and "untrained model" in report and "**best**" in report
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert manifest["config_hash"] in (out / "config.yaml").read_text()


def test_reloaded_adapter_scores_like_the_trained_model(tiny_bert_run, tiny_bert_dir):
    result, valid = tiny_bert_run
    validator = _validator(result, valid)
    trained = validator.scores(result.model)
    reloaded = validator.scores(_reload_4bit(result.output_dir, tiny_bert_dir))
    np.testing.assert_allclose(reloaded, trained, atol=1e-5)


def test_validation_shows_its_progress_unless_told_not_to(tiny_bert_run, capsys):
    result, valid = tiny_bert_run
    validator = _validator(result, valid)
    validator.scores(result.model)
    bar = capsys.readouterr().err
    assert "scoring" in bar and f"{validator.vset.num_pairs}/{validator.vset.num_pairs}" in bar
    validator.progress = False
    validator.scores(result.model)
    assert "scoring" not in capsys.readouterr().err


def test_merged_full_precision_model_ranks_like_the_trained_one(tiny_bert_run):
    result, valid = tiny_bert_run
    validator = _validator(result, valid)
    vset = validator.vset
    trained = vset.split_scores(validator.scores(result.model))
    merged_model = rerankit.Reranker.load(result.output_dir, device="cpu", dtype="float32").model
    merged = vset.split_scores(validator.scores(merged_model))
    same_top = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(trained, merged))
    assert same_top >= len(trained) - 1
    assert vset.metrics(merged)["ndcg@10"] == pytest.approx(result.metrics["best"]["ndcg@10"], abs=0.03)


def test_finished_run_is_not_overwritten(tiny_bert_run, tiny_bert_dir, toy_data):
    result, _ = tiny_bert_run
    with pytest.raises(RerankitError, match="already holds a finished run"):
        _fit(tiny_bert_dir, *toy_data, result.output_dir)


def test_qlora_decoder_trains_with_pad_token(tiny_qwen_dir, toy_data, tmp_path):
    train, valid = toy_data
    result = _fit(tiny_qwen_dir, train, valid, tmp_path / "run")
    losses = [e["loss"] for e in result.metrics["train_loss"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.tokenizer.pad_token_id == result.tokenizer.eos_token_id == 0
    assert set(json.loads((tmp_path / "run/run.json").read_text())["modules_to_save"]) == {"score"}
    validator = _validator(result, valid)
    reloaded = validator.scores(_reload_4bit(result.output_dir, tiny_qwen_dir))
    np.testing.assert_allclose(reloaded, validator.scores(result.model), atol=1e-5)
    reranker = rerankit.Reranker.load(result.output_dir, device="cpu", dtype="float32")
    # Last-token pooling with padding: a document scores the same alone and beside a longer one.
    alone = reranker.score([("tell me about apple", "apple is old")], raw=True)
    padded = reranker.score(
        [("tell me about apple", "apple is old"), ("tell me about apple", "apple " * 20)], raw=True
    )
    assert alone[0] == pytest.approx(padded[0], abs=1e-4)


def test_same_config_gives_same_metrics(tiny_bert_dir, toy_data, tmp_path):
    train, valid = toy_data
    sections = dict(training={"epochs": 1})
    a = _fit(tiny_bert_dir, train, valid, tmp_path / "a", **sections).metrics
    b = _fit(tiny_bert_dir, train, valid, tmp_path / "b", **sections).metrics
    assert a["evaluations"][-1]["ndcg@10"] == b["evaluations"][-1]["ndcg@10"]
    assert [e["loss"] for e in a["train_loss"]] == [e["loss"] for e in b["train_loss"]]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_interrupted_run_is_not_loadable_and_resumes(
    tiny_bert_dir, toy_data, tmp_path, monkeypatch, quantization
):
    from rerankit.training import RerankTrainer

    train, valid = toy_data
    out = tmp_path / "run"
    sections = dict(training={"epochs": 2}, quantization={"mode": quantization})
    original = RerankTrainer.training_step
    calls = {"n": 0}

    def crash_after_first_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:  # 6 steps an epoch: the epoch-1 checkpoint exists
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RerankTrainer, "training_step", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_bert_dir, train, valid, out, **sections)
    monkeypatch.setattr(RerankTrainer, "training_step", original)

    assert not (out / "run.json").exists()
    with pytest.raises(ModelLoadError, match="not a finished rerankit run.*--resume"):
        rerankit.Reranker.load(out)
    with pytest.raises(RerankitError, match="holds an unfinished run"):
        _fit(tiny_bert_dir, train, valid, out, **sections)

    resumed = rerankit.fit(tiny_config(tiny_bert_dir, train, valid, out, **sections), resume=True)
    straight = _fit(tiny_bert_dir, train, valid, tmp_path / "straight", **sections)
    assert resumed.metrics["evaluations"][-1]["ndcg@10"] == pytest.approx(
        straight.metrics["evaluations"][-1]["ndcg@10"], abs=1e-6
    )
    assert (out / "run.json").exists()


def test_8bit_base_trains_too(tiny_bert_dir, toy_data, tmp_path):
    train, valid = toy_data
    result = _fit(tiny_bert_dir, train, valid, tmp_path / "run", quantization={"mode": "8bit"})
    m = result.metrics
    assert m["best"]["ndcg@10"] > m["baseline"]["ndcg@10"]
    assert json.loads((tmp_path / "run/run.json").read_text())["trained_quantization"] == "8bit"


def test_distillation_needs_teacher_scores_and_changes_the_loss(tiny_bert_dir, toy_data, tmp_path):
    from conftest import write_jsonl

    train, valid = toy_data
    with pytest.raises(
        RerankitError, match='loss.distillation is kl but no document of .* has a teacher "score"'
    ):
        _fit(tiny_bert_dir, train, valid, tmp_path / "none", loss={"distillation": "kl"})
    assert not (tmp_path / "none").exists()  # refused before the run folder is touched

    # Teacher: positives 2, hard negatives 0 but the first one 1 (one query in two: a
    # teacher that disagrees with the labels moves the loss away from the plain run's).
    lines = [json.loads(row) for row in train.read_text().splitlines()]
    for i, row in enumerate(lines):
        for doc in row["positives"]:
            doc["score"] = 2.0
        for j, doc in enumerate(row["negatives"]):
            doc["score"] = 1.0 if j == 0 and i % 2 else 0.0
    scored = write_jsonl(tmp_path / "scored.jsonl", lines)
    sections = dict(training={"epochs": 1})
    plain = _fit(tiny_bert_dir, scored, valid, tmp_path / "plain", **sections).metrics
    distilled = _fit(
        tiny_bert_dir, scored, valid, tmp_path / "kl", loss={"distillation": "kl"}, **sections
    ).metrics
    assert plain["train_loss"][0]["loss"] != distilled["train_loss"][0]["loss"]


def test_what_validation_measured_is_what_load_returns(tiny_bert_run):
    """The shipped row of a run is the model Reranker.load returns, scored the same way: the
    metrics agree to rounding, not within a tolerance that could hide a gap."""
    result, valid = tiny_bert_run
    validator = _validator(result, valid)
    vset = validator.vset
    shipped = rerankit.Reranker.load(result.output_dir)  # the default device and precision
    logits = shipped.input_logits(*vset.flat_pairs())[0]
    measured = vset.metrics(vset.split_scores(logits))
    assert measured == pytest.approx(result.metrics["shipped"]["signals"]["reranker"], abs=1e-6)
    assert result.metrics["shipped"]["final"] == result.metrics["shipped"]["signals"]["reranker"]


def test_head_warmup_trains_the_head_alone_first_then_the_adapters(
    tiny_bert_dir, toy_data, tmp_path, monkeypatch
):
    """``head_warmup_ratio``: for that share of the steps the LoRA weights keep a learning rate
    of 0 and do not move while the head learns; then both learn."""
    from rerankit.training import RerankTrainer

    seen = []  # per step: (LoRA learning rates, head learning rates, sum |LoRA B|)
    step = RerankTrainer.training_step

    def recording(self, model, *args, **kwargs):
        groups = self.optimizer.param_groups
        lora_b = sum(float(p.detach().abs().sum()) for n, p in model.named_parameters() if "lora_B" in n)
        seen.append(
            ([g["lr"] for g in groups if not g["head"]], [g["lr"] for g in groups if g["head"]], lora_b)
        )
        return step(self, model, *args, **kwargs)

    monkeypatch.setattr(RerankTrainer, "training_step", recording)
    train, valid = toy_data
    config = tiny_config(tiny_bert_dir, train, valid, tmp_path / "run", training={"head_warmup_ratio": 0.5})
    rerankit.fit(config)
    held = len(seen) // 2
    assert held >= 2
    assert all(max(lora) == 0.0 for lora, _, _ in seen[:held])
    assert all(b == 0.0 for _, _, b in seen[: held + 1])  # LoRA B starts at zero and stays there
    assert max(max(head) for _, head, _ in seen[:held]) > 0
    assert min(max(lora) for lora, _, _ in seen[held + 1 :]) > 0 and seen[-1][2] > 0
