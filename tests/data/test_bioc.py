import xml.etree.ElementTree as ET
from itertools import islice

from fedmedlora.data.document import Document
from fedmedlora.data.formats.bioc import read_bioc
from fedmedlora.data.formats.pubtator import read_pubtator


def _infon(parent: ET.Element, key: str, value: str) -> None:
    ET.SubElement(parent, "infon", key=key).text = value


def _to_bioc(docs: list[Document]) -> str:
    """BioC as the CDR release writes it: passages with absolute offsets, annotations in
    the passage holding them, CID relations as infons without nodes."""
    collection = ET.Element("collection")
    ET.SubElement(collection, "source").text = "PubTator"
    for doc in docs:
        d = ET.SubElement(collection, "document")
        ET.SubElement(d, "id").text = doc.id
        for p in doc.meta["passages"]:
            passage = ET.SubElement(d, "passage")
            _infon(passage, "type", p["type"])
            ET.SubElement(passage, "offset").text = str(p["offset"])
            ET.SubElement(passage, "text").text = doc.text[p["offset"] : p["offset"] + p["length"]]
            for e in doc.entities:
                if p["offset"] <= e.start < p["offset"] + p["length"] + 1:
                    a = ET.SubElement(passage, "annotation", id=e.id)
                    _infon(a, "type", e.type)
                    _infon(a, "identifier", doc.meta["concepts"][e.id])
                    ET.SubElement(a, "location", offset=str(e.start), length=str(e.end - e.start))
                    ET.SubElement(a, "text").text = e.text
        for k, rel in enumerate(doc.meta.get("doc_relations", [])):
            r = ET.SubElement(d, "relation", id=f"R{k}")
            _infon(r, "relation", rel["type"])
            _infon(r, "Chemical", rel["args"][0])
            _infon(r, "Disease", rel["args"][1])
    ET.indent(collection)
    return ET.tostring(collection, encoding="unicode", xml_declaration=True)


def _comparable(doc: Document) -> tuple:
    ents = [(e.id, e.type, e.start, e.end, e.text) for e in doc.entities]
    meta = {k: v for k, v in doc.meta.items() if k != "source"}
    return doc.id, doc.text, ents, meta


def test_round_trip_matches_pubtator_reader(tmp_path, shared_data):
    source = read_pubtator(shared_data / "bc5cdr" / "CDR_TrainingSet.PubTator.txt")
    docs = list(islice(source.documents, 25))
    path = tmp_path / "cdr.xml"
    path.write_text(_to_bioc(docs), encoding="utf-8")
    result = read_bioc(path)
    assert result.problems == []
    assert [_comparable(d) for d in result.documents] == [_comparable(d) for d in docs]
    assert sum(len(d.meta.get("doc_relations", [])) for d in result.documents) > 0


XML = """<?xml version="1.0" encoding="UTF-8"?>
<collection>
  <document>
    <id>d1</id>
    <passage>
      <infon key="type">title</infon>
      <offset>0</offset>
      <text>Left and right knee pain.</text>
      <annotation id="A1">
        <infon key="type">problem</infon>
        <location offset="0" length="4"/>
        <location offset="15" length="9"/>
        <text>Left knee pain</text>
      </annotation>
      <annotation id="A2">
        <infon key="type">bodyloc</infon>
        <location offset="9" length="5"/>
        <text>right</text>
      </annotation>
    </passage>
    <passage>
      <infon key="type">abstract</infon>
      <offset>30</offset>
      <text>Severe.</text>
      <annotation id="A3">
        <infon key="type">severity</infon>
        <location offset="30" length="6"/>
        <text>Severe</text>
      </annotation>
      <annotation id="A4">
        <infon key="type">severity</infon>
        <location offset="30" length="6"/>
        <text>Sever3</text>
      </annotation>
    </passage>
    <relation id="R1">
      <infon key="type">modifies</infon>
      <node refid="A3" role="modifier"/>
      <node refid="A1" role="main"/>
    </relation>
    <relation id="R2">
      <infon key="type">modifies</infon>
      <node refid="A4" role="modifier"/>
      <node refid="A1" role="main"/>
    </relation>
  </document>
  <document>
    <id>d1</id>
  </document>
  <document>
    <id>d2</id>
    <passage><offset>0</offset><text>Cut off
"""


def test_structure_problems_and_line_numbers(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(XML, encoding="utf-8")
    result = read_bioc(path)
    (doc,) = result.documents
    assert doc.text == "Left and right knee pain.     Severe."  # gap filled with spaces
    a1 = doc.entity_by_id()["A1"]
    assert a1.fragments == ((0, 4), (15, 24)) and a1.text == "Left knee pain"
    assert [(r.id, r.head, r.tail) for r in doc.relations] == [("R1", "A3", "A1")]
    assert doc.meta["passages"] == [
        {"type": "title", "offset": 0, "length": 25},
        {"type": "abstract", "offset": 30, "length": 7},
    ]
    assert doc.consistency_problems() == []
    lines = [(p.line, p.reason.split(":")[0]) for p in result.problems]
    assert [line for line, _ in lines] == [30, 41, 47, 53]
    reasons = [p.reason for p in result.problems]
    assert "annotation A4 text 'Sever3' does not match" in reasons[0]
    assert "relation R2 refers to unknown or skipped annotations ['A4']" in reasons[1]
    assert "document d1 already read at line 3" in reasons[2]
    assert reasons[3].startswith("not well-formed XML")


def test_sentences_and_missing_file(tmp_path):
    path = tmp_path / "s.xml"
    path.write_text(
        "<collection><document><id>s</id><passage><offset>0</offset>"
        "<sentence><offset>0</offset><text>One.</text>"
        '<annotation id="1"><infon key="type">x</infon><location offset="0" length="3"/>'
        "<text>One</text></annotation></sentence>"
        "<sentence><offset>5</offset><text>Two.</text></sentence>"
        "</passage></document></collection>",
        encoding="utf-8",
    )
    result = read_bioc(path)
    assert result.problems == []
    assert result.documents[0].text == "One. Two."
    assert [e.text for e in result.documents[0].entities] == ["One"]
    assert read_bioc(tmp_path / "none.xml").problems[0].reason == "file not found"
