"""A site's documents, from the synthetic generator or its own files, split into train and
test the same way every time (seeded by document id, not file order)."""

from __future__ import annotations

import logging
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedmedlora.data.checks import (
    Findings,
    check_duplicates,
    check_split_overlap,
    check_types,
)
from fedmedlora.data.chunking import chunk_document
from fedmedlora.data.document import Document
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.noise import corrupt_entity_types
from fedmedlora.data.schema import Schema
from fedmedlora.data.settings import DataSettings, SiteSource
from fedmedlora.data.site import SiteSpec
from fedmedlora.errors import AnnotationError, ConfigError, Problem

log = logging.getLogger(__name__)


@dataclass
class SiteData:
    spec: SiteSpec
    train: list[Document]
    test: list[Document]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    corrupted_labels: int = 0  # training labels made wrong on purpose (data.noise)


def split_documents(
    docs: Sequence[Document], test_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Deterministic split: a document's side depends only on its id and the seed."""
    ranked = sorted(docs, key=lambda d: (zlib.crc32(f"{seed}:{d.id}".encode()), d.id))
    n_test = max(1, round(len(ranked) * test_fraction)) if len(ranked) > 1 else 0
    test_ids = {d.id for d in ranked[:n_test]}
    return [d for d in docs if d.id not in test_ids], [d for d in docs if d.id in test_ids]


def sample_windows(docs: Sequence[Document], n: int, max_chars: int, seed: int) -> list[Document]:
    """A seeded sample of `n` sentence windows (never cutting a gold entity), each as a
    document of its own with the annotations inside it."""
    windows: list[Document] = []
    for doc in docs:
        for ch in chunk_document(doc, max_chars).chunks:
            if not ch.text.strip():
                continue
            windows.append(
                Document(
                    id=f"{doc.id}#{ch.index}",
                    text=ch.text,
                    site=doc.site,
                    entities=ch.entities,
                    relations=ch.relations,
                    meta={"source_document": doc.id, "offset": ch.start},
                )
            )
    random.Random(seed).shuffle(windows)
    return sorted(windows[:n], key=lambda d: d.id)


def synthetic_site(
    name: str, n_train: int, n_test: int, seed: int, corrupt: float = 0.0
) -> SiteData:
    """A built-in synthetic hospital's split: the one place it is made, for simulated runs
    and for the files `fedmedlora data synthetic` writes alike."""
    from fedmedlora.data import synthetic

    if name not in synthetic.SYNTHETIC_SITES:
        raise ConfigError(f"unknown synthetic site {name!r}; known: {synthetic.SYNTHETIC_SITES}")
    spec = synthetic.site_spec(name)
    docs = synthetic.generate_site(name, n_train + n_test, seed)
    return _corrupted(SiteData(spec, docs[:n_train], docs[n_train:]), corrupt, seed)


def _corrupted(data: SiteData, fraction: float, seed: int) -> SiteData:
    if fraction > 0:
        data.train, changed = corrupt_entity_types(
            data.train,
            fraction,
            data.spec.entity_types,
            zlib.crc32(f"{seed}:{data.spec.name}".encode()),
        )
        data.corrupted_labels = changed
    return data


def _read(
    paths: list[str], source: SiteSource, spec: SiteSpec, schema: Schema, out: SiteData
) -> tuple[list[ReadResult], bool]:
    """Every file of one split, checked against the schema and the site's types; and
    whether any of them is strict (a problem then fails the site)."""
    from fedmedlora.data.formats.readers import detect_format, read_any

    results, strict_any = [], False
    for path in paths:
        fmt = source.format or detect_format(path)
        # Own format (JSONL, no mapping): types checked line by line.
        result = read_any(path, fmt, None if source.mapping else schema)
        if source.mapping:
            from fedmedlora.data.mapping import load_mapping, map_result

            result, dropped = map_result(result, load_mapping(source.mapping), schema)
            out.dropped.update(dropped)
        found = Findings()
        check_types(result, spec, schema, found)
        strict = source.strict if source.strict is not None else fmt == "jsonl"
        problems = result.problems + found.problems
        if strict and problems:
            raise AnnotationError(problems)
        strict_any |= strict
        out.problems += problems
        out.warnings += found.warnings
        result.documents = [d.model_copy(update={"site": source.name}) for d in result.documents]
        results.append(result)
    return results, strict_any


def _log(site: str, data: SiteData, shown: int = 20) -> None:
    """One line per problem and warning, so they are seen where the site runs."""
    for kind, items in (("problem", data.problems), ("warning", data.warnings)):
        for p in items[:shown]:
            log.warning("site %s: %s: %s", site, kind, p)
        if len(items) > shown:
            log.warning("site %s: ... and %d more %ss", site, len(items) - shown, kind)


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
    """A site's train and test documents, with every problem and warning found (also
    logged). Strict sources (JSONL by default) raise AnnotationError on any problem."""
    data = SiteData(_site_spec(source, schema), [], [])
    read, strict = _read(source.train_paths, source, data.spec, schema, data)
    parts = [("train", r) for r in read]
    if source.test is not None:
        read_test, strict_test = _read(source.test_paths, source, data.spec, schema, data)
        parts += [("test", r) for r in read_test]
        strict |= strict_test
    found = Findings()
    kept = check_duplicates(parts, found)
    if strict and found.problems:
        raise AnnotationError(found.problems)
    data.problems += found.problems
    data.warnings += found.warnings
    train = kept["train"]
    if source.test is not None:
        test = kept["test"]
    else:
        train, test = split_documents(train, source.test_fraction, seed)
        origins = {k: v for _, r in parts for k, v in r.origins.items()}
        data.warnings += check_split_overlap(train, test, origins)
    _log(source.name, data)
    if not train:
        raise ConfigError(
            f"site {source.name}: no usable training documents in "
            f"{source.train_paths} ({len(data.problems)} problems)"
        )
    if source.max_train_docs:
        train = train[: source.max_train_docs]
    if source.max_test_docs:
        test = test[: source.max_test_docs]
    if source.test_windows:
        test = sample_windows(test, source.test_windows, source.window_chars, seed)
    data.train = [data.spec.restrict(d) for d in train]
    data.test = [data.spec.restrict(d) for d in test]
    return _corrupted(data, source.corrupt_labels, seed)


def load_site(data: DataSettings, name: str, schema: Schema, seed: int) -> SiteData:
    if data.synthetic is not None:
        if name not in data.synthetic.sites:
            raise ConfigError(f"site {name!r} is not in data.synthetic.sites")
        syn = data.synthetic
        unknown = sorted(set(syn.corrupt_labels) - set(syn.sites))
        if unknown:
            raise ConfigError(f"data.synthetic.corrupt_labels names unknown sites {unknown}")
        return synthetic_site(
            name, syn.train_docs, syn.test_docs, seed, syn.corrupt_labels.get(name, 0.0)
        )
    for source in data.sites:
        if source.name == name:
            return load_source(source, schema, seed)
    raise ConfigError(f"site {name!r} is not in data.sites ({data.site_names})")
