"""Seeded synthetic clinical notes for several hospitals that write differently.

The offline demo needs a federation whose sites really differ (style, vocabulary, disease
mix, which types they annotate) without shipping any real patient text. Vocabulary and
sentence patterns are data (`lexicon_*.yaml`, `site_*.yaml` next to this module); this
module only assembles documents from them. Same name + seed => byte-identical documents,
whatever PYTHONHASHSEED is: every random choice comes from a `random.Random` seeded with a
CRC32 of (site, seed, document index), never from the global RNG or `hash()`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import yaml

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.synthetic.grammar import Builder, Grammar, GrammarError, parse, refs
from fedmedlora.errors import ConfigError

SYNTHETIC_SITES: tuple[str, ...] = ("riverside", "northgate", "lakeside")
_PACKAGE = "fedmedlora.data.synthetic"


@dataclass(frozen=True)
class Section:
    headers: tuple[str, ...]
    patterns: tuple[str, ...]
    n: tuple[int, int]
    prob: float
    sep: str
    join: str
    shuffle: bool
    numbered: bool
    bullet: str


@dataclass(frozen=True)
class SiteStyle:
    spec: SiteSpec
    style: str
    domains: tuple[str, ...]
    capitalize: bool
    typo_rate: float
    bind: tuple[str, ...]
    sections: tuple[Section, ...]
    grammar: Grammar


def _read_yaml(filename: str) -> Any:
    return yaml.safe_load((resources.files(_PACKAGE) / filename).read_text(encoding="utf-8"))


def _is_num(value: object) -> bool:
    return isinstance(value, dict) and "num" in value


def _normalise(name: str, raw: Any, table: dict[str, Any]) -> list:
    """A symbol's alternatives as a list; strings become {'name': s} beside structured
    entries so `{sym.abbr}` falls back to the plain name."""
    if _is_num(raw):
        return [raw]
    if isinstance(raw, dict) and "union" in raw:
        return [alt for part in raw["union"] for alt in _normalise(part, table[part], table)]
    if not isinstance(raw, list) or not raw:
        raise GrammarError(f"symbol {name!r} must be a non-empty list, a num or a union")
    if any(isinstance(a, dict) and not _is_num(a) for a in raw):
        return [{"name": a} if isinstance(a, str) else a for a in raw]
    return list(raw)


@lru_cache(maxsize=1)
def _lexicon() -> dict[str, Any]:
    """All shared vocabulary files merged; a symbol defined twice is a data bug."""
    merged: dict[str, Any] = {}
    names = sorted(
        r.name for r in resources.files(_PACKAGE).iterdir() if r.name.startswith("lexicon_")
    )
    for filename in names:
        for sym, raw in (_read_yaml(filename) or {}).items():
            if sym in merged:
                raise GrammarError(f"symbol {sym!r} defined twice (again in {filename})")
            merged[sym] = raw
    return merged


@lru_cache(maxsize=1)
def _schema() -> Schema:
    return load_schema("clinical")


def _texts(sym: str, value: object) -> list[str]:
    """The pattern strings inside one alternative or field value; anything else that is
    not a number is a data bug (YAML turns a bare `No` into False, `1` into an int)."""
    if isinstance(value, str):
        return [value]
    if _is_num(value):
        return []
    if isinstance(value, list):
        return [t for v in value for t in _texts(sym, v)]
    if isinstance(value, dict) and "name" in value:
        return [t for v in value.values() for t in _texts(sym, v)]
    raise GrammarError(f"symbol {sym!r}: cannot use {value!r} (quote it in the YAML?)")


def _check_grammar(grammar: Grammar, patterns: list[str], site: str, schema: Schema) -> None:
    """Fail at load time, naming the site, when a pattern refers to something unknown."""
    texts = [(f"site {site}", p) for p in patterns]
    texts += [(sym, t) for sym, alts in grammar.items() for t in _texts(sym, alts)]
    for where, text in texts:
        for ref in refs(parse(text)):
            if ref.sym is not None and ref.sym not in grammar:
                raise GrammarError(f"{where}: unknown symbol {ref.sym!r} in {text!r}")
            if ref.type is not None and ref.type not in schema.entity_types:
                raise GrammarError(f"{where}: unknown type {ref.type!r} in {text!r}")


@cache
def _site(name: str) -> SiteStyle:
    if name not in SYNTHETIC_SITES:
        raise ConfigError(
            f"unknown synthetic site {name!r}; built-in sites: {', '.join(SYNTHETIC_SITES)}"
        )
    raw = _read_yaml(f"site_{name}.yaml")
    schema = _schema()
    table = dict(_lexicon())
    for sym, rule in (raw.get("rules") or {}).items():
        if sym in table:
            raise GrammarError(f"site {name}: rule {sym!r} shadows a lexicon symbol")
        table[sym] = rule
    grammar = {sym: _normalise(sym, rule, table) for sym, rule in table.items()}
    types = raw["entity_types"]
    spec = SiteSpec(
        name=name,
        entity_types=list(schema.entity_types) if types == "all" else list(types),
        relation_types=list(schema.relation_types),
        description=raw.get("description", ""),
    )
    spec.check(schema)
    sections = tuple(
        Section(
            headers=tuple(s.get("header", [""])),
            patterns=tuple(s["patterns"]),
            n=(int(s["n"][0]), int(s["n"][1])),
            prob=float(s.get("prob", 1.0)),
            sep=s.get("sep", " "),
            join=s.get("join", "\n"),
            shuffle=bool(s.get("shuffle", False)),
            numbered=bool(s.get("numbered", False)),
            bullet=s.get("bullet", ""),
        )
        for s in raw["sections"]
    )
    _check_grammar(grammar, [p for s in sections for p in (*s.headers, *s.patterns)], name, schema)
    return SiteStyle(
        spec=spec,
        style=raw["style"],
        domains=tuple(raw.get("domains", ())),
        capitalize=bool(raw.get("capitalize", True)),
        typo_rate=float(raw.get("typo_rate", 0.0)),
        bind=tuple(raw.get("bind", ())),
        sections=sections,
        grammar=grammar,
    )


def site_spec(name: str) -> SiteSpec:
    """Which types the built-in site `name` annotates."""
    return _site(name).spec


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode("utf-8"))


def _assemble(site: SiteStyle, b: Builder, rng: random.Random) -> None:
    root = b.root(list(site.bind))
    first = True
    for section in site.sections:
        if section.prob < 1.0 and rng.random() >= section.prob:
            continue
        lo, hi = section.n
        count = min(rng.randint(lo, hi), len(section.patterns))
        if count == 0:
            continue
        picks = rng.sample(range(len(section.patterns)), count)
        if not section.shuffle:
            picks.sort()
        if not first:
            b.emit(section.join)
        first = False
        header = rng.choice(section.headers)
        if header:
            b.capitalize_next = site.capitalize
            b.sentence(header, root)
        for k, pick in enumerate(picks):
            if k:
                b.emit(section.sep)
            b.emit(f"{k + 1}. " if section.numbered else section.bullet)
            b.capitalize_next = site.capitalize
            b.sentence(section.patterns[pick], root)


def _document(name: str, site: SiteStyle, index: int, seed: int) -> Document:
    schema = _schema()
    rng = random.Random(_seed(name, seed, index))
    b = Builder(
        site.grammar,
        schema,
        rng,
        typo_rate=site.typo_rate,
        typo_types=frozenset(site.spec.entity_types),
    )
    _assemble(site, b, rng)
    text = b.text.rstrip()
    order = sorted(range(len(b.spans)), key=lambda i: (b.spans[i].start, -b.spans[i].end))
    keep_types = set(site.spec.entity_types)
    kept = [i for i in order if b.spans[i].type in keep_types]
    ids = {i: f"T{k + 1}" for k, i in enumerate(kept)}
    entities = [
        Entity(
            id=ids[i],
            type=b.spans[i].type,
            start=b.spans[i].start,
            end=b.spans[i].end,
            text=text[b.spans[i].start : b.spans[i].end],
        )
        for i in kept
    ]
    links = sorted(
        ((m, t) for m, t in b.links if m in ids and t in ids),
        key=lambda mt: (b.spans[mt[0]].start, b.spans[mt[1]].start),
    )
    relations = [
        Relation(id=f"R{k + 1}", type="modifies", head=ids[m], tail=ids[t])
        for k, (m, t) in enumerate(links)
    ]
    doc = Document(
        id=f"{name}-{index:04d}",
        text=text,
        site=name,
        entities=entities,
        relations=relations,
        meta={
            "synthetic": True,
            "style": site.style,
            "domains": list(site.domains),
            "typos": [{"start": s, "end": e, "original": o} for s, e, o in b.typos],
        },
    )
    # The site's own view: already restricted above; restrict() also drops relations of
    # types the site does not annotate, so the contract lives in one place.
    return site.spec.restrict(doc)


def generate_site(name: str, n_docs: int, seed: int) -> list[Document]:
    """`n_docs` notes in the style of site `name`. Document i depends only on (name, seed,
    i), so a larger `n_docs` extends a smaller run instead of reshuffling it."""
    site = _site(name)
    return [_document(name, site, i, seed) for i in range(n_docs)]


def generate_federation(
    n_docs: int, seed: int, sites: Sequence[str] | None = None
) -> dict[str, list[Document]]:
    """`n_docs` notes for each site (all built-in sites by default)."""
    names = list(SYNTHETIC_SITES if sites is None else sites)
    return {name: generate_site(name, n_docs, seed) for name in names}
