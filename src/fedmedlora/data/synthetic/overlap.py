"""How much of a test split a model could have memorised: exact sentences shared with train.

Synthetic notes are only useful for evaluation if test sentences are new; this measures it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fedmedlora.data.document import Document

# Our generator never writes a period inside a sentence followed by a space (no "b.i.d. ",
# "E. coli", "Dr. "), so line breaks and ". " / "? " / "! " are exact boundaries here; a
# trained sentence splitter would only add a dependency. List markers ("1. ", "- ") that
# start a line are stripped so "1. Oxycodone ..." is one sentence, not two.
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a note, stripped; empty pieces dropped."""
    out: list[str] = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line)
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def _sentences(docs: Iterable[Document], min_words: int) -> list[str]:
    return [
        s
        for d in docs
        for s in split_sentences(d.text)
        if len(s.split()) >= min_words and not s.endswith(":")
    ]


def sentence_overlap(
    train_docs: Iterable[Document], test_docs: Iterable[Document], min_words: int = 4
) -> dict[str, float | int]:
    """Test sentences that also occur verbatim in the train documents.

    Section headers (a line ending in ':', e.g. "HISTORY OF PRESENT ILLNESS:") and
    sentences shorter than `min_words` words ("?PNA.", "NKDA") are left out: they repeat
    in real notes too and say nothing about memorisation."""
    seen = set(_sentences(train_docs, min_words))
    test = _sentences(test_docs, min_words)
    count = sum(s in seen for s in test)
    return {
        "count": count,
        "total": len(test),
        "fraction": count / len(test) if test else 0.0,
        "min_words": min_words,
    }
