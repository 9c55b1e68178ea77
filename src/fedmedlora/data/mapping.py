"""Corpus -> target-schema mappings, kept as data (`data/mappings/*.yaml`) so adding a corpus
needs no code. A mapping says which source entity types become which target types (others
are dropped), which source relations become which target relation and which of their two
arguments is the modifier (the head), and what the corpus annotates (its `SiteSpec`), so a
type the corpus never labels is not trained or scored as absent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import undecodable
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.errors import ConfigError

BUILTIN_MAPPINGS = ("maccrobat", "chia", "bc5cdr", "ncbi_disease")
# Document.meta entries (written by the readers) that point at entity ids.
_TARGETED_META = ("attributes", "normalizations", "notes")


class RelationRule(BaseModel):
    """A source relation type becomes `target`; `modifier` names the source argument
    (brat Arg1 = `Relation.head`, Arg2 = `Relation.tail`) that becomes the head."""

    model_config = ConfigDict(extra="forbid")

    target: str
    modifier: Literal["Arg1", "Arg2"]


class SiteDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity_types: list[str] = Field(min_length=1)
    relation_types: list[str] = Field(default_factory=list)


class CorpusMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    corpus: str = Field(min_length=1)
    description: str = ""
    schema_name: str = Field("clinical", alias="schema")
    entities: dict[str, str] = Field(min_length=1)
    relations: dict[str, RelationRule] = Field(default_factory=dict)
    site: SiteDeclaration

    @model_validator(mode="after")
    def _site_matches_map(self) -> CorpusMapping:
        produced = set(self.entities.values())
        missing = [t for t in self.site.entity_types if t not in produced]
        if missing:
            raise ValueError(f"site declares entity types no source type maps to: {missing}")
        targets = {r.target for r in self.relations.values()}
        missing = [t for t in self.site.relation_types if t not in targets]
        if missing:
            raise ValueError(f"site declares relation types no source relation maps to: {missing}")
        return self

    def check(self, schema: Schema) -> None:
        """Raise ConfigError naming target types `schema` does not define."""
        targets = [r.target for r in self.relations.values()]
        schema.check_types(sorted(set(self.entities.values())), sorted(set(targets)))
        self.site_spec().check(schema)

    def site_spec(self, name: str | None = None) -> SiteSpec:
        """What a site holding this corpus annotates, in target terms."""
        return SiteSpec(
            name=name or self.corpus,
            entity_types=self.site.entity_types,
            relation_types=self.site.relation_types,
            description=self.description,
        )


def load_mapping(name_or_path: str | Path, schema: Schema | None = None) -> CorpusMapping:
    """A built-in mapping by name, or a YAML file; checked against `schema` (by default the
    schema the mapping names). Raises ConfigError."""
    if str(name_or_path) in BUILTIN_MAPPINGS:
        ref = resources.files("fedmedlora.data") / "mappings" / f"{name_or_path}.yaml"
        text, where = ref.read_text(encoding="utf-8"), f"built-in mapping {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"mapping {str(name_or_path)!r} is neither a built-in "
                f"({', '.join(BUILTIN_MAPPINGS)}) nor an existing YAML file"
            )
        raw = path.read_bytes()
        where = str(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, reason = undecodable(exc, raw)
            raise ConfigError(f"{where}:{line}: {reason}") from None
    try:
        mapping = CorpusMapping.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{at}: not valid YAML: {what}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    except ValidationError as exc:
        raise ConfigError(
            f"{_key_line(where, text, exc)}: invalid mapping: {_errors(exc)}"
        ) from None
    try:
        mapping.check(schema or load_schema(mapping.schema_name))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return mapping


def _errors(exc: ValidationError) -> str:
    """pydantic's errors on one line: `entities.Drug: Input should be a valid string; ...`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _key_line(where: str, text: str, exc: ValidationError) -> str:
    """`where:line` of the first top-level key an error is under that is in the file."""
    lines = [line.lstrip("\ufeff") for line in text.split("\n")]
    for err in exc.errors():
        if err["loc"]:
            key = f"{err['loc'][0]}:"
            for n, line in enumerate(lines, start=1):
                if line.startswith(key):
                    return f"{where}:{n}"
    return where


