"""Where a text's paragraphs and sentences begin: the places a long document is cut into
windows (``rerankit.windows``) and the sentences pseudo-queries are drawn from.

A rule, not a model: a paragraph begins after a line break; a sentence after ``.``, ``!`` or
``?`` (and a closing quote or bracket) followed by whitespace and an upper-case letter, a digit,
an opening quote or bracket. Abbreviations before a capital ("Dr. Smith") read as a sentence
end; a cut there costs a window a few words of context, nothing more.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]?\s+(?=[\"'“‘(\[A-Z0-9])")
_LINE_BREAK = re.compile(r"\s*\n\s*")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a sentence other than the first begins."""
    return [m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text)]


def paragraph_starts(text: str) -> list[int]:
    """Character offsets where a paragraph other than the first begins."""
    return [m.end() for m in _LINE_BREAK.finditer(text) if m.start() > 0 and m.end() < len(text)]


def sentences(text: str) -> list[str]:
    """The text's sentences, stripped, in order (paragraph breaks also end a sentence)."""
    text = text.strip()
    cuts = sorted({0, *sentence_starts(text), *paragraph_starts(text), len(text)})
    return [part for a, b in zip(cuts, cuts[1:]) if (part := text[a:b].strip())]
