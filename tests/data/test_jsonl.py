import json

import pytest

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats.jsonl import load_jsonl, read_jsonl, write_jsonl
from fedmedlora.errors import AnnotationError

TEXT = "Started metoprolol 25 mg PO daily for hypertension."


def _doc(**kw) -> Document:
    base = dict(
        id="n1",
        text=TEXT,
        site="a",
        entities=[
            Entity(id="T1", type="drug", start=8, end=18, text="metoprolol"),
            Entity(id="T2", type="dosage", start=19, end=24, text="25 mg"),
            Entity(id="T3", type="problem", start=38, end=50, text="hypertension"),
        ],
        relations=[Relation(id="R1", type="modifies", head="T2", tail="T1")],
    )
    base.update(kw)
    return Document(**base)


def test_round_trip_preserves_everything(tmp_path, schema):
    docs = [_doc(), _doc(id="n2", meta={"split": "test"})]
    discontinuous = Entity(
        id="T9",
        type="problem",
        start=0,
        end=18,
        text="Started metoprolol",
        fragments=((0, 7), (8, 18)),
    )
    docs.append(_doc(id="n3", entities=[*_doc().entities, discontinuous]))
    path = tmp_path / "a.jsonl"
    assert write_jsonl(docs, path, schema) == 3
    back = load_jsonl(path, schema)
    assert back == docs
    first = json.loads(path.read_text().splitlines()[0])
    assert first["schema_version"] == 1


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_every_bad_line_is_reported_with_file_line_and_reason(tmp_path, schema):
    good = {"schema_version": 1, **_doc().model_dump(mode="json", exclude_none=True)}
    bad_offsets = json.loads(json.dumps(good))
    bad_offsets["id"] = "n2"
    bad_offsets["entities"][0]["start"] = 9
    dangling = json.loads(json.dumps(good))
    dangling["id"] = "n3"
    dangling["relations"][0]["tail"] = "T7"
    unknown_type = json.loads(json.dumps(good))
    unknown_type["id"] = "n4"
    unknown_type["entities"][2]["type"] = "disease"
    wrong_direction = json.loads(json.dumps(good))
    wrong_direction["id"] = "n5"
    wrong_direction["relations"][0].update(head="T1", tail="T2")
    no_version = {k: v for k, v in good.items() if k != "schema_version"} | {"id": "n6"}
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(x) for x in (good, bad_offsets, dangling)]
    lines.append("{not json")
    lines += [json.dumps(x) for x in (unknown_type, wrong_direction, no_version, good)]
    _write_lines(path, lines)
    result = read_jsonl(path, schema)
    assert [d.id for d in result.documents] == ["n1"]
    by_line = {p.line: p.reason for p in result.problems}
    assert set(by_line) == {2, 3, 4, 5, 6, 7, 8}
    assert "slices the text to 'etoprolol'" in by_line[2]
    assert "unknown entity 'T7'" in by_line[3]
    assert "not valid JSON" in by_line[4]
    assert "unknown type 'disease'" in by_line[5]
    assert "'drug' (T1) cannot modify 'dosage'" in by_line[6]
    assert "schema_version" in by_line[7]
    assert "already used on line 1" in by_line[8]
    with pytest.raises(AnnotationError) as info:
        load_jsonl(path, schema)
    assert f"{path}:2:" in str(info.value)


def test_without_schema_only_consistency_is_checked(tmp_path):
    doc = _doc(
        entities=[Entity(id="T1", type="anything", start=8, end=18, text="metoprolol")],
        relations=[],
    )
    path = tmp_path / "x.jsonl"
    write_jsonl([doc], path)
    assert load_jsonl(path)[0].entities[0].type == "anything"


def test_write_refuses_invalid_and_keeps_existing_file(tmp_path, schema):
    path = tmp_path / "out.jsonl"
    write_jsonl([_doc()], path, schema)
    before = path.read_text()
    broken = _doc(
        id="n2", entities=[Entity(id="T1", type="drug", start=0, end=4, text="nope")], relations=[]
    )
    with pytest.raises(AnnotationError, match=r"out\.jsonl:2: document n2"):
        write_jsonl([_doc(), broken], path, schema)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_pydantic_field_errors_name_the_field(tmp_path):
    path = tmp_path / "f.jsonl"
    _write_lines(
        path,
        [
            json.dumps(
                {
                    "schema_version": 1,
                    "id": "x",
                    "text": "abc",
                    "entities": [{"id": "T1", "type": "drug", "start": 2, "end": 1, "text": "b"}],
                }
            )
        ],
    )
    (problem,) = read_jsonl(path).problems
    assert problem.line == 1 and "end 1 must be after start 2" in problem.reason


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    result = read_jsonl(tmp_path / "none.jsonl")
    assert result.documents == [] and "file not found" in result.problems[0].reason
