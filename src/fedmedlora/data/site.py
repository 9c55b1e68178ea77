"""What a site annotates. A hospital may label only some types; a type a site does not
annotate must never be trained as, or scored as, "absent" there."""

from __future__ import annotations

from pydantic import BaseModel, Field

from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema


class SiteSpec(BaseModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    entity_types: list[str] = Field(min_length=1)
    relation_types: list[str] = Field(default_factory=list)
    description: str = ""

    def check(self, schema: Schema) -> None:
        schema.check_types(self.entity_types, self.relation_types)

    def restrict(self, doc: Document) -> Document:
        """The document as this site would have annotated it."""
        return doc.restricted_to(set(self.entity_types), set(self.relation_types))

    @classmethod
    def full(cls, name: str, schema: Schema) -> SiteSpec:
        return cls(
            name=name, entity_types=schema.entity_types, relation_types=schema.relation_types
        )
