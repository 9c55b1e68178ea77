"""Markup: serialize -> parse is lossless on gold, and parsing never fails on bad output."""

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.evaluation.metrics import score_document
from fedmedlora.task.markup import parse, serialize

TEXT = "Started metoprolol 25 mg PO for chest pain, WBC <4.0 & rising."


def E(i, t, s, e):
    return Entity(id=i, type=t, start=s, end=e, text=TEXT[s:e])


ENTS = [
    E("T1", "drug", 8, 18),
    E("T2", "dosage", 19, 24),
    E("T3", "route", 25, 27),
    E("T4", "problem", 32, 42),
    E("T5", "bodyloc", 32, 37),
    E("T6", "test", 44, 47),
    E("T7", "labvalue", 48, 52),
    E("T8", "course", 55, 61),
]
RELS = [
    Relation(id="R1", type="modifies", head="T2", tail="T1"),
    Relation(id="R2", type="modifies", head="T3", tail="T1"),
    Relation(id="R3", type="modifies", head="T5", tail="T4"),
    Relation(id="R4", type="modifies", head="T7", tail="T6"),
]


def test_markup_shape(schema):
    out = serialize(TEXT, ENTS, RELS, schema)
    assert out.markup == (
        'Started <span class="drug" id="1">metoprolol</span> '
        '<span class="dosage" ref="1">25 mg</span> <span class="route" ref="1">PO</span> for '
        '<span class="problem" id="2"><span class="bodyloc" ref="2">chest</span> pain</span>, '
        '<span class="test" id="3">WBC</span> <span class="labvalue" ref="3">&lt;4.0</span> '
        '&amp; <span class="course">rising</span>.'
    )
    assert not out.dropped_entities and not out.dropped_relations


def test_round_trip_on_gold_is_perfect(schema):
    out = serialize(TEXT, ENTS, RELS, schema)
    parsed = parse(out.markup, TEXT, schema)
    assert not parsed.issues
    gold = Document(id="d", text=TEXT, entities=ENTS, relations=RELS)
    pred = Document(id="d", text=TEXT, entities=parsed.entities, relations=parsed.relations)
    summary = score_document(gold, pred).summary()
    assert summary["entity_strict_f1"] == 1.0 and summary["relation_strict_f1"] == 1.0


def test_modifier_of_two_mains_and_identical_spans(schema):
    text = "aspirin and heparin daily"
    ents = [
        Entity(id="a", type="drug", start=0, end=7, text="aspirin"),
        Entity(id="b", type="drug", start=12, end=19, text="heparin"),
        Entity(id="c", type="frequency", start=20, end=25, text="daily"),
        Entity(id="d", type="treatment", start=0, end=7, text="aspirin"),
    ]
    rels = [
        Relation(id="r1", type="modifies", head="c", tail="a"),
        Relation(id="r2", type="modifies", head="c", tail="b"),
    ]
    out = serialize(text, ents, rels, schema)
    assert 'ref="1 3"' in out.markup  # drug and treatment on the same span nest
    parsed = parse(out.markup, text, schema)
    assert {(e.type, e.start, e.end) for e in parsed.entities} == {
        (e.type, e.start, e.end) for e in ents
    }
    assert len(parsed.relations) == 2


def test_crossing_spans_are_reported_not_corrupted(schema):
    text = "left lower lobe pneumonia"
    ents = [
        Entity(id="a", type="bodyloc", start=0, end=15, text="left lower lobe"),
        Entity(id="b", type="problem", start=11, end=25, text="lobe pneumonia"),
    ]
    out = serialize(text, ents, [], schema)
    assert [e.id for e in out.dropped_entities] == ["b"]
    assert parse(out.markup, text, schema).entities[0].text == "left lower lobe"


def test_unbalanced_and_invented_tags(schema):
    out = (
        'Started <span class="drug" id="1">metoprolol</span></span> '
        '<span class="medication">25 mg</span> PO for <span class="problem">chest pain, '
        "WBC <4.0 & rising."
    )
    parsed = parse(out, TEXT, schema)
    assert [(e.type, e.text) for e in parsed.entities] == [("drug", "metoprolol")]
    assert parsed.issues == {"stray_close_tag": 1, "unknown_type": 1, "unclosed_tag": 1}


def test_drifting_output_maps_back_to_source_offsets(schema):
    # The model fixed a typo, dropped "PO" and changed spacing.
    source = "Started metoprlol 25 mg PO for  chest pain."
    out = (
        'Started <span class="drug" id="1">metoprolol</span> '
        '<span class="dosage" ref="1">25 mg</span> for <span class="problem">chest pain</span>.'
    )
    parsed = parse(out, source, schema)
    got = {(e.type, e.text) for e in parsed.entities}
    assert got == {("drug", "metoprlol"), ("dosage", "25 mg"), ("problem", "chest pain")}
    for e in parsed.entities:
        assert source[e.start : e.end] == e.text
    assert parsed.issues["text_drift"] == 1 and len(parsed.relations) == 1


def test_hallucinated_span_and_bad_refs_are_dropped(schema):
    source = "No fever."
    out = (
        '<span class="negation" ref="1">No</span> <span class="problem" id="1">fever</span>. '
        '<span class="drug" id="2">vancomycin</span> '
        '<span class="dosage" ref="7">x</span>'
    )
    parsed = parse(out, source, schema)
    assert [(e.type, e.text) for e in parsed.entities] == [("negation", "No"), ("problem", "fever")]
    assert len(parsed.relations) == 1
    assert parsed.issues["unlocatable_span"] >= 1


def test_disallowed_links_and_restricted_types(schema):
    source = "fever 10 mg"
    out = '<span class="problem" id="1">fever</span> <span class="dosage" ref="1">10 mg</span>'
    parsed = parse(out, source, schema)
    assert parsed.relations == [] and parsed.issues["disallowed_relation"] == 1
    only_problem = parse(out, source, schema, allowed_types=["problem"])
    assert [e.type for e in only_problem.entities] == ["problem"]


def test_garbage_never_raises(schema):
    for out in ["", "<span", "</span>" * 3, "<span class=>x</span>", "<<<>>>", "<span id=1>a"]:
        parse(out, "some text", schema)
