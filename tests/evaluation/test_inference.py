import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.evaluation.inference import GenerationSettings, extract
from fedmedlora.evaluation.metrics import score_corpus
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.task.markup import serialize
from tests.fixtures import notes

CPU = torch.device("cpu")


class ScriptedModel:
    """Answers each prompt with the gold markup of its chunk, as a perfect model would."""

    def __init__(self, tokenizer, docs, schema):
        self.tok, self.docs, self.schema, self.calls = tokenizer, docs, schema, 0
        self.shapes: list[tuple[int, int, int, int]] = []  # rows, prompt width, out width, real

    def answer(self, chunk: str) -> str:
        doc = next(d for d in self.docs if chunk in d.text)
        s = doc.text.index(chunk)
        e = s + len(chunk)
        ents = [
            x.model_copy(update={"start": x.start - s, "end": x.end - s})
            for x in doc.entities
            if s <= x.start and x.end <= e
        ]
        ids = {x.id for x in ents}
        rels = [r for r in doc.relations if r.head in ids and r.tail in ids]
        return serialize(chunk, ents, rels, self.schema).markup

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        self.calls += 1
        rows = []
        for row, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tok.decode(row[mask.bool()])
            text = prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
            ids = self.tok(self.answer(text), add_special_tokens=False)["input_ids"]
            rows.append([*ids, self.tok.eos_token_id])
        width = max(map(len, rows))
        pad = torch.full((len(rows), width), self.tok.pad_token_id)
        for i, r in enumerate(rows):
            pad[i, : len(r)] = torch.tensor(r)
        self.shapes.append((len(rows), input_ids.shape[1], width, int(attention_mask.sum())))
        return torch.cat([input_ids, pad], dim=1)


def test_extraction_path_recovers_gold_from_perfect_outputs():
    schema, tok = load_schema(), load_tokenizer("tiny-random")
    docs = notes(5)
    model = ScriptedModel(tok, docs, schema)
    preds, stats = extract(
        model,
        tok,
        docs,
        schema.entity_types,
        schema,
        max_chunk_tokens=40,
        settings=GenerationSettings(batch_size=4, constrained=False),
        device=CPU,
        precision="fp32",
    )
    assert stats.chunks > len(docs) and model.calls == -(-stats.chunks // 4)
    assert not stats.issues
    assert stats.forward_passes >= stats.generated_tokens > 0
    # generate computes every row of a batch at every step, finished or not, and never
    # feeds the last token it writes
    cols = stats.decoding
    assert cols.columns == sum(r * p + r * (w - 1) for r, p, w, _ in model.shapes)
    assert cols.prompt_tokens == sum(real for *_, real in model.shapes)
    assert cols.columns > cols.prompt_tokens + cols.generated_tokens
    # prompt padding and the steps a finished row waits (EOS, then padding) hold no
    # token of the window; every other column is a prompt token or an output token (each
    # output here ends with EOS, so every output token is fed back)
    assert cols.columns - cols.padded_columns == cols.prompt_tokens + cols.generated_tokens
    assert cols.padded_columns > 0
    scores, _ = score_corpus(docs, preds)
    summary = scores.summary()
    assert summary["entity_strict_f1"] == 1.0 and summary["relation_strict_f1"] == 1.0


def test_real_generation_on_tiny_model_gives_valid_documents():
    schema, tok = load_schema(), load_tokenizer("tiny-random")
    model = load_causal_lm("tiny-random")
    docs = notes(3)
    preds, stats = extract(
        model,
        tok,
        docs,
        ["problem", "drug"],
        schema,
        max_chunk_tokens=30,
        settings=GenerationSettings(batch_size=2, max_new_tokens=16),
        device=CPU,
        precision="fp32",
    )
    assert [p.id for p in preds] == [d.id for d in docs]
    assert stats.generated_tokens > 0
    for p in preds:
        assert p.consistency_problems() == []
        assert all(e.type in {"problem", "drug"} for e in p.entities)
