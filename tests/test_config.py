from pathlib import Path

import pytest

from rerankit.config import apply_overrides, config_hash, load_config, parse_override
from rerankit.errors import ConfigError

pytestmark = pytest.mark.smoke


def test_defaults_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: t.jsonl\ntraining:\n  epochs: 3\n")
    config = load_config(path)
    assert config.training.epochs == 3
    assert config.quantization.mode == "4bit"
    assert config.loss.name == "margin" and config.loss.margin == 1.0


def test_misspelled_key_names_path_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train: t.jsonl\ntraining:\n  epcohs: 3\n")
    with pytest.raises(
        ConfigError, match=r"training\.epcohs: unknown key \(did you mean 'training\.epochs'\?\)"
    ):
        load_config(path)


def test_wrong_type_and_literal_name_the_key():
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*got 'eight'"):
        load_config({"data": {"train": "x"}, "training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"loss\.name: .*'margin'.*got 'hinge'"):
        load_config({"data": {"train": "x"}, "loss": {"name": "hinge"}})


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config({})


def test_quantization_without_lora_is_refused():
    with pytest.raises(ConfigError, match="quantized weights cannot be trained directly"):
        load_config({"data": {"train": "x"}, "lora": {"enabled": False}})


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: not valid YAML"):
        load_config(path)


def test_a_repeated_key_is_refused_naming_it_and_its_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("data:\n  train: x.jsonl\ntraining:\n  epochs: 1\n  learning_rate: 0.1\n  epochs: 3\n")
    expected = r"twice.yaml:6: not valid YAML: duplicate key 'epochs' \(first on line 4\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        parse_override("training={epochs: 1, epochs: 2}")


def test_keys_from_a_merge_may_still_be_overridden():
    from rerankit import safe_yaml

    text = "base: &base {epochs: 1, batch_size: 8}\ntraining:\n  <<: *base\n  epochs: 3\n"
    assert safe_yaml.load(text)["training"] == {"epochs": 3, "batch_size": 8}


def test_overrides_parse_as_yaml_and_apply():
    key, value = parse_override("training.learning_rate=1e-3")
    assert key == ["training", "learning_rate"] and value == 1e-3
    assert parse_override("data.valid=null") == (["data", "valid"], None)
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_override("training.epochs")
    raw = {"data": {"train": "a"}}
    merged = apply_overrides(raw, {"training.epochs": 5, "data.train": "b"})
    assert merged == {"data": {"train": "b"}, "training": {"epochs": 5}}
    assert raw == {"data": {"train": "a"}}  # the input is not changed
    with pytest.raises(ConfigError, match=r"training\.epohs: unknown key"):
        load_config({"data": {"train": "x"}}, {"training.epohs": 1})


def test_hash_is_stable_and_sensitive():
    a = load_config({"data": {"train": "x"}, "seed": 1})
    b = load_config({"seed": 1, "data": {"train": "x"}})
    c = load_config({"data": {"train": "x"}, "seed": 2})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_relative_data_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "train.jsonl").write_text("{}\n")
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text("data:\n  train: train.jsonl\n")
    assert load_config(path).data.train == str(tmp_path / "cfg" / "train.jsonl")


@pytest.mark.smoke
@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=str)
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert Path(config.data.train).exists()
