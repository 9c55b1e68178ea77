"""Metrics on worked examples computed by hand."""

import pytest

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.evaluation.metrics import Counts, Scores, score_corpus, score_document

TEXT = "Severe chest pain treated with aspirin 81 mg daily; no fever."
#       0123456789012345678901234567890123456789012345678901234567890


def E(i, t, s, e):
    return Entity(id=i, type=t, start=s, end=e, text=TEXT[s:e])


def doc(ents, rels=(), id="d"):
    return Document(id=id, text=TEXT, entities=list(ents), relations=list(rels))


GOLD = doc(
    [
        E("T1", "severity", 0, 6),
        E("T2", "problem", 7, 17),
        E("T3", "drug", 31, 38),
        E("T4", "dosage", 39, 44),
        E("T5", "frequency", 45, 50),
        E("T6", "negation", 52, 54),
        E("T7", "problem", 55, 60),
    ],
    [
        Relation(id="R1", type="modifies", head="T1", tail="T2"),
        Relation(id="R2", type="modifies", head="T4", tail="T3"),
        Relation(id="R3", type="modifies", head="T5", tail="T3"),
        Relation(id="R4", type="modifies", head="T6", tail="T7"),
    ],
)


def test_perfect_prediction_scores_one():
    s = score_document(GOLD, GOLD)
    for key, value in s.summary().items():
        if key.endswith("f1"):
            assert value == 1.0, key


def test_worked_example_strict_vs_lenient():
    pred = doc(
        [
            E("P1", "problem", 0, 17),  # "Severe chest pain": overlaps gold problem, wrong span
            E("P2", "drug", 31, 38),  # exact
            E("P3", "dosage", 39, 41),  # "81": overlaps "81 mg"
            E("P4", "problem", 52, 60),  # "no fever": overlaps gold problem "fever"
            E("P5", "test", 18, 25),
        ],  # spurious
        [Relation(id="Q1", type="modifies", head="P3", tail="P2")],
    )
    s = score_document(GOLD, pred)
    strict, lenient = s.micro("entity", "strict"), s.micro("entity", "lenient")
    # gold 7, pred 5. strict tp: drug only.
    assert (strict.tp, strict.fp, strict.fn) == (1, 4, 6)
    # lenient: problem x2, drug, dosage.
    assert (lenient.tp, lenient.fp, lenient.fn) == (4, 1, 3)
    assert lenient.precision == pytest.approx(4 / 5)
    assert lenient.recall == pytest.approx(4 / 7)
    assert lenient.f1 == pytest.approx(2 * (4 / 5) * (4 / 7) / (4 / 5 + 4 / 7))
    # relations: gold 4; pred dosage->drug with partial dosage span.
    rs, rl = s.micro("relation", "strict"), s.micro("relation", "lenient")
    assert (rs.tp, rs.fp, rs.fn) == (0, 1, 4)
    assert (rl.tp, rl.fp, rl.fn) == (1, 0, 3)
    per = s.as_dict()["entity"]["lenient"]["per_type"]
    assert per["problem"]["tp"] == 2 and per["test"]["fp"] == 1 and per["severity"]["fn"] == 1
    assert s.as_dict()["relation"]["lenient"]["per_type"]["modifies:dosage->drug"]["tp"] == 1


def test_lenient_matching_is_one_to_one_and_order_independent():
    # One long prediction overlapping two gold problems counts once.
    gold = doc([E("T1", "problem", 7, 12), E("T2", "problem", 13, 17)])
    pred = doc([E("P1", "problem", 7, 17)])
    c = score_document(gold, pred).micro("entity", "lenient")
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    # Greedy first-come matching would pair P1 with T1 and miss P2; the optimum is 2.
    gold = doc([E("T1", "problem", 0, 12), E("T2", "problem", 13, 17)])
    pred = doc([E("P1", "problem", 7, 17), E("P2", "problem", 0, 6)])
    c = score_document(gold, pred).micro("entity", "lenient")
    assert c.tp == 2


def test_type_must_match_even_when_lenient():
    pred = doc([E("P1", "test", 7, 17)])
    gold = doc([E("T2", "problem", 7, 17)])
    assert score_document(gold, pred).micro("entity", "lenient").tp == 0


def test_unannotated_types_are_not_counted():
    pred = doc([E("P1", "problem", 7, 17), E("P2", "drug", 31, 38), E("P3", "test", 18, 25)])
    s = score_document(GOLD, pred, entity_types=["problem", "test"], relation_types=[])
    c = s.micro("entity", "strict")
    # gold problems 2 (chest pain, fever); drug is not annotated here, so not a FP.
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)
    assert s.micro("relation", "strict") == Counts(0, 0, 0)


def test_counts_round_trip_and_sum_across_sites():
    a = score_document(GOLD, doc([E("P2", "drug", 31, 38)]))
    b = score_document(GOLD, GOLD)
    flat = a.to_counts()
    assert all(isinstance(v, int) for v in flat.values())
    assert Scores.from_counts(flat).as_dict() == a.as_dict()
    total = Scores()
    total += a
    total += b
    assert total.micro("entity", "strict") == Counts(tp=8, fp=0, fn=6)


def test_corpus_pairs_by_id_and_reports_missing():
    g2 = GOLD.model_copy(update={"id": "d2"})
    scores, report = score_corpus([GOLD, g2], [GOLD, doc([], id="other")])
    assert report.missing_predictions == ["d2"]
    assert report.unmatched_predictions == ["other"]
    c = scores.micro("entity", "strict")
    assert (c.tp, c.fp, c.fn) == (7, 0, 7)


