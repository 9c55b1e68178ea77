import json

import pytest
import typer
from typer.testing import CliRunner

from fedmedlora.cli.data_cmd import data_app

app = typer.Typer()
app.add_typer(data_app, name="data")


@app.callback()
def _root() -> None:
    """Stand-in for the main CLI, which registers `data_app` the same way."""


runner = CliRunner()


def _stats(*args: str, code: int = 0) -> dict:
    """The JSON report; `code` 2 when the input has problems (the report comes first)."""
    result = runner.invoke(app, ["data", "stats", *args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_maccrobat_stats(shared_data):
    stats = _stats(str(shared_data / "maccrobat" / "MACCROBAT2020"), "--format", "brat")
    assert stats["documents"] == 200
    assert stats["entities"] == 25_189 and len(stats["entity_types"]) == 41
    assert stats["entity_types"]["Lab_value"] == 2_848
    groups = sum(stats["equivalence_groups"].values())
    # SOURCE.md's 18,330 counts each `*` line once; we store its consecutive pairs
    assert stats["relations"] - stats["equivalence_pairs"] + groups == 18_330
    assert stats["relation_types"]["MODIFY"] == 11_571
    assert stats["problems"] == []


def test_maccrobat_table_output(shared_data):
    result = runner.invoke(app, ["data", "stats", str(shared_data / "maccrobat" / "MACCROBAT2020")])
    assert result.exit_code == 0
    assert "200 documents" in result.stdout and "25,189 entities (41 types" in result.stdout
    assert "Diagnostic_procedure" in result.stdout and "11,571" in result.stdout
    assert "0 problem(s) found" in result.stdout


def test_chia_problems_listed_with_file_and_line(shared_data):
    path = shared_data / "chia" / "chia_without_scope"
    result = runner.invoke(app, ["data", "stats", str(path), "--format", "brat"])
    assert result.exit_code == 2
    assert "14 problem(s) found" in result.stdout
    assert f"{path}/NCT03460002_inc.ann:6: T5: annotated text" in result.stdout
    assert f"{path}/NCT02590822_inc.ann:17: T5:" in result.stdout
    stats = _stats(str(path), code=2)
    assert stats["documents"] == 2_000 and stats["entities"] == 44_613
    # the same criteria text under two trial ids: a warning, not a problem
    assert len(stats["warnings"]) == 56
    assert "NCT03620526_exc has the same text as document NCT01078051_exc" in stats["warnings"][-1]


def test_ncbi_train_quirks(shared_data):
    stats = _stats(str(shared_data / "ncbi_disease" / "NCBItrainset_corpus.txt"), code=2)
    assert len(stats["problems"]) == 2
    assert "document 10923035: mention text" in stats["problems"][0]
    assert "document 8528200 already read" in stats["problems"][1]


def test_bc5cdr_with_mapping(shared_data):
    path = str(shared_data / "bc5cdr" / "CDR_TrainingSet.PubTator.txt")
    raw = _stats(path, "--format", "pubtator")
    assert raw["documents"] == 500
    assert raw["entity_types"] == {"Chemical": 5_203, "Disease": 4_182}
    assert raw["document_relations"] == {"CID": 1_038}
    mapped = _stats(path, "--mapping", "bc5cdr")
    assert mapped["entity_types"] == {"drug": 5_203, "problem": 4_182}
    assert mapped["dropped"] == {}


def test_maccrobat_mapping_reports_drops(shared_data):
    stats = _stats(str(shared_data / "maccrobat" / "MACCROBAT2020"), "-m", "maccrobat")
    assert stats["relation_types"] == {"modifies": 6_432}
    assert stats["dropped"]["entity Detailed_description: type not mapped"] == 2_920
    assert stats["equivalence_groups"] == {}  # OVERLAP is not mapped: its groups go too


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/corpus"], "error: /no/such/corpus: no such file or directory"),
        (["{data}", "--format", "conll"], "error: unknown format 'conll'"),
        (["{data}", "--mapping", "nope"], "error: mapping 'nope' is neither a built-in"),
    ],
)
def test_bad_input_is_one_clear_error(shared_data, args, message):
    args = [a.replace("{data}", str(shared_data / "bc5cdr")) for a in args]
    result = runner.invoke(app, ["data", "stats", *args])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.stderr and "Traceback" not in result.output


def test_bioc_detected_and_problem_lines_shown(tmp_path):
    path = tmp_path / "tiny.xml"
    path.write_text(
        "<collection>\n<document><id>1</id>\n"
        "<passage><offset>0</offset><text>Aspirin helps.</text>\n"
        '<annotation id="a"><infon key="type">Chemical</infon>'
        '<location offset="0" length="7"/><text>Aspirin</text></annotation>\n'
        '<annotation id="b"><infon key="type">Chemical</infon>'
        '<location offset="8" length="5"/><text>hurts</text></annotation>\n'
        "</passage></document>\n</collection>\n",
        encoding="utf-8",
    )
    stats = _stats(str(path), "--mapping", "bc5cdr", code=2)
    assert stats["entity_types"] == {"drug": 1}
    assert stats["problems"] == [
        f"{path}:5: document 1: annotation b text 'hurts' does not match the text at "
        "[(8, 13)] 'helps'; skipped"
    ]
