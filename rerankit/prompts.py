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

The task instruction (``{instruction}``, in the body or the suffix) is the template's default
unless a pair brings its own: a training record's ``instruction`` field, ``Reranker.rerank(...,
instruction=...)``, a request's ``instruction``. A template without an ``{instruction}`` field
refuses one; an encoder (no template) ignores it.

Presets (config ``model.prompt.template``):

- ``qwen3``: the Qwen3-Reranker chat template, system prompt and ``<Instruct>``/``<Query>``/
  ``<Document>`` fields, answered after an empty think block;
- ``bge_gemma``: bge-reranker-v2-gemma's layout, ``A: {query}`` / ``B: {document}`` then the
  instruction, scored by the logit of ``Yes`` alone;
- ``plain``: ``Query: … Document: … Relevant:`` for base (non-chat) models;
- ``none``: the tokenizer's own pair encoding, for encoders;
- ``custom``: ``prefix``/``body``/``suffix`` given in the config.

A decoder can be scored by ``yes``/``no``: the score is ``logit(yes) − logit(no)`` of the
causal LM at the last position, which is a linear head over the final hidden state with the
weight ``W[yes] − W[no]`` of the LM head (``answer_head_weight``); with ``no`` empty, the score
is ``logit(yes)`` alone (weight ``W[yes]``). A pretrained instruction model thus starts as a
zero-shot ranker instead of from a random head.
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
BGE_GEMMA_INSTRUCTION = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
QUERY, DOCUMENT, INSTRUCTION = "{query}", "{document}", "{instruction}"

# Architectures whose checkpoints are decoder LLMs (seen from ``config.model_type``); any
# config whose architectures end in ForCausalLM counts too.
DECODER_TYPES = {
    *("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text"),
    *("phi", "phi3", "gpt2", "gpt_neox", "falcon", "olmo", "olmo2", "granite"),
}


class InstructionError(ValueError):
    """An instruction the template cannot take (none of its fields holds one, or it is blank)."""


