import pytest

from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.data.schema import load_schema
from fedmedlora.data.settings import DataSettings, SiteSource
from fedmedlora.data.sites import load_source, sample_windows, split_documents
from fedmedlora.errors import AnnotationError, ConfigError
from tests.fixtures import notes


def test_split_is_seeded_by_id_not_order():
    docs = notes(20)
    train, test = split_documents(docs, 0.25, seed=1)
    assert len(test) == 5 and not {d.id for d in train} & {d.id for d in test}
    again = split_documents(list(reversed(docs)), 0.25, seed=1)[1]
    assert {d.id for d in again} == {d.id for d in test}
    assert {d.id for d in split_documents(docs, 0.25, seed=2)[1]} != {d.id for d in test}


def test_windows_are_seeded_and_keep_their_annotations():
    windows = sample_windows(notes(6), 5, max_chars=60, seed=0)
    assert len(windows) == 5 and windows == sample_windows(notes(6), 5, 60, seed=0)
    for w in windows:
        assert w.consistency_problems() == []
        assert "#" in w.id and w.meta["source_document"] in w.id
    assert sum(len(w.entities) for w in windows) > 0


def test_several_train_files_and_declared_types(tmp_path, schema):
    write_jsonl(notes(6), tmp_path / "a.jsonl")
    write_jsonl(notes(4, offset=10), tmp_path / "b.jsonl")
    source = SiteSource(
        name="h",
        train=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
        entity_types=["drug", "dosage"],
        relation_types=["modifies"],
        test_fraction=0.2,
    )
    site = load_source(source, schema, seed=0)
    assert len(site.train) + len(site.test) == 10 and len(site.test) == 2
    assert {e.type for d in site.train for e in d.entities} == {"drug", "dosage"}
    assert all(d.site == "h" for d in site.train)


def test_jsonl_is_strict_and_other_formats_report_problems(tmp_path, schema, shared_data):
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:1"):
        load_source(SiteSource(name="x", train=str(tmp_path / "bad.jsonl")), schema, 0)
    ncbi = SiteSource(
        name="ncbi",
        train=str(shared_data / "ncbi_disease/NCBItrainset_corpus.txt"),
        mapping="ncbi_disease",
        test_windows=10,
    )
    site = load_source(ncbi, schema, 0)
    assert any("10923035" in p.reason for p in site.problems)
    assert len(site.test) == 10 and site.spec.entity_types == ["problem"]


def test_unusable_sites_fail_clearly(tmp_path, schema):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no usable training documents"):
        load_source(SiteSource(name="x", train=str(tmp_path / "empty.jsonl")), schema, 0)
    with pytest.raises(ConfigError, match="types not in schema"):
        load_source(
            SiteSource(name="x", train=str(tmp_path / "empty.jsonl"), entity_types=["disease"]),
            schema,
            0,
        )


def test_corrupted_labels_change_a_seeded_share_of_training_types_only():
    from fedmedlora.data.noise import corrupt_entity_types
    from fedmedlora.data.sites import load_site

    docs = notes(10)
    types = ["problem", "drug", "dosage"]
    eligible = sum(e.type in types for d in docs for e in d.entities)
    bad, changed = corrupt_entity_types(docs, 0.4, types, seed=1)
    assert changed == round(0.4 * eligible)
    flipped = [
        (a, b)
        for d, c in zip(docs, bad, strict=True)
        for a, b in zip(d.entities, c.entities, strict=True)
        if a.type != b.type
    ]
    assert len(flipped) == changed
    assert all(a.type in types and b.type in types and a.spans == b.spans for a, b in flipped)
    assert corrupt_entity_types(docs, 0.4, types, seed=1)[0] == bad  # seeded
    assert corrupt_entity_types(docs, 0.0, types, seed=1) == (docs, 0)

    data = DataSettings(
        synthetic={
            "sites": ["riverside", "lakeside"],
            "train_docs": 6,
            "test_docs": 2,
            "corrupt_labels": {"lakeside": 0.4},
        }
    )
    clean_data = DataSettings(
        synthetic={"sites": ["riverside", "lakeside"], "train_docs": 6, "test_docs": 2}
    )
    clean = load_site(clean_data, "lakeside", load_schema(), 0)
    noisy = load_site(data, "lakeside", load_schema(), 0)
    assert noisy.corrupted_labels > 0 and noisy.test == clean.test
    assert [e.type for d in noisy.train for e in d.entities] != [
        e.type for d in clean.train for e in d.entities
    ]
    assert load_site(data, "riverside", load_schema(), 0).corrupted_labels == 0


# --- what a site's files may not hide: unknown types, forbidden relations, repeats -------


def test_jsonl_site_refuses_types_the_schema_does_not_define(tmp_path, schema):
    path = tmp_path / "t.jsonl"
    write_jsonl(notes(3), path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"type": "drug"', '"type": "drugz"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"t\.jsonl:2: document a-1: entity T2 has unknown"):
        load_source(SiteSource(name="x", train=str(path)), schema, 0)


