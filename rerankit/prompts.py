"""Prompt templates for decoder LLM rerankers, and the yes/no answer they are scored by.

An encoder cross-encoder reads a (query, document) pair through its tokenizer's pair encoding
(``[CLS] query [SEP] document [SEP]``). A decoder LLM has no such encoding: its tokenizer glues
the two texts together, and the last token, where the score is read, means nothing. A template
gives the pair the shape the model was (or will be) trained on:

``prefix`` + ``body`` (instruction, query, and the document at its very end) + ``suffix``

The prefix and the suffix are tokenized on their own (they may hold special tokens such as
``<|im_start|>``); the body is tokenized with special-token strings in the user's text kept
as plain text, so a document cannot close the template early. Truncation cuts the document
only: the instruction, the query and the suffix always survive (``encoding.encode_pairs``).

Presets (config ``model.prompt.template``):

- ``qwen3``: the Qwen3-Reranker chat template, system prompt and ``<Instruct>``/``<Query>``/
  ``<Document>`` fields, answered after an empty think block;
- ``plain``: ``Query: … Document: … Relevant:`` for base (non-chat) models;
- ``none``: the tokenizer's own pair encoding, for encoders;
- ``custom``: ``prefix``/``body``/``suffix`` given in the config.

A decoder can be scored by ``yes``/``no``: the score is ``logit(yes) − logit(no)`` of the
causal LM at the last position, which is a linear head over the final hidden state with the
weight ``W[yes] − W[no]`` of the LM head (``answer_head_weight``). A pretrained instruction
model thus starts as a zero-shot ranker instead of from a random head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rerankit.errors import ModelLoadError

# What an export records about itself (and where Reranker.load finds its prompt template).
EXPORT_INFO = "rerankit_export.json"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QUERY, DOCUMENT, INSTRUCTION = "{query}", "{document}", "{instruction}"

# Architectures whose checkpoints are decoder LLMs (seen from ``config.model_type``); any
# config whose architectures end in ForCausalLM counts too.
DECODER_TYPES = {
    *("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text"),
    *("phi", "phi3", "gpt2", "gpt_neox", "falcon", "olmo", "olmo2", "granite"),
}


@dataclass(frozen=True)
class PromptTemplate:
    """How a (query, document) pair is written for a decoder, and the words it answers with."""

    name: str
    prefix: str
    body: str
    suffix: str
    instruction: str = ""
    yes: str = "yes"
    no: str = "no"

    def __post_init__(self) -> None:
        if not self.body.endswith(DOCUMENT) or self.body.count(DOCUMENT) != 1:
            raise ValueError(f"prompt body must end with {DOCUMENT} (once), got {self.body!r}")
        if self.body.count(QUERY) != 1:
            raise ValueError(f"prompt body must hold {QUERY} once, got {self.body!r}")

    def head(self, query: str) -> str:
        """The body up to where the document starts, with the query and instruction filled in.

        Filled by replacement, not ``str.format``: braces in a query are text.
        """
        before, after = self.body[: -len(DOCUMENT)].split(QUERY)
        fill = lambda text: text.replace(INSTRUCTION, self.instruction)
        return fill(before) + query + fill(after)

    def render(self, query: str, document: str, *, reserved: Sequence[str]) -> str:
        """The whole prompt as one string (for tools that take text, e.g. a TEI endpoint), the
        document uncut; ``reserved`` (``reserved_strings`` of the tokenizer) are neutralised in
        the query and the document. ``Reranker.render`` also cuts the document to the window."""
        query, document = neutralise(query, reserved), neutralise(document, reserved)
        return self.prefix + self.head(query) + document + self.suffix

    def chat_template(self, leading: str = "", trailing: str = "", reserved: Sequence[str] = ()) -> str:
        """A Jinja chat template that renders a ``query``/``document`` message pair as this
        prompt: sentence-transformers' CrossEncoder formats pairs with it (no code needed).

        ``leading``/``trailing``: the special tokens the tokenizer adds around a text (a BOS),
        which chat templates write themselves. ``reserved``: the strings the tokenizer reads as
        special tokens, neutralised in the messages as ``neutralise`` does, so that a document
        cannot close the turn and answer for the model.
        """

        def literal(text: str) -> str:
            return "{{ " + repr(text) + " }}"

        guard = "".join(f" | replace({t!r}, {_neutral(t)!r})" for t in reserved)
        pick = '(messages | selectattr("role", "eq", "{}") | map(attribute="content") | first)' + guard
        before, after = self.body[: -len(DOCUMENT)].split(QUERY)
        fill = lambda text: text.replace(INSTRUCTION, self.instruction)
        return (
            literal(leading + self.prefix + fill(before))
            + "{{ "
            + pick.format("query")
            + " }}"
            + literal(fill(after))
            + "{{ "
            + pick.format("document")
            + " }}"
            + literal(self.suffix + trailing)
        )

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        return cls(**{k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__})


QWEN3_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
PRESETS: dict[str, PromptTemplate] = {
    "qwen3": PromptTemplate(
        name="qwen3",
        prefix=f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n",
        body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
        suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        instruction=DEFAULT_INSTRUCTION,
        yes="yes",
        no="no",
    ),
    "plain": PromptTemplate(
        name="plain",
        prefix="",
        body="Query: {query}\nDocument: {document}",
        suffix="\nRelevant:",
        yes=" yes",
        no=" no",
    ),
}


def reserved_strings(tokenizer) -> tuple[str, ...]:
    """The texts a tokenizer turns into one added token wherever they appear in a string
    (``<|im_end|>``, ``<s>``), longest first: the order ``neutralise`` replaces them in."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return tuple(sorted((t for t in added if len(t) >= 2), key=lambda t: (-len(t), t)))


