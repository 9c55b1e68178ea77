"""Entity and relation precision/recall/F1, strict and lenient, micro and per type.

strict:  same type and exactly the same span (discontinuous mentions: their extent).
lenient: same type and overlapping spans, each gold and each predicted item used at
         most once (a maximum one-to-one matching, so the score does not depend on
         the order of entities; relations: same relation type and both ends lenient).

Why not nervaluate/seqeval: seqeval works on BIO tags (no nesting, no relations) and
nervaluate matches greedily in list order and has no relations; the matching itself is
delegated to scipy's Hopcroft-Karp matching on a sparse overlap graph. Counts are kept
(not ratios) so sites can be summed into micro scores and sent through Flower as plain numbers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from fedmedlora.data.document import Document, Entity, Relation

MODES = ("strict", "lenient")
KINDS = ("entity", "relation")


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def _by_kind() -> dict[str, defaultdict[str, Counts]]:
    return {m: defaultdict(Counts) for m in MODES}


@dataclass
class Scores:
    """Per-type counts for entities and relations, in both modes; add them across
    documents and sites for micro averages."""

    entity: dict[str, defaultdict[str, Counts]] = field(default_factory=_by_kind)
    relation: dict[str, defaultdict[str, Counts]] = field(default_factory=_by_kind)

    def __iadd__(self, other: Scores) -> Scores:
        for kind in KINDS:
            mine, theirs = getattr(self, kind), getattr(other, kind)
            for mode in MODES:
                for key, c in theirs[mode].items():
                    mine[mode][key] += c
        return self

    def micro(self, kind: str, mode: str) -> Counts:
        total = Counts()
        for c in getattr(self, kind)[mode].values():
            total += c
        return total

    def summary(self) -> dict[str, float]:
        """The flat headline numbers: entity_strict_f1, relation_lenient_precision, ..."""
        out: dict[str, float] = {}
        for kind in KINDS:
            for mode in MODES:
                c = self.micro(kind, mode)
                for stat in ("precision", "recall", "f1"):
                    out[f"{kind}_{mode}_{stat}"] = getattr(c, stat)
        return out

    def as_dict(self) -> dict:
        out: dict = {"summary": self.summary()}
        for kind in KINDS:
            table = getattr(self, kind)
            out[kind] = {
                mode: {
                    "micro": self.micro(kind, mode).as_dict(),
                    "per_type": {k: c.as_dict() for k, c in sorted(table[mode].items())},
                }
                for mode in MODES
            }
        return out

    def to_counts(self) -> dict[str, int]:
        """Flat integer counts, e.g. {"entity/strict/drug/tp": 3}: only numbers, so they
        can leave a site."""
        flat: dict[str, int] = {}
        for kind in KINDS:
            for mode in MODES:
                for key, c in getattr(self, kind)[mode].items():
                    for stat in ("tp", "fp", "fn"):
                        flat[f"{kind}/{mode}/{key}/{stat}"] = getattr(c, stat)
        return flat

    @classmethod
    def from_counts(cls, flat: dict[str, int | float]) -> Scores:
        scores = cls()
        for name, value in flat.items():
            parts = name.split("/")
            if len(parts) != 4 or parts[0] not in KINDS or parts[1] not in MODES:
                continue
            kind, mode, key, stat = parts
            setattr(getattr(scores, kind)[mode][key], stat, int(value))
        return scores


def _overlapping_pairs(
    gold: list[tuple[int, int]], pred: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Every (gold index, predicted index) whose [start, end) spans overlap, by a sweep over
    the sorted ends: O(n log n + pairs), where comparing all pairs is O(n^2)."""
    # At one position ends (kind 0) come before starts (kind 1): [0,5) and [5,9) do not
    # overlap. Each start pairs with every open span of the other side.
    events = [(s, 1, 0, i) for i, (s, _) in enumerate(gold)]
    events += [(e, 0, 0, i) for i, (_, e) in enumerate(gold)]
    events += [(s, 1, 1, j) for j, (s, _) in enumerate(pred)]
    events += [(e, 0, 1, j) for j, (_, e) in enumerate(pred)]
    events.sort()
    open_spans: tuple[dict[int, None], dict[int, None]] = ({}, {})
    pairs: list[tuple[int, int]] = []
    for _, kind, side, k in events:
        if kind == 0:
            del open_spans[side][k]
            continue
        open_spans[side][k] = None
        if side == 0:
            pairs.extend((k, j) for j in open_spans[1])
        else:
            pairs.extend((i, k) for i in open_spans[0])
    return pairs


