from collections import Counter

import pytest

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats.brat import read_brat
from fedmedlora.data.formats.pubtator import read_pubtator
from fedmedlora.data.mapping import (
    BUILTIN_MAPPINGS,
    apply_mapping,
    load_mapping,
    map_documents,
)
from fedmedlora.errors import ConfigError

TEXT = "Hb 9.1 low, severe anemia; aspirin 81 mg"


def _doc() -> Document:
    ents = [
        Entity(id="T1", type="Measurement", start=0, end=2, text="Hb"),
        Entity(id="T2", type="Value", start=3, end=6, text="9.1"),
        Entity(id="T3", type="Qualifier", start=12, end=18, text="severe"),
        Entity(id="T4", type="Condition", start=19, end=25, text="anemia"),
        Entity(id="T5", type="Observation", start=19, end=25, text="anemia"),
        Entity(id="T6", type="Drug", start=27, end=34, text="aspirin"),
        Entity(id="T7", type="Drug", start=27, end=34, text="aspirin"),  # duplicate span
        Entity(id="T8", type="Value", start=35, end=40, text="81 mg"),
        Entity(id="T9", type="Negation", start=7, end=10, text="low"),
    ]
    rels = [
        Relation(id="R1", type="Has_value", head="T1", tail="T2"),  # Arg2 is the modifier
        Relation(id="R2", type="Has_qualifier", head="T4", tail="T3"),  # type not mapped
        Relation(id="R3", type="Has_value", head="T5", tail="T2"),  # end dropped
        Relation(id="R4", type="Has_value", head="T7", tail="T8"),  # labvalue -> drug: forbidden
        Relation(id="R5", type="Has_negation", head="T6", tail="T9"),
        Relation(id="R6", type="Has_negation", head="T7", tail="T9"),  # same as R5 after merge
    ]
    return Document(
        id="d",
        text=TEXT,
        entities=ents,
        relations=rels,
        meta={"concepts": {"T7": "C1", "T3": "C2"}, "attributes": [{"id": "A1", "target": "T7"}]},
    )


def test_apply_mapping_renames_drops_orients_and_merges(schema):
    mapping = load_mapping("chia")
    mapped, dropped = apply_mapping(_doc(), mapping, schema)
    assert [(e.id, e.type) for e in mapped.entities] == [
        ("T1", "test"),
        ("T2", "labvalue"),
        ("T4", "problem"),
        ("T6", "drug"),
        ("T8", "labvalue"),
        ("T9", "negation"),
    ]
    assert [(r.id, r.type, r.head, r.tail) for r in mapped.relations] == [
        ("R1", "modifies", "T2", "T1"),
        ("R5", "modifies", "T9", "T6"),
    ]
    assert Counter(dropped) == {
        "entity Qualifier: type not mapped": 1,
        "entity Observation: type not mapped": 1,
        "entity Drug: merged into an identical drug": 1,
        "relation Has_qualifier: type not mapped": 1,
        "relation Has_value: an end was dropped": 1,
        "relation Has_value: schema forbids labvalue -> drug": 1,
        "relation Has_negation: duplicate": 1,
    }
    # metadata follows the merge (T7 -> T6) and forgets dropped entities (T3)
    assert mapped.meta["concepts"] == {"T6": "C1"}
    assert mapped.meta["attributes"] == [{"id": "A1", "target": "T6"}]
    assert mapped.meta["mapping"] == "chia"
    assert mapped.consistency_problems() == []


@pytest.mark.parametrize("name", BUILTIN_MAPPINGS)
def test_builtin_mappings_load_and_declare_sites(name, schema):
    mapping = load_mapping(name)
    assert mapping.corpus == name
    site = mapping.site_spec()
    site.check(schema)
    assert site.name == name and set(site.entity_types) <= set(mapping.entities.values())
    assert mapping.site_spec("hospital-a").name == "hospital-a"


def test_mapping_direction_is_data():
    assert load_mapping("maccrobat").relations["MODIFY"].modifier == "Arg1"
    chia = load_mapping("chia").relations
    assert {chia[t].modifier for t in ("Has_value", "Has_negation", "Has_temporal")} == {"Arg2"}


def test_bad_mappings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_mapping("nope")
    bad_type = tmp_path / "m.yaml"
    bad_type.write_text(
        "corpus: x\nentities: {A: disease}\nsite: {entity_types: [disease]}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="disease"):
        load_mapping(bad_type)
    bad_site = tmp_path / "s.yaml"
    bad_site.write_text(
        "corpus: x\nentities: {A: problem}\nsite: {entity_types: [problem, drug]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="no source type maps to"):
        load_mapping(bad_site)


def _types(docs):
    ents = Counter(e.type for d in docs for e in d.entities)
    pairs = Counter()
    for d in docs:
        by_id = d.entity_by_id()
        pairs.update((by_id[r.head].type, by_id[r.tail].type) for r in d.relations)
    return ents, pairs


def test_maccrobat_after_mapping(shared_data, schema):
    source = read_brat(shared_data / "maccrobat" / "MACCROBAT2020").documents
    docs, dropped = map_documents(source, load_mapping("maccrobat"), schema)
    ents, pairs = _types(docs)
    assert ents["problem"] == 3_382 + 1_362 - 1  # one Sign_symptom/Disease span pair merged
    assert ents["test"] == 4_598 and ents["drug"] == 1_080 and ents["labvalue"] == 2_848
    assert pairs[("labvalue", "test")] == 2_747 and pairs[("dosage", "drug")] == 353
    assert sum(pairs.values()) == 6_432
    assert all(schema.can_modify(h, t) for h, t in pairs)
    assert dropped["relation OVERLAP: type not mapped"] == 8_706
    assert dropped["relation MODIFY: schema forbids labvalue -> problem"] == 249
    assert all(d.consistency_problems() == [] for d in docs)


def test_chia_after_mapping(shared_data, schema):
    source = read_brat(shared_data / "chia" / "chia_without_scope").documents
    docs, dropped = map_documents(source, load_mapping("chia"), schema)
    ents, pairs = _types(docs)
    assert set(ents) == {"problem", "drug", "treatment", "test", "labvalue", "negation", "temporal"}
    assert pairs[("labvalue", "test")] == 2_799 and pairs[("negation", "problem")] == 380
    assert sum(pairs.values()) == 6_460
    assert dropped["relation Has_value: schema forbids labvalue -> problem"] == 46
    assert all(d.consistency_problems() == [] for d in docs)


def test_pubtator_corpora_after_mapping(shared_data, schema):
    cdr = read_pubtator(shared_data / "bc5cdr" / "CDR_TrainingSet.PubTator.txt").documents
    docs, dropped = map_documents(cdr, load_mapping("bc5cdr"), schema)
    assert _types(docs)[0] == {"drug": 5_203, "problem": 4_182} and not dropped
    assert sum(len(d.meta["doc_relations"]) for d in docs) == 1_038  # kept, concept-level
    ncbi = read_pubtator(shared_data / "ncbi_disease" / "NCBItestset_corpus.txt").documents
    docs, dropped = map_documents(ncbi, load_mapping("ncbi_disease"), schema)
    assert _types(docs)[0] == {"problem": 960} and not dropped
