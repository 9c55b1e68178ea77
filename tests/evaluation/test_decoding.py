"""Copy-constrained decoding and copy speculation."""

import time
from collections import Counter

import pytest
import torch
from transformers import DynamicCache

from fedmedlora.data.document import Document
from fedmedlora.data.schema import load_schema
from fedmedlora.evaluation.decoding import (
    ConstrainedDecoder,
    DecodeStats,
    _BlockWidth,
    _Row,
    constrained_generate,
    vocabulary,
)
from fedmedlora.evaluation.inference import GenerationSettings, extract
from fedmedlora.evaluation.metrics import score_corpus
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    merged_lora,
)
from fedmedlora.task.markup import _strip_markup, serialize
from fedmedlora.task.markup_grammar import MarkupGrammar
from fedmedlora.task.prompt import PromptStyle, prompt_ids
from tests.fixtures import notes

CPU = torch.device("cpu")
SCHEMA = load_schema()
ADVERSARIAL = [
    "Naïve café patient: 38.5°C — 日本語テキスト 😀👍 Ωmega",
    "BP   120/80\t\t\tHR  72\n\n\n   SpO2 98 %   ",
    "0123456789 3.14159 -2.5e-3 1,000,000 10^9/L #12-345",
    'Note says <problem>fever</problem> and <span class="drug" id="1">x</span> &amp; &lt;5',
    "https://example.org/" + "a" * 60 + " Pneumonoultramicroscopicsilicovolcanoconiosis",
    "x",
]


def inputs(tok, texts, *, types=None, budget=None, zero_shot=True):
    types = types or SCHEMA.entity_types
    style = PromptStyle(zero_shot=zero_shot)
    prompts = [prompt_ids(tok, t, types, SCHEMA, style) for t in texts]
    grammars = [MarkupGrammar(t, types, SCHEMA) for t in texts]
    budgets = [g.token_budget(budget or 32) for g in grammars]
    return prompts, grammars, budgets


def decode(model, tok, texts, *, k, batch_size, **kwargs):
    prompts, grammars, budgets = inputs(tok, texts, **kwargs)
    return constrained_generate(
        model,
        tok,
        prompts,
        grammars,
        budgets,
        batch_size=batch_size,
        speculate_tokens=k,
        device=CPU,
        precision="fp32",
    )


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random"), load_tokenizer("tiny-random")


def test_vocabulary_bytes_rebuild_the_tokenizers_text():
    tok = load_tokenizer("tiny-random")
    vocab = vocabulary(tok)
    for text in ADVERSARIAL:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert b"".join(vocab.token_bytes[i] for i in ids).decode() == text
    assert vocab.token_bytes[tok.eos_token_id] is None  # specials are never copied text


def test_output_without_tags_is_the_input_on_adversarial_windows(tiny):
    model, tok = tiny
    outputs, stats = decode(model, tok, ADVERSARIAL, k=4, batch_size=3)
    for text, out in zip(ADVERSARIAL, outputs, strict=True):
        issues = Counter()
        plain, _ = _strip_markup(out, issues)
        assert plain == text, out
        assert not +issues
    assert stats.generated_tokens > 0


def test_speculation_gives_exactly_the_constrained_greedy_tokens(tiny):
    model, tok = tiny
    reference, ref_stats = decode(model, tok, ADVERSARIAL, k=0, batch_size=1)
    assert ref_stats.window_forwards == ref_stats.generated_tokens + len(ADVERSARIAL)
    for k, batch in ((3, 4), (8, 6)):
        outputs, stats = decode(model, tok, ADVERSARIAL, k=k, batch_size=batch)
        assert outputs == reference, (k, batch)
        assert stats.generated_tokens == ref_stats.generated_tokens
    assert stats.window_forwards < ref_stats.window_forwards


def test_columns_count_the_shared_prompt_once_and_what_speculation_wastes(tiny):
    model, tok = tiny
    prompts, _, _ = inputs(tok, ADVERSARIAL)
    limit = min(map(len, prompts)) - 1  # every row keeps at least one token of its own
    shared = next((i for i in range(limit) if len({p[i] for p in prompts}) > 1), limit)
    began = time.perf_counter()
    _, plain = decode(model, tok, ADVERSARIAL, k=0, batch_size=1)
    elapsed = time.perf_counter() - began
    assert plain.prompt_tokens == shared + sum(len(p) - shared for p in prompts)
    # one window at a time, one token per pass: nothing padded, nothing rejected
    assert plain.columns == plain.prompt_tokens + plain.generated_tokens
    assert plain.padded_columns == plain.rejected_columns == 0
    assert len(plain.passes) == plain.model_calls
    assert sum(c for c, _ in plain.passes) == plain.columns
    assert 0 < sum(t for _, t in plain.passes) <= elapsed
    _, spec = decode(model, tok, ADVERSARIAL, k=8, batch_size=6)
    assert spec.prompt_tokens == plain.prompt_tokens
    assert spec.generated_tokens == plain.generated_tokens
    # prompts of different lengths are padded together, and proposals are rejected
    assert spec.padded_columns > 0 and spec.rejected_columns > 0
    assert spec.columns == (
        spec.prompt_tokens + spec.generated_tokens + spec.padded_columns + spec.rejected_columns
    )
    assert spec.model_calls < plain.model_calls


