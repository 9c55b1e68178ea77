from collections import Counter

import pytest

from fedmedlora.data.formats.pubtator import read_pubtator

SAMPLE = (
    "\n"  # leading empty line, as in the NCBI train and dev files
    "111|t|Aspirin and fever.\n"
    "111|a|Fever fell after aspirin. \n"
    "111\t0\t7\tAspirin\tChemical\t D001241 \n"
    "111\t12\t17\tfever\tDisease\tD005334\n"
    "111\t19\t24\tFevre\tDisease\tD005334\n"
    "111\tCID\tD001241\tD005334\n"
    "\n"
    "222|t|Second.\n"
    "222|a|\n"
    "222\t0\t6\tSecond\tDisease\tD1|D2\tSec|ond\n"
    "garbage line\n"
    "222\t1a\t6\tSecond\tDisease\tD1\n"
    "\n"
    "111|t|Aspirin and fever.\n"
    "111|a|Fever fell after aspirin. \n"
)


def test_sample(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    result = read_pubtator(path)
    first, second = result.documents
    assert first.id == "111"
    # title + " " + abstract, trailing space of the abstract kept
    assert first.text == "Aspirin and fever. Fever fell after aspirin. "
    assert [(e.id, e.type, e.text) for e in first.entities] == [
        ("T1", "Chemical", "Aspirin"),
        ("T2", "Disease", "fever"),
    ]
    assert first.meta["concepts"] == {"T1": "D001241", "T2": "D005334"}
    assert first.meta["doc_relations"] == [{"type": "CID", "args": ["D001241", "D005334"]}]
    assert first.relations == []
    assert first.meta["passages"] == [
        {"type": "title", "offset": 0, "length": 18},
        {"type": "abstract", "offset": 19, "length": 26},
    ]
    assert second.text == "Second. " and second.meta["concepts"] == {"T1": "D1|D2"}
    reasons = {p.line: p.reason for p in result.problems}
    assert sorted(reasons) == [6, 12, 13, 15]
    assert "'Fevre' does not match" in reasons[6]
    assert reasons[12].startswith("not a PubTator")
    assert reasons[13].startswith("mention offsets must be whole numbers")
    assert "already read at line 2 (a different version); keeping the first" in reasons[15]


def test_missing_file(tmp_path):
    result = read_pubtator(tmp_path / "nope.txt")
    assert result.documents == [] and result.problems[0].reason == "file not found"


@pytest.fixture(scope="module")
def ncbi_train(shared_data):
    return read_pubtator(shared_data / "ncbi_disease" / "NCBItrainset_corpus.txt")


def test_ncbi_train_quirks_are_reported(ncbi_train):
    problems = [str(p) for p in ncbi_train.problems]
    assert len(problems) == 2
    mismatch, duplicate = problems
    assert "NCBItrainset_corpus.txt:3249: document 10923035: mention text" in mismatch
    assert "[711,761)" in mismatch
    assert "NCBItrainset_corpus.txt:4557: document 8528200 already read at line 3811" in duplicate
    assert duplicate.endswith("(an identical copy); keeping the first")
    docs = ncbi_train.documents
    assert len(docs) == 592 == len({d.id for d in docs})
    assert all(d.consistency_problems() == [] for d in docs)
    # 5,145 mention lines, less the mismatch and the 11 of the repeated abstract
    types = Counter(e.type for d in docs for e in d.entities)
    assert sum(types.values()) == 5_145 - 1 - 11
    concepts = {c for d in docs for c in d.meta["concepts"].values()}
    assert "OMIM:106210" in concepts and "D015862+D058499" in concepts  # stray spaces stripped


def test_ncbi_dev_and_test_are_clean(shared_data):
    for name, docs, mentions in (("develop", 100, 787), ("test", 100, 960)):
        result = read_pubtator(shared_data / "ncbi_disease" / f"NCBI{name}set_corpus.txt")
        assert result.problems == []
        assert len(result.documents) == docs
        assert sum(len(d.entities) for d in result.documents) == mentions


@pytest.mark.parametrize(
    ("split", "chemical", "disease", "cid"),
    [("Training", 5_203, 4_182, 1_038), ("Development", 5_347, 4_244, 1_012)],
)
def test_bc5cdr_counts(shared_data, split, chemical, disease, cid):
    result = read_pubtator(shared_data / "bc5cdr" / f"CDR_{split}Set.PubTator.txt")
    assert result.problems == []
    docs = result.documents
    assert len(docs) == 500
    types = Counter(e.type for d in docs for e in d.entities)
    assert types == {"Chemical": chemical, "Disease": disease}
    rels = Counter(r["type"] for d in docs for r in d.meta.get("doc_relations", []))
    assert rels == {"CID": cid}
    assert all(d.relations == [] and d.consistency_problems() == [] for d in docs)
