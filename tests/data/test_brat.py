from collections import Counter

import pytest

from fedmedlora.data.formats.brat import read_brat, read_brat_pair

TEXT = "No fever; chest pain radiating to left arm.\r\nGave aspirin 81 mg.\n"


def _pair(tmp_path, ann: str, text: str = TEXT, name: str = "doc"):
    (tmp_path / f"{name}.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / f"{name}.ann").write_text(ann, encoding="utf-8")
    return tmp_path / f"{name}.txt", tmp_path / f"{name}.ann"


def test_spans_events_relations_attributes(tmp_path):
    ann = "\n".join(
        [
            "T1\tSign_symptom 3 8\tfever",
            "E1\tSign_symptom:T1 ",
            "T2\tSign_symptom 10 20;34 42\tchest pain left arm",
            "E2\tSign_symptom:T2",
            "T3\tMedication 50 57\taspirin",  # after \r\n: offsets count both characters
            "T4\tDosage 58 63\t81 mg",
            "R1\tMODIFY Arg1:T4 Arg2:T3\t",
            "*\tOVERLAP E1 E2 T3",
            "A1\tPOLARITY E1 NEG",
            "A2\tHypothetical T3",
            "N1\tReference T3 RxNorm:1191\taspirin",
            "#1\tAnnotatorNotes R1\tdose of aspirin",
        ]
    )
    doc, problems = read_brat_pair(*_pair(tmp_path, ann))
    assert problems == []
    assert doc.id == "doc" and doc.text == TEXT
    assert doc.consistency_problems() == []
    ents = doc.entity_by_id()
    assert ents["T2"].fragments == ((10, 20), (34, 42))
    assert ents["T2"].text == "chest pain left arm"
    assert ents["T3"].text == "aspirin"
    rels = {(r.type, r.head, r.tail) for r in doc.relations}
    # events resolve to their trigger spans; equivalences become consecutive pairs
    assert rels == {
        ("MODIFY", "T4", "T3"),
        ("OVERLAP", "T1", "T2"),
        ("OVERLAP", "T2", "T3"),
    }
    assert doc.meta["equivalences"] == [{"type": "OVERLAP", "members": ["T1", "T2", "T3"]}]
    assert doc.meta["attributes"] == [
        {"id": "A1", "type": "POLARITY", "target": "T1", "value": "NEG"},
        {"id": "A2", "type": "Hypothetical", "target": "T3", "value": True},
    ]
    assert doc.meta["normalizations"][0]["ref"] == "RxNorm:1191"
    assert doc.meta["notes"][0]["target"] == "R1"
    assert doc.meta["source"].endswith("doc.ann")


def test_event_arguments_become_role_relations(tmp_path):
    ann = "T1\tTreat 50 57\taspirin\nT2\tProblem 3 8\tfever\nE1\tTreat:T1 Theme:E2\nE2\tProblem:T2"
    doc, problems = read_brat_pair(*_pair(tmp_path, ann))
    assert problems == []
    assert [(r.id, r.type, r.head, r.tail) for r in doc.relations] == [
        ("E1.Theme", "Theme", "T1", "T2")
    ]


def test_bad_lines_are_reported_and_skipped(tmp_path):
    ann = "\n".join(
        [
            "T1\tSign_symptom 3 8\tfever",
            "T2\tSign_symptom 3 8\tfeber",  # text does not match offsets
            "T3\tSign_symptom 3 x\tfever",  # bad span
            "T4\tSign_symptom 3 800\tfever",  # beyond the text
            "T1\tSign_symptom 10 15\tchest",  # duplicate id
            "R1\tMODIFY Arg1:T2 Arg2:T1",  # refers to the skipped T2
            "R2\tMODIFY Arg1:T1",  # malformed
            "E1\tSign_symptom:T9",  # trigger missing
            "X1\twhat is this",
            "T5\tMedication 50 57",  # missing text field
        ]
    )
    doc, problems = read_brat_pair(*_pair(tmp_path, ann))
    assert [e.id for e in doc.entities] == ["T1"]
    assert doc.relations == []
    assert sorted(p.line for p in problems) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    by_line = {p.line: p.reason for p in problems}
    assert "does not match" in by_line[2]
    assert "duplicate annotation id 'T1'" in by_line[5]
    assert "'T2'" in by_line[6]
    assert "unrecognised" in by_line[9]
    assert all(p.path.endswith("doc.ann") for p in problems)


def test_span_with_extra_whitespace_is_trimmed_and_reported(tmp_path):
    # Chia quirk: a span ending on the \r of \r\n whose annotated text lacks it.
    doc, problems = read_brat_pair(*_pair(tmp_path, "T1\tCondition 21 44\tradiating to left arm."))
    assert [(e.start, e.end, e.text) for e in doc.entities] == [(21, 43, "radiating to left arm.")]
    assert len(problems) == 1 and "trimmed to 21 43" in problems[0].reason


def test_directory_reports_unpaired_files(tmp_path):
    _pair(tmp_path, "T1\tSign_symptom 3 8\tfever", name="a")
    (tmp_path / "b.txt").write_text("orphan", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    _pair(tmp_path / "sub", "", name="c")
    result = read_brat(tmp_path)
    assert [d.id for d in result.documents] == ["a", "sub/c"]
    assert [(p.path.endswith("b.txt"), p.line) for p in result.problems] == [(True, 0)]
    one = read_brat(tmp_path / "a.ann")
    assert [d.id for d in one.documents] == ["a"] and one.problems == []
    assert read_brat(tmp_path / "b.txt").problems[0].reason == "no matching .ann file"
    assert read_brat(tmp_path / "missing").problems[0].reason == "not found"


@pytest.fixture(scope="module")
def maccrobat(shared_data):
    return read_brat(shared_data / "maccrobat" / "MACCROBAT2020")


@pytest.fixture(scope="module")
def chia(shared_data):
    return read_brat(shared_data / "chia" / "chia_without_scope")


def test_maccrobat_counts_match_source(maccrobat):
    docs = maccrobat.documents
    assert len(docs) == 200 and sum(len(d.text) for d in docs) == 565_716
    types = Counter(e.type for d in docs for e in d.entities)
    assert sum(types.values()) == 25_189 and len(types) == 41
    assert types["Diagnostic_procedure"] == 4_598 and types["Sign_symptom"] == 3_382
    rels = Counter(r.type for d in docs for r in d.relations)
    groups = sum(len(d.meta.get("equivalences", [])) for d in docs)
    # SOURCE.md counts each `*` line once: 16,307 R lines + 2,023 OVERLAP groups
    assert sum(n for t, n in rels.items() if t != "OVERLAP") + groups == 18_330
    assert rels["MODIFY"] == 11_571 and rels["BEFORE"] == 2_014 and groups == 2_023
    attrs = Counter(a["type"] for d in docs for a in d.meta.get("attributes", []))
    assert attrs == {"POLARITY": 1_273, "TREND": 143}
    assert maccrobat.problems == []
    assert all(d.consistency_problems() == [] for d in docs)


def test_maccrobat_relations_point_at_event_triggers(maccrobat):
    doc = next(d for d in maccrobat.documents if d.id == "15939911")
    ents = doc.entity_by_id()
    # `R1 IDENTICAL Arg1:E5 Arg2:E4`: E5 wraps T8 ("symptoms"), E4 wraps T7 ("palpitations")
    r1 = next(r for r in doc.relations if r.id == "R1")
    assert (ents[r1.head].text, ents[r1.tail].text) == ("symptoms", "palpitations")


def test_chia_problems_are_listed_and_the_rest_read(chia):
    docs = chia.documents
    assert len(docs) == 2_000
    problems = [str(p) for p in chia.problems]
    assert len(problems) == 14
    skipped = [p for p in problems if p.endswith("skipped")]
    assert len(skipped) == 3
    wrong = "NCT03460002_inc.ann:6: T5: annotated text 'Person Surveillance Site'"
    assert any(wrong in p for p in skipped)
    assert sum("trimmed" in p for p in problems) == 11
    # 44,616 T lines less the 3 skipped; R lines + `*` groups as in SOURCE.md
    assert sum(len(d.entities) for d in docs) == 44_616 - 3
    groups = sum(len(d.meta.get("equivalences", [])) for d in docs)
    pairs = sum(len(g["members"]) - 1 for d in docs for g in d.meta.get("equivalences", []))
    assert sum(len(d.relations) for d in docs) - pairs + groups == 25_168
    assert all(d.consistency_problems() == [] for d in docs)
