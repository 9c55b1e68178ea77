"""The faithful-markup automaton: gold markup is in its language, unfaithful text is not."""

from fedmedlora.data.chunking import chunk_document
from fedmedlora.data.schema import load_schema
from fedmedlora.data.synthetic import generate_site
from fedmedlora.task.markup import serialize
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