@dataclass(frozen=True)
class PromptTemplate:
    """How a (query, document) pair is written for a decoder, and the words it answers with.

    ``{instruction}`` may stand in the body and in the suffix; ``instruction`` is its default.
    ``no`` empty: the score is the logit of ``yes`` alone.
    """

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
        if INSTRUCTION in self.prefix:
            raise ValueError(f"{INSTRUCTION} may stand in the prompt body or suffix, not in the prefix")

    @property
    def takes_instruction(self) -> bool:
        return INSTRUCTION in self.body or INSTRUCTION in self.suffix

    def instruction_for(self, given: str | None) -> str:
        """The instruction a pair is read with: ``given``, else this template's default.

        InstructionError when ``given`` is blank or the template has no field to hold it.
        """
        if given is None:
            return self.instruction
        if not isinstance(given, str) or not given.strip():
            raise InstructionError(f"an instruction must be a non-empty string, got {given!r}")
        if not self.takes_instruction:
            raise InstructionError(
                f"the {self.name} prompt template has no {INSTRUCTION} field to hold an instruction; "
                "leave it out, or use a template that takes one (qwen3, bge_gemma, custom)"
            )
        return given

    def head(self, query: str, instruction: str | None = None) -> str:
        """The body up to where the document starts, with the query and the instruction
        (``instruction_for``) filled in. Filled by replacement, not ``str.format``: braces in a
        query are text."""
        before, after = self.body[: -len(DOCUMENT)].split(QUERY)
        fill = self.instruction_for(instruction)
        return before.replace(INSTRUCTION, fill) + query + after.replace(INSTRUCTION, fill)

    def tail(self, instruction: str | None = None) -> str:
        """The suffix with the instruction filled in."""
        return self.suffix.replace(INSTRUCTION, self.instruction_for(instruction))

    def render(
        self, query: str, document: str, *, reserved: Sequence[str], instruction: str | None = None
    ) -> str:
        """The whole prompt as one string, the document uncut; ``reserved`` (``reserved_strings``
        of the tokenizer) are neutralised in the user's text. For a tool that takes text (a TEI or
        vLLM endpoint) use ``Reranker.render``, which also cuts the document to the window so
        that the suffix, where the score is read, survives."""
        query, document = neutralise(query, reserved), neutralise(document, reserved)
        if instruction is not None:
            instruction = neutralise(instruction, reserved)
        return self.prefix + self.head(query, instruction) + document + self.tail(instruction)

    def chat_template(self, leading: str = "", trailing: str = "", reserved: Sequence[str] = ()) -> str:
        """A Jinja chat template that renders a ``query``/``document`` message pair as this
        prompt: sentence-transformers' CrossEncoder formats pairs with it (no code needed). A
        ``system`` message, which ``CrossEncoder.predict(..., prompt=...)`` adds, is the
        instruction (default: this template's).

        ``leading``/``trailing``: the special tokens the tokenizer adds around a text (a BOS),
        which chat templates write themselves. ``reserved``: the strings the tokenizer reads as
        special tokens, neutralised in the messages as ``neutralise`` does, so that a document
        cannot close the turn and answer for the model.
        """

        def literal(text: str) -> str:
            return "{{ " + repr(text) + " }}" if text else ""

        guard = "".join(f" | replace({t!r}, {_neutral(t)!r})" for t in reserved)
        pick = '(messages | selectattr("role", "eq", "{}") | map(attribute="content") | first)'

        def message(role: str) -> str:
            return "{{ " + pick.format(role) + guard + " }}"

        def filled(text: str) -> str:  # literal text with the instruction written in
            return message("system").join(literal(part) for part in text.split(INSTRUCTION))

        before, after = self.body[: -len(DOCUMENT)].split(QUERY)
        default = "{% if not (messages | selectattr('role', 'eq', 'system') | list) %}"
        default += (
            "{% set messages = [{'role': 'system', 'content': " + repr(self.instruction) + "}] + messages %}"
        )
        default += "{% endif %}"
        return (
            (default if self.takes_instruction else "")
            + literal(leading + self.prefix)
            + filled(before)
            + message("query")
            + filled(after)
            + message("document")
            + filled(self.suffix + trailing)
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
    "bge_gemma": PromptTemplate(
        name="bge_gemma",
        prefix="",
        body="A: {query}\nB: {document}",
        suffix="\n{instruction}",
        instruction=BGE_GEMMA_INSTRUCTION,
        yes="Yes",
        no="",
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


def is_sequence_classifier(hf_config) -> bool:
    """True for a checkpoint saved as a sequence classifier (its score head was trained), such as
    the ``…ForSequenceClassification`` conversions of decoder rerankers."""
    return any(
        a.endswith("ForSequenceClassification") for a in getattr(hf_config, "architectures", None) or []
    )


def resolve_head(head: str, hf_config, prompt: PromptTemplate | None) -> str:
    """``auto``: yes/no scoring for a causal-LM decoder read through a template; the checkpoint's
    own score head for a sequence-classification checkpoint (kept, never overwritten); a new
    score head for the rest (encoders)."""
    if head != "auto":
        return head
    causal = prompt is not None and is_decoder(hf_config) and not is_sequence_classifier(hf_config)
    return "yes_no" if causal else "seq_cls"


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
    """``W[yes] − W[no]`` of the checkpoint's LM head (``W[yes]`` when ``prompt.no`` is empty),
    shape (1, hidden): the score head that makes a sequence-classification model score
    ``logit(yes) − logit(no)`` (or ``logit(yes)``)."""
    import torch

    if getattr(hf_config, "final_logit_softcapping", None):
        raise ModelLoadError(
            f"{model_path}: its LM logits are soft-capped, so logit(yes) − logit(no) is not a linear "
            "head; use model.head: seq_cls"
        )
    words = [prompt.yes, prompt.no] if prompt.no else [prompt.yes]
    ids = [answer_token_id(tokenizer, word) for word in words]
    if getattr(hf_config, "tie_word_embeddings", False):
        rows = model.get_input_embeddings().weight[ids]
    elif is_sequence_classifier(hf_config):
        raise ModelLoadError(
            f"{model_path} is a sequence-classification checkpoint without its LM head: yes/no "
            "scoring cannot be read from it. Keep its trained score head (model.head: auto or seq_cls)"
        )
    else:
        rows = _lm_head_rows(model_path, ids)
    weight = rows[0] - rows[1] if len(ids) == 2 else rows[0]
    return weight.detach().to(torch.float32).unsqueeze(0)


def set_answer_head(model, weight) -> None:
    """Make a decoder's score head (``score``, one label, no bias) read ``logit(yes) − logit(no)``
    or ``logit(yes)`` (weight from ``answer_head_weight``)."""
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