def test_lenient_site_reports_unknown_types_and_forbidden_relations(tmp_path, schema, caplog):
    text = "Aspirin 81 mg for chest pain and Chemical X."
    (tmp_path / "n.txt").write_text(text)
    (tmp_path / "n.ann").write_text(
        "T1\tdrug 0 7\tAspirin\nT2\tdosage 8 13\t81 mg\nT3\tproblem 18 28\tchest pain\n"
        "T4\tChemical 33 43\tChemical X\n"
        "R1\tmodifies Arg1:T2 Arg2:T1\nR2\tmodifies Arg1:T2 Arg2:T3\n"
    )
    for k in range(2):  # a second note so there is something to split off for testing
        (tmp_path / f"m{k}.txt").write_text(text)
        (tmp_path / f"m{k}.ann").write_text("T1\tdrug 0 7\tAspirin\n")
    source = SiteSource(name="b", train=str(tmp_path), format="brat", test_fraction=0.4)
    site = load_source(source, schema, seed=0)
    ann = str(tmp_path / "n.ann")
    assert [(p.path, p.reason) for p in site.problems] == [
        (
            ann,
            "document n: 1 entity of type 'Chemical', which schema 'clinical' does not "
            "define, left out (give a mapping?)",
        ),
        (
            ann,
            "document n: relation R2 'dosage' cannot modify 'problem' in schema 'clinical'; "
            "left out",
        ),
    ]
    note = next(d for d in site.train + site.test if d.id == "n")
    assert {e.type for e in note.entities} == {"drug", "dosage", "problem"}
    assert [r.id for r in note.relations] == ["R1"]
    assert f"site b: problem: {ann}: document n: relation R2" in caplog.text


def test_types_the_site_does_not_list_are_warned_about_not_silently_dropped(tmp_path, schema):
    write_jsonl(notes(4), tmp_path / "a.jsonl")
    source = SiteSource(name="s", train=str(tmp_path / "a.jsonl"), entity_types=["drug"])
    site = load_source(source, schema, seed=0)
    assert site.problems == []
    reasons = [w.reason for w in site.warnings]
    assert (
        "4 entities of type 'dosage' (the first here), which site s does not list, left out "
        "of training and scoring"
    ) in reasons
    assert {w.line for w in site.warnings} == {1}
    assert any("relations of type 'modifies'" in r for r in reasons)
    assert {e.type for d in site.train for e in d.entities} == {"drug"}


def test_repeats_across_files_and_between_train_and_test_are_flagged(tmp_path, schema):
    write_jsonl(notes(4), tmp_path / "a.jsonl")
    write_jsonl(notes(3, offset=2), tmp_path / "b.jsonl")  # a-2, a-3 again
    both = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    with pytest.raises(
        AnnotationError, match=r"b\.jsonl:1: document a-2 already read at .*a\.jsonl:3"
    ):
        load_source(SiteSource(name="x", train=both), schema, 0)
    lenient = load_source(SiteSource(name="x", train=both, strict=False), schema, 0)
    assert len(lenient.train) + len(lenient.test) == 5  # a-0..a-4, each once
    assert [p.line for p in lenient.problems] == [1, 2]

    # the test split holds a training document's text under another id
    copy = notes(1)[0].model_copy(update={"id": "copy-of-a-0"})
    write_jsonl([copy, *notes(2, offset=10)], tmp_path / "test.jsonl")
    test_file = str(tmp_path / "test.jsonl")
    with pytest.raises(AnnotationError, match="test document copy-of-a-0 has the same text as"):
        load_source(SiteSource(name="x", train=both[0], test=test_file), schema, 0)
    site = load_source(SiteSource(name="x", train=both[0], test=test_file, strict=False), schema, 0)
    assert [d.id for d in site.test] == ["a-10", "a-11"]
    (problem,) = site.problems
    assert problem.path == test_file and problem.line == 1
    assert f"train document a-0 at {both[0]}:1; this copy left out" in problem.reason


def test_a_seeded_split_that_puts_one_text_on_both_sides_is_warned_about(tmp_path, schema):
    docs = notes(6)
    copies = [d.model_copy(update={"id": f"copy-{d.id}"}) for d in docs]
    write_jsonl(docs + copies, tmp_path / "a.jsonl")
    site = load_source(
        SiteSource(name="x", train=str(tmp_path / "a.jsonl"), test_fraction=0.5), schema, 0
    )
    train_texts = {d.text for d in site.train}
    straddling = [d.id for d in site.test if d.text in train_texts]
    assert straddling  # the split keeps ids apart, not texts
    overlap = [w.reason for w in site.warnings if "(seeded split)" in w.reason]
    assert [r.split()[2] for r in overlap] == straddling
    assert len([w for w in site.warnings if "same text as document" in w.reason]) == 6
