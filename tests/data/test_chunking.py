from fedmedlora.data.chunking import assemble, chunk_document
from fedmedlora.data.document import Document, Entity, Relation

TEXT = (
    "Chest pain since yesterday. Started aspirin 81 mg daily.\n"
    "No fever. Troponin 0.02 ng/mL, within normal limits; ECG unremarkable."
)


def _find(s, t, i):
    start = TEXT.index(s)
    return Entity(id=i, type=t, start=start, end=start + len(s), text=s)


def _doc():
    ents = [
        _find("Chest pain", "problem", "T1"),
        _find("yesterday", "temporal", "T2"),
        _find("aspirin", "drug", "T3"),
        _find("81 mg", "dosage", "T4"),
        _find("fever", "problem", "T5"),
        _find("Troponin", "test", "T6"),
        _find("0.02 ng/mL", "labvalue", "T7"),
    ]
    rels = [
        Relation(id="R1", type="modifies", head="T2", tail="T1"),
        Relation(id="R2", type="modifies", head="T4", tail="T3"),
        Relation(id="R3", type="modifies", head="T7", tail="T6"),
        Relation(id="R4", type="modifies", head="T2", tail="T3"),
    ]  # crosses sentences
    return Document(id="d", text=TEXT, entities=ents, relations=rels)


def test_chunks_keep_exact_offsets_and_local_annotations():
    doc = _doc()
    chunked = chunk_document(doc, max_len=40)
    assert len(chunked.chunks) >= 3
    for ch in chunked.chunks:
        assert TEXT[ch.start : ch.end] == ch.text
        assert len(ch.text) <= 40 or " " not in ch.text
        for e in ch.entities:
            assert ch.text[e.start : e.end] == e.text
    got = sorted(e.id for ch in chunked.chunks for e in ch.entities)
    assert got == sorted(e.id for e in doc.entities)
    assert chunked.cross_chunk_relations == 1
    assert sum(len(ch.relations) for ch in chunked.chunks) == 3


def test_long_sentence_is_cut_at_word_gaps_never_inside_an_entity():
    text = "Pt on " + "metoprolol succinate extended release " * 5 + "daily."
    ent = Entity(id="T1", type="drug", start=6, end=43, text=text[6:43])
    chunked = chunk_document(Document(id="x", text=text, entities=[ent]), max_len=30)
    assert len(chunked.chunks) > 3
    assert any(e.id == "T1" for ch in chunked.chunks for e in ch.entities)
    assert "".join(ch.text for ch in chunked.chunks).replace(" ", "") == text.replace(" ", "")


def test_token_length_function_is_respected():
    chunked = chunk_document(_doc(), max_len=6, length=lambda s: len(s.split()))
    for ch in chunked.chunks:
        assert len(ch.text.split()) <= 6 or not any(c.isspace() for c in ch.text)


def test_assemble_maps_back_to_document_offsets():
    doc = _doc()
    chunked = chunk_document(doc, max_len=40)
    preds = [(ch, ch.entities, ch.relations) for ch in chunked.chunks]
    back = assemble(doc, preds)
    assert {(e.type, e.start, e.end) for e in back.entities} == {
        (e.type, e.start, e.end) for e in doc.entities
    }
    assert len(back.relations) == 3
    assert back.consistency_problems() == []