def _neutral(token: str) -> str:
    return token[0] + " " + token[1:]


def neutralise(text: str, reserved: Sequence[str]) -> str:
    """``text`` with a space after the first character of every ``reserved`` string in it, so
    that no tool reading the rendered prompt (a chat template, a TEI or vLLM endpoint) turns
    user text into a special token. rerankit's own encoding reads the same neutralised text."""
    for token in reserved:
        if token in text:
            text = text.replace(token, _neutral(token))
    return text


def is_decoder(hf_config) -> bool:
    """True for decoder LLM checkpoints (Llama, Qwen, Mistral, Gemma ...)."""
    architectures = getattr(hf_config, "architectures", None) or []
    return getattr(hf_config, "model_type", None) in DECODER_TYPES or any(
        a.endswith("ForCausalLM") for a in architectures
    )


def has_token(tokenizer, token: str) -> bool:
    return token in tokenizer.get_vocab()


def resolve_prompt(prompt_config, hf_config, tokenizer) -> PromptTemplate | None:
    """The template a model uses (None: the tokenizer's pair encoding).

    ``auto`` gives encoders their pair encoding and decoders ``qwen3`` when the tokenizer
    knows the ChatML tokens, else ``plain``.
    """
    name = prompt_config.template
    if name == "auto":
        if not is_decoder(hf_config):
            return None
        name = "qwen3" if has_token(tokenizer, "<|im_start|>") else "plain"
    if name == "none":
        return None
    if name == "custom":
        template = PromptTemplate(
            "custom", prompt_config.prefix, prompt_config.body, prompt_config.suffix, "", "yes", "no"
        )
    else:
        template = PRESETS[name]
    changes = {
        key: value
        for key in ("instruction", "yes", "no")
        if (value := getattr(prompt_config, key)) is not None
    }
    return PromptTemplate(**{**template.to_dict(), **changes})


def prompt_for_checkpoint(hf_config, tokenizer, given=None) -> PromptTemplate | None:
    """The template ``given`` names (a preset name, "auto", "none", a PromptTemplate or
    ``PromptConfig`` fields); None means ``auto``."""
    from rerankit.config import PromptConfig

    if isinstance(given, PromptTemplate):
        return given
    given = "auto" if given is None else given
    fields = {"template": given} if isinstance(given, str) else dict(given)
    return resolve_prompt(PromptConfig(**fields), hf_config, tokenizer)


def resolve_head(head: str, hf_config, prompt: PromptTemplate | None) -> str:
    """``auto``: yes/no scoring for a decoder read through a template, else a new score head."""
    if head != "auto":
        return head
    return "yes_no" if prompt is not None and is_decoder(hf_config) else "seq_cls"


def answer_token_id(tokenizer, word: str) -> int:
    """The one token id of an answer word; ModelLoadError when the tokenizer splits it."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelLoadError(
            f"the answer word {word!r} is {len(ids)} tokens for this tokenizer, not one; set "
            "model.prompt.yes / model.prompt.no to words it keeps whole"
        )
    return ids[0]


def answer_head_weight(model, model_path: str, hf_config, tokenizer, prompt: PromptTemplate):
    """``W[yes] − W[no]`` of the checkpoint's LM head, shape (1, hidden): the score head that
    makes a sequence-classification model score ``logit(yes) − logit(no)``."""
    import torch

    if getattr(hf_config, "final_logit_softcapping", None):
        raise ModelLoadError(
            f"{model_path}: its LM logits are soft-capped, so logit(yes) − logit(no) is not a linear "
            "head; use model.head: seq_cls"
        )
    ids = [answer_token_id(tokenizer, prompt.yes), answer_token_id(tokenizer, prompt.no)]
    if getattr(hf_config, "tie_word_embeddings", False):
        rows = model.get_input_embeddings().weight[ids]
    else:
        rows = _lm_head_rows(model_path, ids)
    return (rows[0] - rows[1]).detach().to(torch.float32).unsqueeze(0)


def set_answer_head(model, weight) -> None:
    """Make a decoder's score head (``score``, one label, no bias) read ``logit(yes) − logit(no)``
    (weight from ``answer_head_weight``)."""
    import torch

    layer = getattr(model, "score", None)
    if not isinstance(layer, torch.nn.Linear) or layer.bias is not None or layer.out_features != 1:
        raise ModelLoadError(
            f"{type(model).__name__} has no one-label linear 'score' head without bias; yes/no "
            "scoring needs one (use model.head: seq_cls)"
        )
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.dtype))


def _lm_head_rows(model_path: str, ids: list[int]):
    """Rows of ``lm_head.weight`` read straight from the checkpoint's safetensors (the
    sequence-classification model has no LM head; the full matrix is never loaded)."""
    import json

    import torch
    from safetensors import safe_open
    from transformers.utils import cached_file

    def fetch(name: str) -> str | None:
        if Path(model_path).is_dir():
            path = Path(model_path) / name
            return str(path) if path.exists() else None
        return cached_file(model_path, name, _raise_exceptions_for_missing_entries=False)

    index = fetch("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shard = weight_map.get("lm_head.weight")
        # A shard is a file beside the index, never a path elsewhere.
        file = fetch(shard) if isinstance(shard, str) and Path(shard).name == shard else None
    else:
        file = fetch("model.safetensors")
    if file is None:
        raise ModelLoadError(f"{model_path}: no lm_head.weight in safetensors to read the yes/no answer from")
    with safe_open(file, framework="pt") as weights:
        if "lm_head.weight" not in weights.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise ModelLoadError(f"{model_path}: no lm_head.weight in {Path(file).name}")
        matrix = weights.get_slice("lm_head.weight")
        return torch.cat([matrix[i : i + 1] for i in ids])