@torch.no_grad()
def naive_constrained_greedy(model, tok, texts, **kwargs) -> list[str]:
    """Constrained greedy decoding the slow, obvious way: one window at a time, the whole
    sequence through the model at every step (no cache, no shared prefix, no batch, no
    padding), full logits, the best allowed token. Only the grammar's candidate sets come
    from the decoder under test."""
    decoder = ConstrainedDecoder(model, tok, 0, batch_size=1, device=CPU, precision="fp32")
    outputs = []
    for prompt, grammar, budget in zip(*inputs(tok, texts, **kwargs), strict=True):
        row, tokens = _Row(grammar, grammar.start(), budget, prompt), []
        while len(tokens) < budget:
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1]
            ids = decoder.candidates(row, row.state, len(tokens))
            token = ids[int(logits[ids].argmax())]  # the first (lowest id) on a tie
            if token == tok.eos_token_id:
                break
            row.state = decoder._after(row, row.state, token, len(tokens))
            tokens.append(token)
        outputs.append(b"".join(decoder.vocab.token_bytes[t] for t in tokens).decode())
    return outputs


def test_batched_cached_speculation_equals_the_naive_decoder_with_an_adapter(tiny):
    """The shared prompt prefix, padding holes, rows refilled as others finish, cache
    compaction, projection of allowed rows only and the merged adapter change nothing."""
    _, tok = tiny
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4), seed=1)
    torch.manual_seed(0)
    state = adapter_state(model)
    load_adapter_state(model, {k: torch.randn_like(v) * 0.2 for k, v in state.items()})
    texts = [*ADVERSARIAL[:4], ADVERSARIAL[5], "Aspirin 81 mg daily."]
    reference = naive_constrained_greedy(model, tok, texts, budget=12)
    for k, batch in ((0, 3), (6, 2), (16, 8)):
        with merged_lora(model):
            outputs, _ = decode(model, tok, texts, k=k, batch_size=batch, budget=12)
        assert outputs == reference, (k, batch)


def test_zero_shot_ends_at_the_windows_end_even_with_a_small_budget(tiny):
    model, tok = tiny
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(ADVERSARIAL)]
    settings = GenerationSettings(batch_size=4, max_new_tokens=8, length_factor=1.1)
    preds, stats = extract(
        model,
        tok,
        docs,
        SCHEMA.entity_types,
        SCHEMA,
        max_chunk_tokens=400,
        settings=settings,
        device=CPU,
        precision="fp32",
        style=PromptStyle(zero_shot=True),
    )
    assert stats.chunks == len(docs)
    assert not stats.issues.get("text_drift") and not stats.issues.get("unclosed_tag")
    assert [p.text for p in preds] == ADVERSARIAL
    assert 0 < stats.forward_passes_per_token < 1


