import io

import pytest
from rich.console import Console

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.readers import detect_format, read_any
from fedmedlora.data.stats import corpus_stats, render_stats
from fedmedlora.errors import ConfigError, Problem


def _result() -> ReadResult:
    doc = Document(
        id="d",
        text="no chest pain [x]",
        entities=[
            Entity(id="T1", type="problem", start=3, end=13, text="chest pain"),
            Entity(id="T2", type="negation", start=0, end=2, text="no"),
            Entity(
                id="T3",
                type="problem",
                start=3,
                end=17,
                text="chest [x]",
                fragments=((3, 8), (14, 17)),
            ),
        ],
        relations=[
            Relation(id="R1", type="modifies", head="T2", tail="T1"),
            Relation(id="*1.1", type="OR", head="T1", tail="T3"),
        ],
        meta={
            "equivalences": [{"type": "OR", "members": ["T1", "T3"]}],
            "attributes": [{"id": "A1", "type": "POLARITY", "target": "T1", "value": "NEG"}],
            "doc_relations": [{"type": "CID", "args": ["a", "b"]}],
        },
    )
    return ReadResult([doc], [Problem("f.ann", 3, "T9: bad span [1,2)")])


def test_corpus_stats_counts_everything():
    warning = Problem("f.ann", 0, "document d has the same text as document c at g.ann")
    stats = corpus_stats(_result(), {"entity Date: type not mapped": 2}, [warning])
    assert stats == {
        "documents": 1,
        "characters": 17,
        "entities": 3,
        "entity_types": {"problem": 2, "negation": 1},
        "discontinuous_entities": 1,
        "relations": 2,
        "relation_types": {"OR": 1, "modifies": 1},
        "equivalence_groups": {"OR": 1},
        "equivalence_pairs": 1,
        "document_relations": {"CID": 1},
        "attributes": {"POLARITY=NEG": 1},
        "problems": ["f.ann:3: T9: bad span [1,2)"],
        "warnings": ["f.ann: document d has the same text as document c at g.ann"],
        "dropped": {"entity Date: type not mapped": 2},
    }


def test_render_shows_tables_and_problems_verbatim():
    out = io.StringIO()
    warning = Problem("f.ann", 0, "document d has the same text as document c at g.ann")
    stats = corpus_stats(_result(), warnings=[warning])
    render_stats(stats, Console(file=out, width=120), title="corpus [demo]")
    text = out.getvalue()
    assert "corpus [demo]" in text  # printed literally, not as rich markup
    assert "1 documents, 17 characters, 3 entities (2 types, 1 discontinuous)" in text
    assert "1 equivalence groups stored as 1 pairwise relations" in text
    for heading in ("Entities by type", "Relations by type", "Attributes", "Document-level"):
        assert heading in text
    assert "1 problem(s) found\nf.ann:3: T9: bad span [1,2)\n" in text
    assert "\nwarning: f.ann: document d has the same text as document c at g.ann\n" in text


def test_detect_format(tmp_path, shared_data):
    assert detect_format(shared_data / "maccrobat" / "MACCROBAT2020") == "brat"
    assert detect_format(shared_data / "ncbi_disease" / "NCBItestset_corpus.txt") == "pubtator"
    (tmp_path / "a.xml").write_text("<collection/>", encoding="utf-8")
    (tmp_path / "b.data").write_text("\n<?xml version='1.0'?><collection/>", encoding="utf-8")
    (tmp_path / "c.json").write_text('{"schema_version": 1}\n', encoding="utf-8")
    (tmp_path / "d.txt").write_text("hello", encoding="utf-8")
    assert detect_format(tmp_path / "a.xml") == "bioc"
    assert detect_format(tmp_path / "b.data") == "bioc"
    assert detect_format(tmp_path / "c.json") == "jsonl"
    with pytest.raises(ConfigError, match="cannot tell its format"):
        detect_format(tmp_path / "d.txt")
    with pytest.raises(ConfigError, match=r"no brat \.ann files"):
        detect_format(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        read_any(tmp_path / "missing", "brat")
    with pytest.raises(ConfigError, match="unknown format 'conll'"):
        read_any(tmp_path / "a.xml", "conll")
    assert read_any(tmp_path / "a.xml").documents == []
