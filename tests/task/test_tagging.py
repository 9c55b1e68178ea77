import torch

from fedmedlora.data.document import Document
from fedmedlora.evaluation.metrics import score_document
from fedmedlora.model.loading import load_tokenizer
from fedmedlora.task.tagging import LabelSet, decode, encode, flat_entities, link_nearest
from tests.fixtures import note


def test_bio_round_trip_on_flat_gold_is_exact(schema):
    tok = load_tokenizer("minilm-l6")
    labels = LabelSet.for_schema(schema)
    doc = note(3)
    enc = encode(doc.text, doc.entities, tok, labels)
    assert enc.dropped == 0
    ents = decode(enc.offsets, enc.labels, doc.text, labels)
    pred = Document(id=doc.id, text=doc.text, entities=ents, relations=[])
    assert score_document(doc, pred).summary()["entity_strict_f1"] == 1.0
    first = next(i for i, (s, _) in enumerate(enc.offsets) if s == doc.entities[0].start)
    assert labels.labels[enc.labels[first]] == "B-problem"
    assert enc.labels[0] == -100  # [CLS]


def test_nested_mentions_keep_the_longest(schema):
    text = "left lower lobe pneumonia"
    doc = Document(
        id="x",
        text=text,
        entities=[
            {"id": "a", "type": "bodyloc", "start": 0, "end": 15, "text": "left lower lobe"},
            {"id": "b", "type": "problem", "start": 0, "end": 25, "text": text},
        ],
    )
    kept, dropped = flat_entities(doc.entities)
    assert [e.id for e in kept] == ["b"] and dropped == 1


def test_allowed_labels_mask_unannotated_types(schema):
    labels = LabelSet.for_schema(schema)
    mask = labels.allowed(["drug"])
    assert mask.sum() == 3 and mask[0] and mask[labels.begin("drug")]
    assert not mask[labels.begin("problem")]
    assert len(labels) == 1 + 2 * len(schema.entity_types) == mask.numel()


def test_decode_breaks_on_o_and_type_changes(schema):
    labels = LabelSet.for_schema(schema)
    text = "aspirin heparin daily"
    offsets = [(0, 0), (0, 7), (8, 15), (16, 21), (0, 0)]
    b_drug, i_drug = labels.begin("drug"), labels.begin("drug") + 1
    tags = [-100, b_drug, i_drug, labels.begin("frequency") + 1, -100]
    ents = decode(offsets, tags, text, labels)
    assert [(e.type, e.text) for e in ents] == [("drug", "aspirin heparin"), ("frequency", "daily")]
    tags = [-100, b_drug, 0, i_drug, -100]
    assert [e.text for e in decode(offsets, tags, text, labels)] == ["aspirin", "daily"]


def test_nearest_rule_links_modifiers_to_compatible_mains(schema):
    doc = note(0)
    rels = link_nearest(doc.entities, schema, ["modifies"])
    by_id = doc.entity_by_id()
    pairs = {(by_id[r.head].text, by_id[r.tail].text) for r in rels}
    drug = next(e for e in doc.entities if e.type == "drug")
    dose = next(e for e in doc.entities if e.type == "dosage")
    assert (dose.text, drug.text) in pairs
    assert all(schema.can_modify(by_id[r.head].type, by_id[r.tail].type) for r in rels)
    assert link_nearest(doc.entities, schema, []) == []
    assert torch.is_tensor(LabelSet.for_schema(schema).allowed([]))