class PerfectLM(torch.nn.Module):
    """Logits that put all weight on the gold markup of each prompt's window, as a
    perfect model would: the decoder must reproduce the gold exactly, speculating."""

    def __init__(self, tok, docs):
        super().__init__()
        self.tok = tok
        self.suffix = tok_ids(tok, "<|im_start|>assistant\n")
        self.answers: dict[str, list[int]] = {}
        self.docs = docs

    def target(self, prompt: str) -> list[int]:
        text = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        if text not in self.answers:
            doc = next(d for d in self.docs if text in d.text)
            s = doc.text.index(text)
            ents = [
                x.model_copy(update={"start": x.start - s, "end": x.end - s})
                for x in doc.entities
                if s <= x.start and x.end <= s + len(text)
            ]
            ids = {x.id for x in ents}
            rels = [r for r in doc.relations if r.head in ids and r.tail in ids]
            markup = serialize(text, ents, rels, SCHEMA).markup
            self.answers[text] = [*tok_ids(self.tok, markup), self.tok.eos_token_id]
        return self.answers[text]

    def forward(self, input_ids, attention_mask, cache=None, **_):
        # The "cache" keeps the token ids seen, so the decoder's cache moves apply to it.
        cache = cache if cache is not None else DynamicCache()
        as_keys = input_ids[:, None, :, None].float()
        seen = cache.update(as_keys, as_keys, 0)[0][:, 0, :, 0].long()
        w, offset = input_ids.shape[1], seen.shape[1] - input_ids.shape[1]
        logits = torch.zeros((*input_ids.shape, len(self.tok)))
        for row in range(input_ids.shape[0]):
            for j in range(w):
                visible = seen[row, : offset + j + 1][attention_mask[row, : offset + j + 1] == 1]
                visible = visible.tolist()
                n_prompt = next(
                    (
                        i + len(self.suffix)
                        for i in range(len(visible))
                        if visible[i : i + len(self.suffix)] == self.suffix
                    ),
                    None,
                )
                if n_prompt is None:  # inside the prompt: no prediction needed
                    continue
                prompt = self.tok.decode(visible[:n_prompt], skip_special_tokens=False)
                done = visible[n_prompt:]
                gold = self.target(prompt)
                nxt = gold[len(done)] if gold[: len(done)] == done and len(done) < len(gold) else 0
                logits[row, j, nxt] = 10.0
        return type("Out", (), {"logits": logits, "cache": cache})()


def tok_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_a_perfect_model_is_reproduced_exactly_with_fewer_forward_passes(monkeypatch):
    # The block width follows the timed cost of this run's passes, which a busy machine
    # makes noisy; fix the cost model (a pass's fixed cost = 32 columns, the prior) so
    # the number of passes is deterministic. The tokens never depend on it.
    monkeypatch.setattr(_BlockWidth, "_overhead", lambda self: _BlockWidth.PRIOR_OVERHEAD)
    tok = load_tokenizer("tiny-random")
    docs = notes(4)
    model = PerfectLM(tok, docs)
    preds, stats = extract(
        model,
        tok,
        docs,
        SCHEMA.entity_types,
        SCHEMA,
        max_chunk_tokens=40,
        settings=GenerationSettings(batch_size=3, speculate_tokens=8),
        device=CPU,
        precision="fp32",
    )
    assert not stats.issues
    summary = score_corpus(docs, preds)[0].summary()
    assert summary["entity_strict_f1"] == 1.0 and summary["relation_strict_f1"] == 1.0
    assert stats.forward_passes_per_token < 0.5


def test_block_width_follows_the_cost_of_a_pass_and_the_acceptance_seen():
    width = _BlockWidth(8)
    for _ in range(50):
        width.record(8, 8)  # every proposal accepted
    for columns in (16, 64, 128, 16, 64, 128):
        width.timed(columns, 1.0 + 0.001 * columns)  # a large fixed cost per pass
    assert width.choose([8, 8, 3, 0]) == 8
    width.passes = []
    for columns in (16, 64, 128, 16, 64, 128):
        width.timed(columns, 0.01 * columns)  # cost only per column: feed tokens singly
    assert width.choose([8, 8]) == 0
    rejecting = _BlockWidth(8)
    for _ in range(200):
        rejecting.record(8, 1)  # the second proposal is always refused
    assert rejecting.accepted[1:4] == [200, 0, 0] and rejecting.offered[1:4] == [200, 200, 0]
    assert rejecting.choose([8] * 16) == 1  # default cost: one proposal pays, two do not
    assert rejecting.choose([]) == 0


@pytest.mark.slow
def test_speculation_equals_constrained_greedy_on_smollm2():
    model, tok = load_causal_lm("smollm2-135m"), load_tokenizer("smollm2-135m")
    texts = ["Metoprolol 25 mg; WBC <4 at 38°C.", "BP 120/80, HR 72"]
    reference = naive_constrained_greedy(model, tok, texts, budget=8)
    greedy, ref_stats = decode(model, tok, texts, k=0, batch_size=1, budget=8)
    outputs, stats = decode(model, tok, texts, k=8, batch_size=2, budget=8)
    assert greedy == reference
    assert outputs == reference
    assert stats.window_forwards < ref_stats.window_forwards
    for text, out in zip(texts, outputs, strict=True):
        assert _strip_markup(out, Counter())[0] == text


def test_decode_stats_add_sums_counts_and_keeps_every_pass():
    a = DecodeStats(generated_tokens=3, columns=10, model_calls=1, passes=[(10, 0.5)])
    a.add(DecodeStats(generated_tokens=4, columns=6, rejected_columns=2, passes=[(6, 0.25)]))
    assert (a.generated_tokens, a.columns, a.rejected_columns, a.model_calls) == (7, 16, 2, 1)
    assert a.passes == [(10, 0.5), (6, 0.25)]