# --- the sparse lenient matcher against the dense one it replaced ---------------------


def _dense_reference(gold: Document, pred: Document) -> dict[str, int]:
    """The matcher before the sparse one, kept here only as a reference: every pair
    compared, a dense 0/1 matrix, scipy's assignment solver."""
    from collections import Counter, defaultdict

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    def matching(pairs, n_gold, n_pred):
        if not pairs:
            return 0
        weight = np.zeros((n_gold, n_pred))
        for g, p in pairs:
            weight[g, p] = 1.0
        rows, cols = linear_sum_assignment(weight, maximize=True)
        return int(weight[rows, cols].sum())

    def overlap(a, b):
        return a.start < b.end and b.start < a.end

    out: dict[str, int] = {}

    def add(kind, key, exact, lenient, n_gold, n_pred):
        for mode, tp in (("strict", exact), ("lenient", lenient)):
            for stat, value in (("tp", tp), ("fp", n_pred - tp), ("fn", n_gold - tp)):
                name = f"{kind}/{mode}/{key}/{stat}"
                out[name] = out.get(name, 0) + value

    for t in {e.type for e in gold.entities} | {e.type for e in pred.entities}:
        g = [e for e in gold.entities if e.type == t]
        p = [e for e in pred.entities if e.type == t]
        exact = sum(
            (Counter((e.start, e.end) for e in g) & Counter((e.start, e.end) for e in p)).values()
        )
        pairs = [(i, j) for i, a in enumerate(g) for j, b in enumerate(p) if overlap(a, b)]
        add("entity", t, exact, matching(pairs, len(g), len(p)), len(g), len(p))
    ge, pe = gold.entity_by_id(), pred.entity_by_id()
    grouped = defaultdict(lambda: ([], []))
    for side, d, ents in ((0, gold, ge), (1, pred, pe)):
        for r in d.relations:
            grouped[f"{r.type}:{ents[r.head].type}->{ents[r.tail].type}"][side].append(r)
    for key, (g, p) in grouped.items():

        def span(r, ents):
            return (ents[r.head].start, ents[r.head].end, ents[r.tail].start, ents[r.tail].end)

        exact = sum((Counter(span(r, ge) for r in g) & Counter(span(r, pe) for r in p)).values())
        pairs = [
            (i, j)
            for i, a in enumerate(g)
            for j, b in enumerate(p)
            if overlap(ge[a.head], pe[b.head]) and overlap(ge[a.tail], pe[b.tail])
        ]
        add("relation", key, exact, matching(pairs, len(g), len(p)), len(g), len(p))
    return out


def _random_doc(rng, text: str, n_entities: int, n_relations: int, doc_id: str) -> Document:
    ents = []
    for k in range(n_entities):
        start = rng.randrange(len(text) - 1)
        end = rng.randrange(start + 1, min(len(text), start + rng.choice((1, 3, 8, 20))) + 1)
        ents.append(
            Entity(id=f"T{k}", type=rng.choice("ab"), start=start, end=end, text=text[start:end])
        )
    rels = []
    for k in range(n_relations if len(ents) > 1 else 0):
        head, tail = rng.sample(ents, 2)
        rels.append(Relation(id=f"R{k}", type=rng.choice("xy"), head=head.id, tail=tail.id))
    return Document(id=doc_id, text=text, entities=ents, relations=rels)


def test_sparse_lenient_matching_equals_the_dense_matcher_on_random_documents():
    import random

    rng = random.Random(14)
    differing = 0
    for case in range(300):
        text = "".join(rng.choice("abc ") for _ in range(rng.choice((10, 40, 120))))
        n = rng.choice((0, 1, 3, 10, 40))
        gold = _random_doc(rng, text, n, n // 2, "d")
        pred = _random_doc(rng, text, rng.choice((0, 1, 3, 10, 40)), n // 2, "d")
        got = {k: v for k, v in score_document(gold, pred).to_counts().items()}
        want = _dense_reference(gold, pred)
        assert got == want, f"case {case}"
        lenient = sum(v for k, v in got.items() if "/lenient/" in k and k.endswith("/tp"))
        strict = sum(v for k, v in got.items() if "/strict/" in k and k.endswith("/tp"))
        differing += lenient != strict
    assert differing > 50  # the cases exercise overlaps, not only exact matches


def test_lenient_matching_is_one_to_one_and_maximal():
    # gold a=[0,4) b=[3,8); predicted c=[0,2) overlaps only a, d=[2,6) overlaps both:
    # greedy in list order could give d->a and leave c; the maximum matching pairs both.
    text = "abcdefghij"
    gold = doc_at(text, [(0, 4), (3, 8)])
    pred = doc_at(text, [(2, 6), (0, 2)])
    c = score_document(gold, pred).entity["lenient"]["p"]
    assert (c.tp, c.fp, c.fn) == (2, 0, 0)
    touching = score_document(doc_at(text, [(0, 3)]), doc_at(text, [(3, 6)]))
    assert touching.entity["lenient"]["p"].tp == 0  # [0,3) and [3,6) do not overlap


def doc_at(text: str, spans: list[tuple[int, int]]) -> Document:
    ents = [
        Entity(id=f"T{k}", type="p", start=s, end=e, text=text[s:e])
        for k, (s, e) in enumerate(spans)
    ]
    return Document(id="d", text=text, entities=ents)
