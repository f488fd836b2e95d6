"""Shared fixtures: tiny random BERT, Qwen2/Qwen3 and Llama models built locally, and toy data.

The toy task is learnable by a tiny random model in a few dozen steps: each query names a
topic, its positives contain that topic word, and its mined (hard) negatives are about
"noise" words that no positive uses. Random negatives (other queries' documents) are harder:
they are about other topics.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = [
    "apple",
    "river",
    "engine",
    "violin",
    "planet",
    "castle",
    "tiger",
    "bridge",
    "coffee",
    "glacier",
    "piano",
    "desert",
    "harbor",
    "rocket",
    "forest",
    "marble",
]
FILLER = [
    "the",
    "a",
    "of",
    "and",
    "is",
    "in",
    "about",
    "story",
    "with",
    "this",
    "old",
    "new",
    "big",
    "small",
    "many",
    "people",
    "often",
    "see",
    "near",
    "what",
    "where",
    "tell",
    "me",
    "why",
    "how",
    "does",
    "work",
]
NOISE = ["zinc", "quartz", "oxide", "ion", "argon", "boron", "cobalt", "helium"]
WORDS = TOPICS + FILLER + NOISE


def _toy_doc(rng: random.Random, topic: str) -> str:
    words = [rng.choice(FILLER) for _ in range(8)]
    for _ in range(2):
        words.insert(rng.randrange(len(words)), topic)
    return " ".join(words)


def toy_lines(n_queries: int = 48, seed: int = 0, positives: int = 2, negatives: int = 4) -> list[dict]:
    """Seed-format lines for the toy task (several positives per query)."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_queries):
        topic = TOPICS[i % len(TOPICS)]
        lines.append(
            {
                "query_text": f"tell me about {topic} number {i}",
                "positives": [
                    {"doc_id": f"q{i}p{j}", "text": _toy_doc(rng, topic)} for j in range(positives)
                ],
                "negatives": [
                    {"doc_id": f"q{i}n{j}", "text": _toy_doc(rng, rng.choice(NOISE))}
                    for j in range(negatives)
                ],
                "source_chunk": f"chunk{i // 2}",
            }
        )
    return lines


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in lines), encoding="utf-8")
    return path


def _bert_tokenizer():
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [str(d) for d in range(10)]
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


# Words of the prompt templates (rerankit.prompts), so the tiny tokenizers keep them short.
TEMPLATE_TEXT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no". Given a web search query, retrieve relevant '
    "passages that answer the query system user assistant <think> </think> <Instruct>: <Query>: "
    "<Document>: Query: Document: Relevant: yes no"
)


def _decoder_tokenizer(chat: bool = False, bos: bool = False):
    """A byte-level BPE tokenizer with an EOS but no pad token, as decoder LLMs ship.

    Trained here on the toy vocabulary and the templates' words ("yes" and "no" whole, with and
    without a leading space). ``chat``: Qwen's ChatML tokens too; ``bos``: Llama's "<s>", added
    before every text. Qwen's EOS is "<|endoftext|>", which AutoTokenizer reads back unchanged.
    """
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    text = " ".join(WORDS + [str(d) for d in range(10)]) + " " + TEMPLATE_TEXT
    if bos:
        specials = ["<s>", "</s>"]
    else:
        specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if chat else [])
    bpe.train_from_iterator(
        [text] * 10 + ["yes", "no"] * 10,
        vocab_size=600,
        min_frequency=1,
        special_tokens=specials,
        show_progress=False,
    )
    if bos:
        bpe._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _bert_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=1,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sentence_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT as a sentence-transformers folder (mean pooling, normalized), as the
    embedded MiniLM is: the self-ensemble weighs its embedding cosine."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-sentence-bert") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return folder


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return _save_decoder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