def _max_matching(pairs: list[tuple[int, int]], n_gold: int, n_pred: int) -> int:
    """Size of a maximum one-to-one matching (Hopcroft-Karp on a sparse graph: no dense
    n_gold x n_pred matrix, so 10,000 entities of one type in a document stay fast)."""
    if not pairs:
        return 0
    rows, cols = zip(*pairs, strict=True)
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_gold, n_pred))
    matched = maximum_bipartite_matching(graph, perm_type="column")
    return int((matched >= 0).sum())


def _overlap(a: Entity, b: Entity) -> bool:
    return a.start < b.end and b.start < a.end


def _score_entities(gold: list[Entity], pred: list[Entity], scores: Scores) -> None:
    types = {e.type for e in gold} | {e.type for e in pred}
    for t in types:
        g = [(e.start, e.end) for e in gold if e.type == t]
        p = [(e.start, e.end) for e in pred if e.type == t]
        exact = sum((Counter(g) & Counter(p)).values())
        pairs = _overlapping_pairs(g, p)
        for mode, tp in (("strict", exact), ("lenient", _max_matching(pairs, len(g), len(p)))):
            scores.entity[mode][t] += Counts(tp, len(p) - tp, len(g) - tp)


def _relation_key(rel: Relation, ents: dict[str, Entity]) -> str:
    return f"{rel.type}:{ents[rel.head].type}->{ents[rel.tail].type}"


def _score_relations(gold: Document, pred: Document, scores: Scores) -> None:
    ge, pe = gold.entity_by_id(), pred.entity_by_id()
    grouped: defaultdict[str, tuple[list[Relation], list[Relation]]] = defaultdict(lambda: ([], []))
    for r in gold.relations:
        grouped[_relation_key(r, ge)][0].append(r)
    for r in pred.relations:
        grouped[_relation_key(r, pe)][1].append(r)
    for key, (g, p) in grouped.items():

        def span(r: Relation, ents: dict[str, Entity]) -> tuple[int, int, int, int]:
            h, t = ents[r.head], ents[r.tail]
            return (h.start, h.end, t.start, t.end)

        exact = sum((Counter(span(r, ge) for r in g) & Counter(span(r, pe) for r in p)).values())
        heads = _overlapping_pairs(
            [(ge[r.head].start, ge[r.head].end) for r in g],
            [(pe[r.head].start, pe[r.head].end) for r in p],
        )
        pairs = [(i, j) for i, j in heads if _overlap(ge[g[i].tail], pe[p[j].tail])]
        for mode, tp in (("strict", exact), ("lenient", _max_matching(pairs, len(g), len(p)))):
            scores.relation[mode][key] += Counts(tp, len(p) - tp, len(g) - tp)


def score_document(
    gold: Document,
    pred: Document,
    entity_types: Iterable[str] | None = None,
    relation_types: Iterable[str] | None = None,
) -> Scores:
    """Scores of one prediction against its gold, counting only the given types (what the
    site annotates): an unannotated type is neither a false positive nor a miss."""
    if entity_types is not None:
        ents = set(entity_types)
        rels = (
            set(relation_types)
            if relation_types is not None
            else {r.type for r in (*gold.relations, *pred.relations)}
        )
        gold = gold.restricted_to(ents, rels)
        pred = pred.restricted_to(ents, rels)
    scores = Scores()
    _score_entities(gold.entities, pred.entities, scores)
    _score_relations(gold, pred, scores)
    return scores


@dataclass
class PairingReport:
    missing_predictions: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)


def score_corpus(
    gold: list[Document],
    pred: list[Document],
    entity_types: Iterable[str] | None = None,
    relation_types: Iterable[str] | None = None,
) -> tuple[Scores, PairingReport]:
    """Micro scores over documents paired by id. A gold document without prediction
    counts as predicting nothing; predictions without gold cannot be scored and are
    listed."""
    by_id = {d.id: d for d in pred}
    report = PairingReport()
    total = Scores()
    etypes = list(entity_types) if entity_types is not None else None
    rtypes = list(relation_types) if relation_types is not None else None
    for doc in gold:
        p = by_id.pop(doc.id, None)
        if p is None:
            report.missing_predictions.append(doc.id)
            p = doc.model_copy(update={"entities": [], "relations": []})
        total += score_document(doc, p, etypes, rtypes)
    report.unmatched_predictions = sorted(by_id)
    return total, report
