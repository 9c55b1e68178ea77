"""Readers and writers for the annotation formats clinical text comes in.

Every reader returns a `ReadResult`: the documents it could read and every problem it
found, each naming file, line and reason. Callers decide whether problems are fatal
(`ReadResult.raise_if_problems`): training data in our own JSONL is strict, external
corpora are read leniently and their problems reported."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedmedlora.data.document import Document
from fedmedlora.errors import AnnotationError, Problem


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # document id -> (file, line) where it starts, for problems found after reading
    origins: dict[str, tuple[str, int]] = field(default_factory=dict)

    def extend(self, other: ReadResult) -> None:
        self.documents.extend(other.documents)
        self.problems.extend(other.problems)
        self.origins.update(other.origins)

    def origin(self, doc: Document) -> tuple[str, int]:
        """Where `doc` was read (its source file and line 0 when the reader did not say)."""
        return self.origins.get(doc.id) or (str(doc.meta.get("source", "")), 0)

    def raise_if_problems(self) -> list[Document]:
        if self.problems:
            raise AnnotationError(self.problems)
        return self.documents
