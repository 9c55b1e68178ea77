"""Every reader against the bad files in `bad_inputs/`: each problem is reported once with
its file, line and reason, nothing raises, and the good items of the same file are kept.
The same files through `fedmedlora data stats`: exit status 2, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedmedlora.cli.data_cmd import data_app
from fedmedlora.data.formats.brat import read_brat
from fedmedlora.data.formats.plaintext import read_text_notes
from fedmedlora.data.formats.readers import read_any
from fedmedlora.data.mapping import load_mapping
from fedmedlora.errors import ConfigError

BAD = Path(__file__).parent / "bad_inputs"

# file, [(file the problem names, line, reason substring)], {kept id: entities kept}
CASES: list[tuple[str, list[tuple[str, int, str]], dict[str, int]]] = [
    ("jsonl/unknown_field.jsonl", [("", 2, 'unknown field "entites"')], {"good": 3}),
    (
        "jsonl/unknown_nested_field.jsonl",
        [("", 2, 'unknown field "entities.1.tpye"')],
        {"good": 3},
    ),
    ("jsonl/unknown_type.jsonl", [("", 2, "entity T1 has unknown type 'drugz'")], {"good": 3}),
    (
        "jsonl/forbidden_relation.jsonl",
        [("", 2, "relation R1: 'dosage' (T2) cannot modify 'problem' (T3)")],
        {"good": 3},
    ),
    (
        "jsonl/unknown_relation_type.jsonl",
        [("", 2, "relation R1 has unknown type 'causes'")],
        {"good": 3},
    ),
    ("jsonl/bom.jsonl", [("", 1, "byte-order mark")], {"good": 3, "second": 3}),
    (
        "jsonl/not_utf8.jsonl",
        [("", 2, "not UTF-8: byte 0xff at column 52; line skipped")],
        {"good": 3, "third": 3},
    ),
    ("jsonl/deep_nesting.jsonl", [("", 2, "JSON nested too deeply")], {"good": 3}),
    (
        "jsonl/offsets_beyond_text.jsonl",
        [("", 2, "entity T3 ends at 90, beyond the text (35 characters)")],
        {"good": 3},
    ),
    (
        "jsonl/text_mismatch.jsonl",
        [("", 2, "slices the text to 'chest pain', but its text is 'chest'")],
        {"good": 3},
    ),
    ("jsonl/end_before_start.jsonl", [("", 2, "end 8 must be after start 13")], {"good": 3}),
    ("jsonl/truncated_line.jsonl", [("", 2, "not valid JSON: Unterminated string")], {"good": 3}),
    (
        "jsonl/superscript_offset.jsonl",
        [("", 2, "entities.1.start: Input should be a valid integer")],
        {"good": 3},
    ),
    ("brat/bom_ann.ann", [("", 1, "byte-order mark (U+FEFF); ignored")], {"bom_ann": 3}),
    ("brat/bom_txt.ann", [("brat/bom_txt.txt", 1, "read as a space")], {"bom_txt": 2}),
    ("brat/not_utf8_ann.ann", [("", 2, "not UTF-8: byte 0xff at column 18")], {"not_utf8_ann": 2}),
    ("brat/not_utf8_txt.ann", [("brat/not_utf8_txt.txt", 2, "byte 0xe9 at column 11")], {}),
    ("brat/arabic_digits.ann", [("", 2, "T2: bad span '٨ ١٣'")], {"arabic_digits": 2}),
    ("brat/superscript_offset.ann", [("", 2, "T2: bad span '8 1²'")], {"superscript_offset": 2}),
    (
        "brat/span_beyond_text.ann",
        [("", 2, "span 80 85 is empty or beyond")],
        {"span_beyond_text": 2},
    ),
    ("brat/text_mismatch.ann", [("", 2, "'80 mg' does not match")], {"text_mismatch": 2}),
    ("brat/dangling_relation.ann", [("", 4, "R1: refers to 'T9'")], {"dangling_relation": 3}),
    (
        "pubtator/superscript_offset.pubtator",
        [("", 3, "offsets must be whole numbers in ASCII digits, got '²' '7'")],
        {"1": 1, "2": 2},
    ),
    ("pubtator/bom.pubtator", [("", 1, "byte-order mark")], {"1": 1, "2": 2}),
    ("pubtator/not_utf8.pubtator", [("", 3, "not UTF-8: byte 0xff")], {"1": 1, "2": 2}),
    (
        "pubtator/mention_mismatch.pubtator",
        [("", 3, "'Aspirine' does not match")],
        {"1": 1, "2": 2},
    ),
    ("pubtator/no_title.pubtator", [("", 1, "document 1 has no |t| title line")], {"2": 2}),
    ("pubtator/offset_beyond_text.pubtator", [("", 3, "mention [40,90)")], {"1": 1, "2": 2}),
    ("bioc/bom.xml", [], {"1": 2}),  # a BOM is legal XML
    ("bioc/truncated.xml", [("", 10, "not well-formed XML: unclosed token")], {"1": 2}),
    ("bioc/not_utf8.xml", [("", 9, "not well-formed XML: not well-formed")], {"1": 2}),
    ("bioc/superscript_offset.xml", [("", 5, "bad location {'offset': '²'")], {"1": 1, "2": 2}),
    ("bioc/arabic_digits.xml", [("", 5, "annotation a: bad location")], {"1": 1}),
    ("bioc/deep_nesting.xml", [("", 8, "document 2 has no passage or sentence text")], {"1": 2}),
    ("plaintext/bom.txt", [("", 1, "byte-order mark")], {"bom": 0}),
    ("plaintext/not_utf8.txt", [("", 2, "byte 0xe9 at column 7; file skipped")], {}),
]


def _read(path: Path, schema):
    kind = path.parent.name
    if kind == "brat":
        return read_brat(path)
    if kind == "plaintext":
        return read_text_notes(path)
    return read_any(path, None, schema)


@pytest.mark.parametrize(("name", "problems", "kept"), CASES, ids=[c[0] for c in CASES])
def test_reader_reports_each_problem_and_keeps_the_rest(name, problems, kept, schema):
    path = BAD / name
    result = _read(path, schema)
    want = [(str(BAD / (f or name)), line, reason) for f, line, reason in problems]
    got = [(p.path, p.line, p.reason) for p in result.problems]
    assert len(got) == len(want), got
    for (path_, line, reason), (gpath, gline, greason) in zip(want, got, strict=True):
        assert (gpath, gline) == (path_, line) and reason in greason, got
    assert {d.id: len(d.entities) for d in result.documents} == kept
    for doc in result.documents:
        assert doc.consistency_problems() == []
        assert "\ufeff" not in doc.text and "\ufffd" not in doc.text


MAPPINGS = [
    ("not_utf8.yaml", ":5: not UTF-8: byte 0xe9 at column 6"),
    ("unknown_field.yaml", ":3: invalid mapping: entities: Field required; entitys: unknown field"),
    ("unknown_target_type.yaml", ": types not in schema 'clinical': entities ['illness']"),
    ("bad_yaml.yaml", ":5: not valid YAML: expected ',' or ']'"),
    ("deep_nesting.yaml", ": YAML nested too deeply"),
]


@pytest.mark.parametrize(("name", "message"), MAPPINGS, ids=[m[0] for m in MAPPINGS])
def test_bad_mapping_is_one_line_naming_file_and_line(name, message):
    path = BAD / "mappings" / name
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    assert str(exc.value).startswith(f"{path}{message}")
    assert "\n" not in str(exc.value)


def test_suite_covers_every_reader_with_enough_files():
    files = [p for p in BAD.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} == {
        "jsonl",
        "brat",
        "pubtator",
        "bioc",
        "plaintext",
        "mappings",
    }
    named = {c[0] for c in CASES} | {f"mappings/{m[0]}" for m in MAPPINGS}
    # every file is in a table (brat .txt files through their .ann)
    for p in files:
        rel = p.relative_to(BAD).as_posix()
        assert rel in named or rel.replace(".txt", ".ann") in named, rel
    assert len(named) >= 24


app = typer.Typer()
app.add_typer(data_app, name="data")


@app.callback()
def _root() -> None:
    """Stand-in for the main CLI."""


CLI_CASES = [c for c in CASES if not c[0].startswith("plaintext/")]


@pytest.mark.parametrize(("name", "problems", "kept"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_data_stats_exits_2_with_one_line_per_problem(name, problems, kept):
    path = BAD / name
    result = CliRunner().invoke(app, ["data", "stats", str(path)])
    assert result.exit_code == (2 if problems else 0), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{len(problems)} problem(s) found" in result.stdout
    lines = result.stdout.splitlines()
    for f, line, reason in problems:
        where = f"{BAD / (f or name)}:{line}: "
        assert any(out.startswith(where) and reason in out for out in lines), (where, lines)
    assert f"{len(kept)} documents" in result.stdout


def test_data_stats_warns_about_the_same_text_under_two_ids(tmp_path):
    good = (BAD / "jsonl" / "unknown_field.jsonl").read_text().splitlines()[0]
    path = tmp_path / "twice.jsonl"
    path.write_text(good + "\n" + good.replace('"id": "good"', '"id": "copy"') + "\n")
    result = CliRunner().invoke(app, ["data", "stats", str(path)])
    assert result.exit_code == 0  # a warning, not a problem
    assert f"warning: {path}:2: document copy has the same text as document good at {path}:1" in (
        result.stdout
    )


def test_format_detection_looks_past_a_bom(tmp_path):
    from fedmedlora.data.formats.readers import detect_format

    for name, fmt in (("bioc/bom.xml", "bioc"), ("jsonl/bom.jsonl", "jsonl")):
        unnamed = tmp_path / fmt  # no suffix: the first line decides
        unnamed.write_bytes((BAD / name).read_bytes())
        assert detect_format(unnamed) == fmt
