"""The faithful-markup automaton: gold markup is in its language, unfaithful text is not,
and whatever path a decoder takes through it ends in faithful markup."""

import random

import pytest

from fedmedlora.data.chunking import chunk_document
from fedmedlora.data.schema import load_schema
from fedmedlora.data.synthetic import generate_site
from fedmedlora.task.markup import parse, serialize
from fedmedlora.task.markup_grammar import MarkupGrammar
from tests.fixtures import notes

SCHEMA = load_schema()


def accepts(grammar: MarkupGrammar, markup: str) -> bool:
    state = grammar.advance_bytes(grammar.start(), markup.encode())
    return state is not None and grammar.can_end(state)


def test_gold_markup_of_every_window_is_accepted():
    docs = [*notes(6), *generate_site("riverside", 6, seed=3)]
    windows = 0
    for doc in docs:
        for ch in chunk_document(doc, 40, lambda t: len(t.split())).chunks:
            markup = serialize(ch.text, ch.entities, ch.relations, SCHEMA).markup
            assert accepts(MarkupGrammar(ch.text, SCHEMA.entity_types, SCHEMA), markup), markup
            windows += 1
    assert windows > 12


def test_unfaithful_or_malformed_outputs_are_rejected():
    g = MarkupGrammar("Took 25 mg <daily> & more", ["drug", "dosage", "problem"], SCHEMA)
    assert accepts(g, 'Took <span class="dosage" ref="1">25 mg</span> &lt;daily&gt; &amp; more')
    bad = [
        "Took 25 mg <daily> & more",  # not escaped: the text was not copied
        "Took 25mg &lt;daily&gt; &amp; more",  # a dropped space
        "Took 25 mg &lt;daily&gt; &amp; more and more",  # invented text
        "Took 25 mg &lt;daily&gt; &amp;",  # stops early
        'Took <span class="route">25 mg</span> &lt;daily&gt; &amp; more',  # type not asked for
        'Took <span class="drug" id="2">25 mg</span> &lt;daily&gt; &amp; more',  # id not next
        'Took <span class="drug">25 mg</span> &lt;daily&gt; &amp; more',  # main without id
        'Took <span class="dosage">25 mg &lt;daily&gt; &amp; more',  # unclosed
        "Took 25 mg</span> &lt;daily&gt; &amp; more",  # nothing to close
        'Took <span class="dosage"></span>25 mg &lt;daily&gt; &amp; more',  # empty span
        'Took<span class="dosage"> 25 mg</span> &lt;daily&gt; &amp; more',  # blank edge
        'Took 25 mg &l<span class="dosage">t;daily</span>&gt; &amp; more',  # inside &lt;
        'Took <span class="dosage" ref="0">25 mg</span> &lt;daily&gt; &amp; more',
        'Took <span class="dosage">2</span>5 mg &lt;daily&gt; &amp; more',  # between digits
        'T<span class="dosage">ook</span> 25 mg &lt;daily&gt; &amp; more',  # inside a word
    ]
    for output in bad:
        assert not accepts(g, output), output


def test_end_is_allowed_only_when_everything_is_copied_and_closed():
    g = MarkupGrammar("fever", ["problem"], SCHEMA)
    state = g.advance_bytes(g.start(), b'<span class="problem" id="1">fever')
    assert state is not None and not g.can_end(state)
    assert g.next_bytes(state) == [ord("<")]
    state = g.advance_bytes(state, b"</span>")
    assert g.can_end(state) and g.next_bytes(state) == []


def test_a_tight_token_budget_stops_new_tags_but_never_the_copy():
    g = MarkupGrammar("chest pain", ["problem"], SCHEMA)
    g.tokens_left = len(g.target) + 3
    assert g.next_bytes(g.start()) == [ord("c")]  # no room for a tag: copy only
    g.tokens_left = None
    assert ord("<") in g.next_bytes(g.start())


WALK_TEXTS = [
    "Took 25 mg <daily> & more",
    "  leading and trailing blanks  ",
    "x",
    "a  b\t\tc\n\nd",
    "α-synuclein 12.5mg/dL — naïve; 100%",
    '<span class="drug">not a tag</span>',
    "Pt c/o CP x3d; BP 120/80, HR 88. Denies SOB.",
]
# What the automaton leaves to the parser on purpose: a ref to an id that never comes, a
# pair the schema forbids, the same span twice. Forbidding them costs entity F1
# (docs/extraction.md, "Relations and duplicates are left to the parser").
RELATION_LEVEL = {"unknown_ref", "disallowed_relation", "duplicate_entity"}


def random_walk(g: MarkupGrammar, rng: random.Random, budget: int | None, tag_bias: float):
    """Bytes a decoder could choose, one token per byte: the walk must never find an
    empty choice before the end, nor run past its budget."""
    state, out = g.start(), bytearray()
    while True:
        g.tokens_left = None if budget is None else budget - len(out) - 1
        options = g.next_bytes(state)
        if g.can_end(state) and (not options or rng.random() < 0.5):
            return bytes(out)
        assert options, f"dead end after {bytes(out)!r}"
        if state[3] is None and ord("<") in options and rng.random() < tag_bias:
            byte = ord("<")
        else:
            byte = rng.choice(options)
        nxt = g.advance(state, byte)
        assert nxt is not None, (bytes(out), byte)
        state = nxt
        out.append(byte)
        assert budget is None or len(out) < budget, f"over budget: {bytes(out)!r}"


@pytest.mark.parametrize("seed", range(6))
def test_every_path_through_the_automaton_is_faithful_markup(seed):
    """Random paths, many of them dense with tags and refs, under no, tight and loose
    token budgets: each ends, within its budget, in markup whose text is the window's and
    whose spans all parse."""
    rng = random.Random(seed)
    docs = [*notes(3), *generate_site("riverside", 3, seed=seed)]
    texts = WALK_TEXTS + [
        ch.text for doc in docs for ch in chunk_document(doc, 40, lambda t: len(t.split())).chunks
    ]
    tags = 0
    for text in texts:
        types = rng.sample(SCHEMA.entity_types, rng.randint(1, len(SCHEMA.entity_types)))
        for budget_extra, bias in ((None, 0.6), (0, 0.9), (40, 0.9), (400, 0.3)):
            g = MarkupGrammar(text, types, SCHEMA)
            budget = None if budget_extra is None else g.token_budget(budget_extra)
            output = random_walk(g, rng, budget, bias).decode("utf-8")
            parsed = parse(output, text, SCHEMA, types)
            assert not set(parsed.issues) - RELATION_LEVEL, (output, parsed.issues)
            assert len(parsed.entities) == len({(e.start, e.end, e.type) for e in parsed.entities})
            tags += output.count("<span")
    assert tags > 500  # the walks are dense with tags, refs and nesting