def apply_mapping(
    doc: Document, mapping: CorpusMapping, schema: Schema
) -> tuple[Document, list[str]]:
    """The document in target terms, and one reason per dropped entity or relation
    (`Counter(reasons)` gives the counts reports show).

    Entities of unmapped types are dropped; identical ones after mapping (same spans, same
    type) are merged into the first, relations following. Mapped relations are re-oriented
    so the modifier is the head; relations of unmapped types, with a dropped end, that the
    schema does not allow (`schema.can_modify(head, tail)`), that link an entity to itself
    or that repeat another are dropped."""
    dropped: list[str] = []
    kept: list[Entity] = []
    alias: dict[str, str] = {}  # source entity id -> surviving entity id
    by_key: dict[tuple[str, tuple[tuple[int, int], ...]], str] = {}
    for e in doc.entities:
        target = mapping.entities.get(e.type)
        if target is None:
            dropped.append(f"entity {e.type}: type not mapped")
            continue
        key = (target, e.spans)
        if key in by_key:
            alias[e.id] = by_key[key]
            dropped.append(f"entity {e.type}: merged into an identical {target}")
            continue
        by_key[key] = alias[e.id] = e.id
        kept.append(e if e.type == target else e.model_copy(update={"type": target}))
    types = {e.id: e.type for e in kept}
    relations: list[Relation] = []
    seen: set[tuple[str, str, str]] = set()
    for r in doc.relations:
        rule = mapping.relations.get(r.type)
        if rule is None:
            dropped.append(f"relation {r.type}: type not mapped")
            continue
        head, tail = (r.head, r.tail) if rule.modifier == "Arg1" else (r.tail, r.head)
        head, tail = alias.get(head), alias.get(tail)
        if head is None or tail is None:
            dropped.append(f"relation {r.type}: an end was dropped")
        elif head == tail:
            dropped.append(f"relation {r.type}: links an entity to itself")
        elif not schema.can_modify(types[head], types[tail]):
            dropped.append(f"relation {r.type}: schema forbids {types[head]} -> {types[tail]}")
        elif (rule.target, head, tail) in seen:
            dropped.append(f"relation {r.type}: duplicate")
        else:
            seen.add((rule.target, head, tail))
            relations.append(Relation(id=r.id, type=rule.target, head=head, tail=tail))
    meta = _remap_meta(doc.meta, alias, set(mapping.relations))
    meta["mapping"] = mapping.corpus
    return doc.model_copy(update={"entities": kept, "relations": relations, "meta": meta}), dropped


def _remap_meta(
    meta: dict[str, Any], alias: dict[str, str], mapped_relations: set[str]
) -> dict[str, Any]:
    """Reader metadata that points at entities, following merges and dropping what points
    at dropped entities; equivalence groups go with their relations unless mapped."""
    out = dict(meta)
    if isinstance(meta.get("concepts"), dict):
        out["concepts"] = {alias[k]: v for k, v in meta["concepts"].items() if k in alias}
    for key in _TARGETED_META:
        if isinstance(meta.get(key), list):
            out[key] = [
                {**item, "target": alias[item["target"]]}
                for item in meta[key]
                if item.get("target") in alias
            ]
    if isinstance(meta.get("equivalences"), list):
        groups = []
        for group in meta["equivalences"]:
            if group["type"] not in mapped_relations:
                continue
            members = list(dict.fromkeys(alias[m] for m in group["members"] if m in alias))
            if len(members) > 1:
                groups.append({**group, "members": members})
        out["equivalences"] = groups
    touched = ("concepts", *_TARGETED_META, "equivalences")
    return {k: v for k, v in out.items() if v or k not in touched}


def map_documents(
    documents: Iterable[Document], mapping: CorpusMapping, schema: Schema
) -> tuple[list[Document], Counter[str]]:
    """`apply_mapping` over many documents, with the drop reasons counted."""
    out: list[Document] = []
    counts: Counter[str] = Counter()
    for doc in documents:
        mapped, dropped = apply_mapping(doc, mapping, schema)
        out.append(mapped)
        counts.update(dropped)
    return out, counts


def map_result(
    result: ReadResult, mapping: CorpusMapping, schema: Schema
) -> tuple[ReadResult, Counter[str]]:
    """A reader's result in target terms; its problems are kept as they were."""
    docs, counts = map_documents(result.documents, mapping, schema)
    return ReadResult(docs, list(result.problems), dict(result.origins)), counts
