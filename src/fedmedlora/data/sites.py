"""A site's documents, from the synthetic generator or its own files, split into train and
test the same way every time (seeded by document id, not file order)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from fedmedlora.config import DataSettings, SiteSource
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.errors import ConfigError


@dataclass
class SiteData:
    spec: SiteSpec
    train: list[Document]
    test: list[Document]


def split_documents(
    docs: Sequence[Document], test_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Deterministic split: a document's side depends only on its id and the seed."""
    ranked = sorted(docs, key=lambda d: (zlib.crc32(f"{seed}:{d.id}".encode()), d.id))
    n_test = max(1, round(len(ranked) * test_fraction)) if len(ranked) > 1 else 0
    test_ids = {d.id for d in ranked[:n_test]}
    return [d for d in docs if d.id not in test_ids], [d for d in docs if d.id in test_ids]


def _synthetic_site(name: str, n_train: int, n_test: int, seed: int) -> SiteData:
    from fedmedlora.data import synthetic

    if name not in synthetic.SYNTHETIC_SITES:
        raise ConfigError(f"unknown synthetic site {name!r}; known: {synthetic.SYNTHETIC_SITES}")
    spec = synthetic.site_spec(name)
    docs = synthetic.generate_site(name, n_train + n_test, seed)
    return SiteData(spec, docs[:n_train], docs[n_train:])


def _read(path: str, fmt: str | None, source: SiteSource, schema: Schema) -> list[Document]:
    from fedmedlora.data.formats.readers import read_any

    result = read_any(path, fmt)
    if source.mapping:
        from fedmedlora.data.mapping import apply_mapping, load_mapping

        mapping = load_mapping(source.mapping)
        result.documents = [apply_mapping(d, mapping, schema)[0] for d in result.documents]
    return [d.model_copy(update={"site": source.name}) for d in result.raise_if_problems()]


def _site_spec(source: SiteSource, schema: Schema) -> SiteSpec:
    if source.entity_types is not None:
        spec = SiteSpec(
            name=source.name,
            entity_types=source.entity_types,
            relation_types=source.relation_types or [],
        )
    elif source.mapping:
        from fedmedlora.data.mapping import load_mapping

        spec = load_mapping(source.mapping).site_spec(source.name)
    else:
        spec = SiteSpec.full(source.name, schema)
    spec.check(schema)
    return spec


def load_source(source: SiteSource, schema: Schema, seed: int) -> SiteData:
    spec = _site_spec(source, schema)
    train = _read(source.train, source.format, source, schema)
    if source.test:
        test = _read(source.test, source.format, source, schema)
    else:
        train, test = split_documents(train, source.test_fraction, seed)
    if source.max_train_docs:
        train = train[: source.max_train_docs]
    if source.max_test_docs:
        test = test[: source.max_test_docs]
    return SiteData(spec, [spec.restrict(d) for d in train], [spec.restrict(d) for d in test])


def load_site(data: DataSettings, name: str, schema: Schema, seed: int) -> SiteData:
    if data.synthetic is not None:
        if name not in data.synthetic.sites:
            raise ConfigError(f"site {name!r} is not in data.synthetic.sites")
        return _synthetic_site(name, data.synthetic.train_docs, data.synthetic.test_docs, seed)
    for source in data.sites:
        if source.name == name:
            return load_source(source, schema, seed)
    raise ConfigError(f"site {name!r} is not in data.sites ({data.site_names})")