def _save_decoder(folder: Path, kind: str) -> Path:
    """A tiny random causal LM of ``kind`` (qwen2: untied LM head, no ChatML tokens; qwen3:
    tied embeddings, ChatML tokenizer; llama: untied LM head, BOS), saved as decoder checkpoints
    are: no score head (it is new at load time)."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tokenizer = _decoder_tokenizer(chat=kind == "qwen3", bos=kind == "llama")
    torch.manual_seed(0)
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=16, tie_word_embeddings=True))
    else:
        config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return _save_decoder(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return _save_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture
def toy_data(tmp_path) -> tuple[Path, Path]:
    train = write_jsonl(tmp_path / "train.jsonl", toy_lines(48, seed=1))
    valid = write_jsonl(
        tmp_path / "valid.jsonl",
        [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)],
    )
    return train, valid


def tiny_config(model_dir: Path, train: Path, valid: Path | None, out: Path, **sections) -> dict:
    """A config for the tiny models that trains in seconds on CPU. Validation ranks each
    query's given candidates and the cross-encoder ships alone, in torch, unless a test asks for
    the defaults (``evaluation={"candidates": "deployed"}``, ``ensemble="auto"``, ``graphs="auto"``)."""
    config = {
        "seed": 7,
        "model": {"name_or_path": str(model_dir), "max_length": 48, "dropout": 0.0},
        "quantization": {"mode": "4bit", "compute_dtype": "float32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": str(train), "valid": str(valid) if valid else None},
        "sampling": {"num_negatives": 3, "hard_ratio": 1.0},
        "loss": {"name": "margin"},
        "training": {
            "epochs": 3,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "logging_steps": 2,
            "report_to": [],
            "precision": "fp32",
            "head_learning_rate": 1e-2,
        },
        "evaluation": {"batch_size": 32, "candidates": "given"},
        "ensemble": "none",
        "graphs": "none",
        "output": {"dir": str(out)},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    return config


@pytest.fixture(scope="session")
def tiny_bert_run(tiny_bert_dir, tmp_path_factory):
    """A finished 4-bit QLoRA run of the tiny BERT on the toy task: (FitResult, valid path)."""
    import rerankit

    folder = tmp_path_factory.mktemp("bert-run")
    train = write_jsonl(folder / "train.jsonl", toy_lines(48, seed=1))
    valid = write_jsonl(
        folder / "valid.jsonl",
        [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)],
    )
    return rerankit.fit(tiny_config(tiny_bert_dir, train, valid, folder / "run")), valid


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def rerankit_server(tiny_bert_run):
    """`rerankit serve` on the tiny run as a real process on a loopback port (API key "k3y")."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rerankit",
            "serve",
            "--model",
            str(tiny_bert_run[0].output_dir),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--api-key",
            "k3y",
            "--request-read-timeout",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("server did not become healthy")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in an exposition text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="session")
def fp32_reranker(tiny_bert_run):
    """The tiny run loaded for inference in fp32 (scores exact across batch neighbours)."""
    from rerankit import Reranker

    return Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")


@pytest.fixture
def run_copy(tiny_bert_run, tmp_path):
    """A writable copy of the finished tiny run folder."""
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(tiny_bert_run[0].output_dir, folder, ignore=shutil.ignore_patterns("checkpoints"))
    return folder


def wait_ready(client, seconds: float = 30.0) -> None:
    """Poll /health of a TestClient until the model is loaded and warmed."""
    import time

    deadline = time.monotonic() + seconds
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.05)


@pytest.fixture
def make_client(fp32_reranker):
    """make_client(**settings) -> a ready Litestar TestClient serving the tiny model."""
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app

    clients = []

    def make(**overrides):
        settings = ServerSettings(model="in-memory", **overrides)
        client = TestClient(create_app(settings, reranker=fp32_reranker))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def reweighted_run(source: Path, target: Path, scale: float) -> Path:
    """A copy of the run folder ``source`` at ``target`` whose trained score head is scaled by
    ``scale``: another run of the same base, scoring differently."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
    heads = 0
    for weights in target.rglob("*.safetensors"):
        tensors = load_file(weights)
        for key in tensors:
            if "classifier" in key and key.endswith("weight"):
                tensors[key] = tensors[key] * scale
                heads += 1
        save_file(tensors, weights, metadata={"format": "pt"})
    assert heads, f"no score head found under {target}"
    return target


def write_beir(folder: Path, lines: list[dict]) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) of seed-format ``lines``: each
    line's query judged against its positives, every document in the corpus, and one query
    without judgements."""
    (folder / "qrels").mkdir(parents=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, line in enumerate(lines):
        queries.append({"_id": f"q{i}", "text": line["query_text"]})
        for doc in line["positives"]:
            corpus.append({"_id": doc["doc_id"], "title": "", "text": doc["text"]})
            qrels.append(f"q{i}\t{doc['doc_id']}\t1")
        corpus += [{"_id": d["doc_id"], "title": "", "text": d["text"]} for d in line["negatives"]]
    queries.append({"_id": "unjudged", "text": "apple"})
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels/test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


@pytest.fixture
def beir_folder(tmp_path) -> Path:
    """A BEIR folder of 12 judged toy queries (and one unjudged)."""
    return write_beir(tmp_path / "beir", toy_lines(12, seed=5))


def pooler_dense_only(run, target):
    """The run at ``target`` with its trained pooler kept whole as its dense layer (the same
    weights: the pooler's tanh has none), a head peft can mix within one batch."""
    import json
    import shutil

    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints"))
    for config in target.rglob("adapter_config.json"):
        values = json.loads(config.read_text())
        values["modules_to_save"] = [
            "pooler.dense" if m == "pooler" else m for m in values["modules_to_save"] or []
        ]
        config.write_text(json.dumps(values))
    return target
