"""A tiny annotated-text grammar: patterns with slots expand into text *and* gold spans at
once, so every offset is exact by construction (no after-the-fact string searching).

Pattern syntax (kept small on purpose; the vocabulary and sentences live in YAML):

    literal text            copied as is
    {sym}                   expand symbol `sym`: a fresh pick of one of its alternatives
                            (each itself a pattern; a structured entry gives its `name`)
    {sym.field}             a field of a structured entry of `sym`; field references in one
                            scope and the scopes inside it share one entry (a drug and its
                            doses); a missing field falls back (FIELD_FALLBACK, then the
                            symbol `default_FIELD`)
    {~a|b|c}                one of the inline literal alternatives
    {=text}                 the literal text (useful with an annotation, below)
    [ ... ]  [%30 ... ]     optional part, kept with probability 50% (or 30%)

and any slot may carry annotations, in this order:

    @type                   the slot's text becomes an entity of `type`
    #label                  name the entity (or, without @type, the head of the expansion)
    >a,b  >^                the entity modifies the entities labelled a and b, or `^`, the
                            nearest entity that wraps this expansion

The head of an expansion is the entity labelled `h` in it (or its only entity). Links are
checked against the schema when they are made, so a data mistake fails loudly at once.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache

from fedmedlora.data.schema import Schema

_REF = re.compile(
    r"^(?:(?P<sym>[a-z_][a-z0-9_]*)(?:\.(?P<field>[a-z_]+))?|~(?P<alts>[^@#>]+)|=(?P<lit>[^@#>]+))"
    r"(?:@(?P<type>[a-z_]+))?(?:#(?P<label>[a-z0-9_]+))?(?:>(?P<targets>[a-z0-9_^,]+))?$"
)
_OPT_PROB = re.compile(r"%(\d+) ")
# When an entry lacks a field, these fall back to another field of the same entry.
FIELD_FALLBACK = {"abbr": "name", "strength": "dose"}
# Lists of equal length in these fields are parallel within one entry: a drug given as
# `form: [tablet, injection]`, `route: [PO, IV]` is a PO tablet or an IV injection.
PARALLEL_FIELDS = frozenset({"form", "route", "take", "strength"})
_MIN_TYPO_WORD = 5
_WORD = re.compile(r"\b[A-Za-z][a-z]+\b")


class GrammarError(ValueError):
    """A mistake in the synthetic grammar data (a bug in the YAML, not in user input)."""


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Ref:
    sym: str | None
    field: str | None
    choices: tuple[str, ...]
    type: str | None
    label: str | None
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Opt:
    prob: float
    body: tuple[Lit | Ref | Opt, ...]


Node = Lit | Ref | Opt


def _parse_ref(body: str, pattern: str) -> Ref:
    m = _REF.match(body)
    if not m:
        raise GrammarError(f"bad slot {{{body}}} in pattern {pattern!r}")
    if m["alts"] is not None:
        choices = tuple(m["alts"].split("|"))
    elif m["lit"] is not None:
        choices = (m["lit"],)
    else:
        choices = ()
    return Ref(
        sym=m["sym"],
        field=m["field"],
        choices=choices,
        type=m["type"],
        label=m["label"],
        targets=tuple(m["targets"].split(",")) if m["targets"] else (),
    )


def _parse_seq(text: str, i: int, closing: str | None) -> tuple[tuple[Node, ...], int]:
    out: list[Node] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            out.append(Lit("".join(buf)))
            buf.clear()

    while i < len(text):
        c = text[i]
        if c == closing:
            flush()
            return tuple(out), i + 1
        if c == "{":
            j = text.find("}", i)
            if j < 0:
                raise GrammarError(f"unclosed '{{' in pattern {text!r}")
            flush()
            out.append(_parse_ref(text[i + 1 : j], text))
            i = j + 1
        elif c == "[":
            flush()
            m = _OPT_PROB.match(text, i + 1)
            prob, start = (int(m[1]) / 100, m.end()) if m else (0.5, i + 1)
            body, i = _parse_seq(text, start, "]")
            out.append(Opt(prob, body))
        elif c in "]}":
            raise GrammarError(f"unbalanced {c!r} in pattern {text!r}")
        else:
            buf.append(c)
            i += 1
    if closing is not None:
        raise GrammarError(f"unclosed '[' in pattern {text!r}")
    flush()
    return tuple(out), i


@cache
def parse(pattern: str) -> tuple[Node, ...]:
    return _parse_seq(pattern, 0, None)[0]


def refs(nodes: tuple[Node, ...]) -> list[Ref]:
    """Every slot in a parsed pattern, optional parts included (for load-time checks)."""
    found: list[Ref] = []
    for node in nodes:
        if isinstance(node, Ref):
            found.append(node)
        elif isinstance(node, Opt):
            found.extend(refs(node.body))
    return found


# A symbol's alternatives: patterns (str), structured entries (dict with `name`), or
# number generators (dict with `num: [lo, hi]` and optional `digits`).
Alternative = str | dict
Grammar = dict[str, list[Alternative]]


@dataclass
class Span:
    type: str
    start: int
    end: int = -1


@dataclass
class _Scope:
    parent: _Scope | None
    wrapper: int | None = None
    labels: dict[str, int] = field(default_factory=dict)
    bound: dict[str, dict] = field(default_factory=dict)
    parallel: dict[str, tuple[int, int]] = field(default_factory=dict)
    links: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    created: list[int] = field(default_factory=list)

    def owner(self, sym: str) -> _Scope | None:
        """The nearest enclosing scope (this one included) that has chosen `sym`."""
        scope: _Scope | None = self
        while scope is not None:
            if sym in scope.bound:
                return scope
            scope = scope.parent
        return None

    def nearest_wrapper(self) -> int | None:
        scope: _Scope | None = self
        while scope is not None:
            if scope.wrapper is not None:
                return scope.wrapper
            scope = scope.parent
        return None


def make_typo(word: str, rng: random.Random) -> str:
    """A plausible keyboard slip: swap two neighbours, drop a letter, or double one."""
    inner = [k for k in range(1, len(word) - 2) if word[k] != word[k + 1]]
    op = rng.randrange(3)
    k = rng.randrange(1, len(word) - 1)
    if op == 0 and inner:
        k = rng.choice(inner)
        return word[:k] + word[k + 1] + word[k] + word[k + 2 :]
    if op == 1:
        return word[:k] + word[k + 1 :]
    return word[:k] + word[k] + word[k:]


class Builder:
    """Accumulates one document's text, spans and links while patterns expand."""

    def __init__(
        self,
        grammar: Grammar,
        schema: Schema,
        rng: random.Random,
        typo_rate: float = 0.0,
        typo_types: frozenset[str] = frozenset(),
    ):
        self.grammar = grammar
        self.schema = schema
        self.rng = rng
        self.typo_rate = typo_rate
        self.typo_types = typo_types
        self.text = ""
        self.spans: list[Span] = []
        self.links: set[tuple[int, int]] = set()
        self.typos: list[tuple[int, int, str]] = []
        self.capitalize_next = False
        self._open: list[int] = []
        self._used: set[tuple[str, int]] = set()

    # -- text -----------------------------------------------------------------------
    def emit(self, text: str) -> None:
        """Append text, keeping spacing tidy when optional parts were left out."""
        if not text:
            return
        if (not self.text or self.text[-1] in " \n") and text[0] == " ":
            text = text.lstrip(" ")
            if not text:
                return
        if (
            text[0] in ".,;:)"
            and self.text.endswith(" ")
            and not any(self.spans[i].start == len(self.text) for i in self._open)
        ):
            self.text = self.text[:-1]
        if self.capitalize_next and not text.isspace():
            k = next((j for j, ch in enumerate(text) if not ch.isspace()), 0)
            text = text[:k] + text[k].upper() + text[k + 1 :]
            self.capitalize_next = False
        self.text += text

    def _emit_terminal(self, text: str) -> None:
        """Emit a vocabulary word; inside an annotated span it may get a typo."""
        if (
            self.typo_rate
            and any(self.spans[i].type in self.typo_types for i in self._open)
            and self.rng.random() < self.typo_rate
        ):
            words = [m for m in _WORD.finditer(text) if len(m[0]) >= _MIN_TYPO_WORD]
            if words:
                m = self.rng.choice(words)
                typo = make_typo(m[0], self.rng)
                self.emit(text[: m.start()])
                start = len(self.text)
                self.emit(typo)
                self.typos.append((start, len(self.text), m[0]))
                self.emit(text[m.end() :])
                return
        self.emit(text)

    # -- choice ---------------------------------------------------------------------
    def _alternatives(self, sym: str) -> list[Alternative]:
        try:
            return self.grammar[sym]
        except KeyError:
            raise GrammarError(f"unknown symbol {sym!r}") from None

    def _pick(self, sym: str) -> Alternative:
        """Prefer alternatives not yet used in this document (no 'fever, fever' lists)."""
        alts = self._alternatives(sym)
        fresh = [k for k in range(len(alts)) if (sym, k) not in self._used]
        k = self.rng.choice(fresh or range(len(alts)))
        self._used.add((sym, k))
        return alts[k]

    def _value(self, value: object, where: str, scope: _Scope) -> None:
        """Expand a field value or alternative: a pattern, a list of them, or a number."""
        if isinstance(value, list):
            value = self.rng.choice(value)
        if isinstance(value, dict) and "num" in value:
            lo, hi = value["num"]
            self.emit(f"{self.rng.uniform(lo, hi):.{int(value.get('digits', 0))}f}")
        elif isinstance(value, str):
            nodes = parse(value)
            if len(nodes) == 1 and isinstance(nodes[0], Lit):
                self._emit_terminal(value)
            else:
                self._expand_seq(nodes, scope)
        else:
            raise GrammarError(f"{where}: cannot expand {value!r}")

    # -- expansion ------------------------------------------------------------------
    def sentence(self, pattern: str, parent: _Scope) -> None:
        scope = _Scope(parent)
        self._expand_seq(parse(pattern), scope)
        self._close_scope(scope, pattern)

    def root(self, bind: list[str]) -> _Scope:
        """The document scope; `bind` symbols are chosen once per document (the patient)."""
        scope = _Scope(None)
        for sym in bind:
            entry = self._pick(sym)
            if not isinstance(entry, dict):
                raise GrammarError(f"document-level symbol {sym!r} needs structured entries")
            scope.bound[sym] = entry
        return scope

    def _expand_seq(self, nodes: tuple[Node, ...], scope: _Scope) -> None:
        for node in nodes:
            if isinstance(node, Lit):
                self.emit(node.text)
            elif isinstance(node, Opt):
                if self.rng.random() < node.prob:
                    self._expand_seq(node.body, scope)
            else:
                self._expand_ref(node, scope)

    def _expand_ref(self, ref: Ref, scope: _Scope) -> None:
        if ref.type is not None:
            if ref.type not in self.schema.entity_types:
                raise GrammarError(f"unknown entity type {ref.type!r}")
            idx = len(self.spans)
            self.spans.append(Span(ref.type, len(self.text)))
            self._open.append(idx)
            inner = _Scope(scope, wrapper=idx)
            self._fill(ref, inner)
            self._close_scope(inner, ref)
            self._open.pop()
            span = self.spans[idx]
            span.end = len(self.text)
            piece = self.text[span.start : span.end]
            if not piece or piece != piece.strip():
                raise GrammarError(f"slot {ref} gives an empty or space-padded span {piece!r}")
            scope.created.append(idx)
            head: int | None = idx
        else:
            inner = _Scope(scope)
            self._fill(ref, inner)
            self._close_scope(inner, ref)
            head = inner.labels.get("h")
            if head is None and len(inner.created) == 1:
                head = inner.created[0]
        if ref.label is not None:
            if head is None:
                raise GrammarError(f"slot {ref} is labelled but its expansion has no head")
            scope.labels[ref.label] = head
        if ref.targets:
            if head is None or ref.type is None or not self.schema.is_modifier(ref.type):
                raise GrammarError(f"slot {ref} has targets but is not a modifier")
            scope.links.append((head, ref.targets))
        elif ref.type is not None and self.schema.is_modifier(ref.type):
            raise GrammarError(f"modifier slot {ref} modifies nothing")

    def _fill(self, ref: Ref, scope: _Scope) -> None:
        """Produce the text of one slot inside `scope`, a child of the slot's own scope.

        `{sym}` is a fresh pick every time (so lists do not repeat one entry), while
        `{sym.field}` reuses the entry already chosen in this scope or an enclosing one, so
        `{drug.name}` and `{drug.dose}` agree."""
        if ref.sym is None:
            self.emit(self.rng.choice(ref.choices))
            return
        if ref.field is None:
            alt = self._pick(ref.sym)
            value = alt["name"] if isinstance(alt, dict) and "num" not in alt else alt
            self._value(value, ref.sym, scope)
            return
        owner = scope.owner(ref.sym)
        if owner is None:
            alt = self._pick(ref.sym)
            if not isinstance(alt, dict) or "num" in alt:
                raise GrammarError(f"{{{ref.sym}.{ref.field}}}: {ref.sym!r} has no fields")
            owner = scope.parent
            assert owner is not None
            owner.bound[ref.sym] = alt
        entry = owner.bound[ref.sym]
        key = ref.field
        while key not in entry and key in FIELD_FALLBACK:
            key = FIELD_FALLBACK[key]
        if key in entry:
            value = entry[key]
            if key in PARALLEL_FIELDS and isinstance(value, list):
                value = value[self._parallel_index(owner, ref.sym, len(value))]
            self._value(value, f"{ref.sym}.{key}", scope)
        elif f"default_{ref.field}" in self.grammar:
            self._value(self._pick(f"default_{ref.field}"), f"default_{ref.field}", scope)
        else:
            raise GrammarError(f"entry {entry.get('name')!r} of {ref.sym!r} has no {ref.field!r}")

    def _parallel_index(self, owner: _Scope, sym: str, n: int) -> int:
        """The same position in every equally long parallel list of one chosen entry."""
        first = owner.parallel.get(sym)
        if first is not None and first[0] == n:
            return first[1]
        k = self.rng.randrange(n)
        owner.parallel.setdefault(sym, (n, k))
        return k

    def _close_scope(self, scope: _Scope, where: object) -> None:
        """Resolve this scope's links now that all its labels are known."""
        for mod, targets in scope.links:
            resolved = []
            for t in targets:
                if t == "^":
                    resolved.append(scope.nearest_wrapper())
                elif t in scope.labels:
                    resolved.append(scope.labels[t])
            resolved = [r for r in resolved if r is not None and r != mod]
            if not resolved:
                raise GrammarError(f"in {where}: modifier {self.spans[mod].type} has no target")
            for main in resolved:
                m_type, t_type = self.spans[mod].type, self.spans[main].type
                if not self.schema.can_modify(m_type, t_type):
                    raise GrammarError(f"in {where}: {m_type} cannot modify {t_type}")
                self.links.add((mod, main))
