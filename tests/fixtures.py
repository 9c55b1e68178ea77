"""Small hand-made annotated notes shared by tests (the synthetic generator has its own)."""

from __future__ import annotations

from fedmedlora.data.document import Document, Entity, Relation

DRUGS = ["aspirin", "metoprolol", "lisinopril", "heparin", "insulin", "warfarin"]
PROBLEMS = ["chest pain", "fever", "cough", "hypertension", "diabetes", "edema"]


def note(i: int, site: str = "a") -> Document:
    """A two-sentence note: a problem, a drug with dosage and frequency, a negated problem."""
    problem, neg = PROBLEMS[(i * 5) % 6], PROBLEMS[(i * 5 + 1) % 6]
    pieces = [
        ("Patient with ", None),
        (problem, "problem"),
        (" was given ", None),
        (DRUGS[i % 6], "drug"),
        (" ", None),
        (f"{(i % 9 + 1) * 5} mg", "dosage"),
        (" ", None),
        ("daily", "frequency"),
        (". ", None),
        ("No", "negation"),
        (" ", None),
        (neg, "problem"),
        (" today.", None),
    ]
    text, ents = "", []
    for surface, etype in pieces:
        if etype:
            ents.append(
                Entity(
                    id=f"T{len(ents) + 1}",
                    type=etype,
                    start=len(text),
                    end=len(text) + len(surface),
                    text=surface,
                )
            )
        text += surface
    rels = [
        Relation(id="R1", type="modifies", head="T3", tail="T2"),
        Relation(id="R2", type="modifies", head="T4", tail="T2"),
        Relation(id="R3", type="modifies", head="T5", tail="T6"),
    ]
    return Document(id=f"{site}-{i}", text=text, site=site, entities=ents, relations=rels)


def notes(n: int, site: str = "a", offset: int = 0) -> list[Document]:
    return [note(i + offset, site) for i in range(n)]
