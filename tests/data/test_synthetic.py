"""The synthetic multi-site generator: deterministic, valid, and sites that really differ."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
from collections import Counter
from itertools import combinations

import pytest

from fedmedlora.data.document import Document
from fedmedlora.data.formats.jsonl import document_problems
from fedmedlora.data.synthetic import (
    SYNTHETIC_SITES,
    generate_federation,
    generate_site,
    sentence_overlap,
    site_spec,
    split_sentences,
)
from fedmedlora.data.synthetic.grammar import Builder, GrammarError, make_typo, parse
from fedmedlora.errors import ConfigError

N_DOCS = 50


@pytest.fixture(scope="module")
def federation() -> dict[str, list[Document]]:
    return generate_federation(N_DOCS, seed=0)


def _digest(fed: dict[str, list[Document]]) -> str:
    blob = json.dumps({s: [d.model_dump(mode="json") for d in docs] for s, docs in fed.items()})
    return hashlib.sha256(blob.encode()).hexdigest()


def _content_sentences(doc: Document) -> list[str]:
    return [s for s in split_sentences(doc.text) if not s.endswith(":")]


# -- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_documents(federation):
    assert _digest(generate_federation(N_DOCS, seed=0)) == _digest(federation)


def test_output_does_not_depend_on_python_hash_seed(federation):
    small = {s: docs[:5] for s, docs in federation.items()}
    code = (
        "import hashlib, json; from fedmedlora.data.synthetic import generate_federation; "
        "fed = generate_federation(5, seed=0); "
        "print(hashlib.sha256(json.dumps({s: [d.model_dump(mode='json') for d in ds] "
        "for s, ds in fed.items()}).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(small)


def test_different_seed_gives_different_documents(federation):
    other = generate_federation(N_DOCS, seed=1)
    for site in SYNTHETIC_SITES:
        same = sum(a.text == b.text for a, b in zip(federation[site], other[site], strict=True))
        assert same == 0, site


def test_documents_do_not_depend_on_how_many_are_asked_for(federation):
    for site in SYNTHETIC_SITES:
        assert generate_site(site, 7, seed=0) == federation[site][:7]


def test_ids_site_and_meta(federation):
    for site, docs in federation.items():
        assert [d.id for d in docs] == [f"{site}-{i:04d}" for i in range(N_DOCS)]
        assert {d.site for d in docs} == {site}
        assert all(d.meta["synthetic"] is True and d.meta["style"] for d in docs)
    styles = {docs[0].meta["style"] for docs in federation.values()}
    assert len(styles) == len(SYNTHETIC_SITES)


def test_sites_subset_and_unknown_site():
    assert list(generate_federation(2, seed=0, sites=["lakeside"])) == ["lakeside"]
    with pytest.raises(ConfigError, match="riverside"):
        generate_site("nowhere", 1, seed=0)


# -- validity ---------------------------------------------------------------------------


def test_every_document_is_valid_against_the_schema(federation, schema):
    for docs in federation.values():
        for doc in docs:
            assert document_problems(doc, schema) == [], doc.id
            assert [e.id for e in doc.entities] == [f"T{k + 1}" for k in range(len(doc.entities))]
            assert [r.id for r in doc.relations] == [f"R{k + 1}" for k in range(len(doc.relations))]


def test_spans_nest_but_never_cross(federation):
    nested = 0
    for docs in federation.values():
        for doc in docs:
            keys = [(e.start, e.end, e.type) for e in doc.entities]
            assert len(keys) == len(set(keys)), doc.id
            for a, b in combinations(doc.entities, 2):
                first, second = sorted((a, b), key=lambda e: (e.start, -e.end))
                crossing = first.start < second.start < first.end < second.end
                assert not crossing, (doc.id, first, second)
                nested += first.start <= second.start and second.end <= first.end
    assert nested > 15  # measured 37, e.g. bodyloc "substernal" in "substernal chest pain"


def test_spans_have_no_stray_whitespace_and_text_is_tidy(federation):
    for docs in federation.values():
        for doc in docs:
            assert all(e.text == e.text.strip() and e.text for e in doc.entities)
            assert not re.search(r"  | [.,;:]", doc.text), doc.id


# -- what each site annotates -----------------------------------------------------------


def test_site_specs(schema):
    specs = {name: site_spec(name) for name in SYNTHETIC_SITES}
    assert set(specs["riverside"].entity_types) == set(schema.entity_types)
    for name in ("northgate", "lakeside"):
        assert set(specs[name].entity_types) < set(schema.entity_types)
    assert "bodyloc" not in specs["northgate"].entity_types
    assert {"labvalue", "reference_range", "negation"} <= set(specs["northgate"].entity_types)
    assert {"strength", "form", "condition"} <= set(specs["lakeside"].entity_types)
    assert "test" not in specs["lakeside"].entity_types
    for spec in specs.values():
        spec.check(schema)


def test_documents_contain_only_their_sites_types(federation):
    for site, docs in federation.items():
        spec = site_spec(site)
        used = {e.type for d in docs for e in d.entities}
        assert used <= set(spec.entity_types), site
        assert {r.type for d in docs for r in d.relations} <= set(spec.relation_types)
        # The narrative site uses everything it declares; the others most of it.
        assert len(used) >= len(spec.entity_types) - (0 if site == "riverside" else 1)


def test_every_schema_type_occurs_in_the_federation(federation, schema):
    used = {e.type for docs in federation.values() for d in docs for e in d.entities}
    assert used == set(schema.entity_types)


def test_relations_exist_and_are_allowed(federation, schema):
    for site, docs in federation.items():
        pairs = Counter()
        for doc in docs:
            by_id = doc.entity_by_id()
            for r in doc.relations:
                head, tail = by_id[r.head], by_id[r.tail]
                assert schema.can_modify(head.type, tail.type), (doc.id, head, tail)
                pairs[head.type, tail.type] += 1
        assert sum(pairs.values()) > 5 * len(docs), site
        assert len(pairs) >= 8, site
    # Where every type is annotated, every modifier is linked to what it modifies.
    for doc in federation["riverside"]:
        heads = {r.head for r in doc.relations}
        orphans = [e for e in doc.entities if schema.is_modifier(e.type) and e.id not in heads]
        assert orphans == [], doc.id


# -- realism ----------------------------------------------------------------------------


def _words(docs: list[Document]) -> set[str]:
    return {w.lower() for d in docs for w in re.findall(r"[A-Za-z]+", d.text)}


def test_sites_differ_in_vocabulary_style_and_types(federation):
    words = {site: _words(docs) for site, docs in federation.items()}
    for a, b in combinations(SYNTHETIC_SITES, 2):
        jaccard = len(words[a] & words[b]) / len(words[a] | words[b])
        assert jaccard < 0.3, (a, b, jaccard)  # measured 0.12-0.19
    mean_len = {
        site: statistics.mean(len(s.split()) for d in docs for s in _content_sentences(d))
        for site, docs in federation.items()
    }
    assert mean_len["riverside"] > 1.5 * mean_len["northgate"]  # measured 12.8 vs 7.0
    share = {
        site: Counter(e.type for d in docs for e in d.entities) for site, docs in federation.items()
    }
    drug_share = {s: c["drug"] / sum(c.values()) for s, c in share.items()}
    assert drug_share["lakeside"] > 2 * drug_share["riverside"]
    lab_share = {s: c["labvalue"] / sum(c.values()) for s, c in share.items()}
    assert lab_share["northgate"] > 2 * lab_share["riverside"]
    # Each site's signature layout.
    assert all(re.search(r"^1\. ", d.text, re.M) for d in federation["lakeside"])
    assert all(
        re.search(r"^(S|Subj|Subjective|Interval|Events): ", d.text)
        for d in federation["northgate"]
    )
    assert (
        statistics.mean(
            d.text.count(" c/o ") + d.text.count(" w/ ") for d in federation["northgate"]
        )
        > 0.5
    )


def test_negation_uncertainty_and_typos_occur(federation):
    for site in ("riverside", "northgate"):
        types = Counter(e.type for d in federation[site] for e in d.entities)
        assert types["negation"] >= 10 and types["uncertain"] >= 5, site
    for site, docs in federation.items():
        typos = [(d, t) for d in docs for t in d.meta["typos"]]
        assert len(typos) >= 5, site
        for doc, t in typos:
            written = doc.text[t["start"] : t["end"]]
            assert written.lower() != t["original"].lower()
            assert abs(len(written) - len(t["original"])) <= 1
            # A typo'd mention is still annotated, with offsets of the typo'd text.
            assert any(e.start <= t["start"] and t["end"] <= e.end for e in doc.entities)


def test_note_shape(federation):
    for docs in federation.values():
        for doc in docs:
            sentences = _content_sentences(doc)
            assert 4 <= len(sentences) <= 10, (doc.id, len(sentences))
            assert max(len(s.split()) for s in sentences) <= 35, doc.id
    for doc in federation["lakeside"]:
        assert len(re.findall(r"^\d\. ", doc.text, re.M)) >= 4  # meds (3+) and a plan (1+)


def test_sentence_overlap_between_train_and_test_is_low():
    for site in SYNTHETIC_SITES:
        docs = generate_site(site, 52, seed=0)
        stats = sentence_overlap(docs[:40], docs[40:])
        assert stats["total"] >= 60, site
        assert stats["fraction"] < 0.08, (site, stats)  # measured 0.0-0.013


def test_sentence_overlap_detects_shared_sentences():
    docs = generate_site("riverside", 6, seed=0)
    assert sentence_overlap(docs, docs)["fraction"] == 1.0
    half = sentence_overlap(docs[:3], docs)
    assert 0.3 < half["fraction"] < 0.7
    assert sentence_overlap([], docs) == {
        "count": 0,
        "total": half["total"],
        "fraction": 0.0,
        "min_words": 4,
    }


def test_split_sentences():
    text = "HPI: Pt c/o SOB x3d. WBC 14.2 (ref 4.0-11.0). ?PNA.\nMedications:\n1. Oxycodone 5 mg PO"
    assert split_sentences(text) == [
        "HPI: Pt c/o SOB x3d.",
        "WBC 14.2 (ref 4.0-11.0).",
        "?PNA.",
        "Medications:",
        "Oxycodone 5 mg PO",
    ]


# -- the grammar engine -----------------------------------------------------------------


def _build(grammar: dict, pattern: str, schema, seed: int = 0) -> Builder:
    b = Builder(grammar, schema, random.Random(seed))
    b.sentence(pattern, b.root([]))
    return b


def test_grammar_builds_exact_nested_spans_and_links(schema):
    grammar = {
        "loc": ["substernal"],
        "pain": ["{loc@bodyloc>^} chest pain"],
        "drug": [{"name": "aspirin", "dose": ["81 mg"]}],
    }
    b = _build(
        grammar,
        "{=No@negation>p} {pain@problem#p}[%0 never]; {drug.name@drug#d} {drug.dose@dosage>d}.",
        schema,
    )
    assert b.text == "No substernal chest pain; aspirin 81 mg."
    spans = {(s.type, b.text[s.start : s.end]) for s in b.spans}
    assert spans == {
        ("negation", "No"),
        ("problem", "substernal chest pain"),
        ("bodyloc", "substernal"),
        ("drug", "aspirin"),
        ("dosage", "81 mg"),
    }
    links = {(b.spans[m].type, b.spans[t].type) for m, t in b.links}
    assert links == {("negation", "problem"), ("bodyloc", "problem"), ("dosage", "drug")}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{=severe@severity} {=cough@problem}", "modifies nothing"),
        ("{=severe@severity>x} {=cough@problem}", "no target"),
        ("{=81 mg@dosage>p} {=cough@problem#p}", "cannot modify"),
        ("{=cough@problem>p}", "not a modifier"),
        ("{=cough@nosuchtype}", "unknown entity type"),
        ("[unclosed", "unclosed"),
    ],
)
def test_grammar_rejects_data_mistakes(schema, pattern, message):
    with pytest.raises(GrammarError, match=message):
        parse(pattern)
        _build({}, pattern, schema)


def test_make_typo_always_changes_the_word():
    rng = random.Random(0)
    for word in ("pneumonia", "metoprolol", "hypertension", "Graves", "possible"):
        for _ in range(50):
            typo = make_typo(word, rng)
            assert typo != word and abs(len(typo) - len(word)) <= 1 and typo[0] == word[0]
