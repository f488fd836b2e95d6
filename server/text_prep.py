"""Per-request checks, costs and truncation that need the tokenizer, off the inference thread.

A fast tokenizer keeps its truncation and padding settings as shared state, so the inference
worker and the request threads must never use the same one: this module owns a private copy,
and a lock lets one request thread use it at a time.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import numpy as np

from rerankit.config import LongDocumentsConfig
from rerankit.encoding import check_query_lengths
from rerankit.prompts import PromptTemplate
from rerankit.windows import count_windows


class RequestTokenizer:
    """The request side's own tokenizer: query-length checks, window counts and
    ``max_tokens_per_doc`` cuts."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        prompt: PromptTemplate | None = None,
        long_documents: LongDocumentsConfig | None = None,
    ) -> None:
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_length, self.prompt = max_length, prompt
        self.long_documents = long_documents or LongDocumentsConfig()
        self._lock = threading.Lock()

    def check_query(self, query: str, instruction: str | None = None) -> None:
        """QueryTooLongError when the query (with its instruction) alone fills the model's window."""
        with self._lock:
            check_query_lengths(self.tokenizer, [query], self.max_length, self.prompt, [instruction])

    def count_windows(
        self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Per document, the pairs the model will score for it: its windows (one when it fits
        or documents are truncated)."""
        with self._lock:
            return count_windows(
                self.tokenizer, queries, docs, self.max_length, self.long_documents, self.prompt, instructions
            )

    def truncate(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its first ``max_tokens`` tokens (at a character offset)."""
        with self._lock:
            encoded = self.tokenizer(
                list(texts),
                add_special_tokens=False,
                return_offsets_mapping=True,
                truncation=True,
                max_length=max_tokens,
            )
        return [
            text[: offsets[-1][1]] if len(offsets) >= max_tokens else text
            for text, offsets in zip(texts, encoded["offset_mapping"])
        ]
