import itertools
import math

import pytest
import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import LoraSettings, adapter_state, add_lora
from fedmedlora.training.batching import IGNORE, batch_order, collate
from fedmedlora.training.examples import build_examples
from fedmedlora.training.loop import TrainSettings, causal_lm_loss, train_steps
from fedmedlora.training.schedule import lr_multiplier
from tests.fixtures import notes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def examples(tok):
    schema = load_schema()
    return build_examples(
        notes(8), SiteSpec.full("a", schema), schema, tok, max_chunk_tokens=200
    ).examples


def test_examples_target_is_markup_then_end_of_turn(tok, examples):
    ex = examples[0]
    target = tok.decode(ex.target_ids[:-1])
    assert target.startswith('Patient with <span class="problem" id="1">')
    assert ex.target_ids[-1] == tok.eos_token_id
    prompt = tok.decode(ex.prompt_ids)
    assert "Patient with" in prompt and "<span" not in prompt.split("user")[-1]


def test_site_types_restrict_the_target(tok):
    schema = load_schema()
    site = SiteSpec(name="b", entity_types=["drug", "problem"])
    ex = build_examples(notes(1), site, schema, tok, max_chunk_tokens=200).examples[0]
    target = tok.decode(ex.target_ids)
    assert "dosage" not in target and 'class="drug"' in target
    assert "Types: problem, drug." in tok.decode(ex.prompt_ids)


def test_collate_left_pads_and_labels_only_the_target(examples):
    batch = collate(examples[:3], pad_id=0)
    width = batch["input_ids"].shape[1]
    for row, ex in enumerate(examples[:3]):
        labels = batch["labels"][row]
        pad = width - len(ex)
        assert batch["input_ids"][row, pad:].tolist() == ex.prompt_ids + ex.target_ids
        assert (labels[: width - len(ex.target_ids)] == IGNORE).all()
        assert labels[width - len(ex.target_ids) :].tolist() == ex.target_ids
        assert batch["attention_mask"][row].sum() == len(ex)
        assert batch["position_ids"][row, pad:].tolist() == list(range(len(ex)))


def test_tail_logits_loss_equals_the_reference_loss(tok, examples):
    """Our loss (left padding, logits for the tail only) equals transformers' own loss on
    each example alone, averaged over target tokens."""
    model = _model()
    batch = collate(examples[:4], pad_id=tok.pad_token_id)
    ours = causal_lm_loss(model, batch).item()
    total, count = 0.0, 0
    for ex in examples[:4]:
        ids = torch.tensor([ex.prompt_ids + ex.target_ids])
        labels = torch.tensor([[IGNORE] * len(ex.prompt_ids) + ex.target_ids])
        n = len(ex.target_ids)
        total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    assert ours == pytest.approx(total / count, rel=1e-4)


def test_batch_order_is_seeded_covers_epochs_and_cycles():
    a = list(batch_order(10, 4, 5, seed=1))
    assert a == list(batch_order(10, 4, 5, seed=1)) != list(batch_order(10, 4, 5, seed=2))
    first_epoch = sorted(i for b in a[:3] for i in b)
    assert first_epoch == list(range(10))
    assert len(a) == 5


def test_schedule_warms_up_decays_and_continues_across_rounds():
    total, warm = 30, 3
    values = [lr_multiplier(s, total, warm, 0.1) for s in range(total)]
    assert values[0] == pytest.approx(1 / 3) and values[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[2:]))
    assert values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 26 / 27)))
    # round 2 of 3 with 10 local steps starts where round 1 ended
    assert lr_multiplier(10, total, warm) < lr_multiplier(9, total, warm)


def _model():
    return add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=8, dropout=0.0), seed=0)


def test_training_learns_and_is_deterministic(tok, examples):
    settings = TrainSettings(learning_rate=3e-3, batch_size=4, local_steps=40, warmup_steps=2)
    model = _model()
    stats = train_steps(
        model,
        examples,
        settings,
        pad_id=tok.pad_token_id,
        start_step=0,
        total_steps=40,
        seed=0,
        device=CPU,
        precision="fp32",
    )
    assert stats.steps == 40 and stats.examples == 160
    assert stats.losses[-1] < 0.5 * stats.losses[0]
    again = _model()
    train_steps(
        again,
        examples,
        settings.model_copy(update={"local_steps": 40}),
        pad_id=tok.pad_token_id,
        start_step=0,
        total_steps=40,
        seed=0,
        device=CPU,
        precision="fp32",
    )
    a, b = adapter_state(model), adapter_state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_one_big_batch(tok, examples):
    def one_step(batch_size, accum):
        model = _model()
        settings = TrainSettings(
            learning_rate=1e-2,
            batch_size=batch_size,
            grad_accum=accum,
            local_steps=1,
            warmup_steps=0,
        )
        train_steps(
            model,
            examples,
            settings,
            pad_id=tok.pad_token_id,
            start_step=0,
            total_steps=1,
            seed=0,
            device=CPU,
            precision="fp32",
        )
        return adapter_state(model)

    big, accumulated = one_step(8, 1), one_step(4, 2)
    assert all(torch.allclose(big[k], accumulated[k], atol=1e-6) for k in big)
    assert any(not torch.equal(big[k], _zero) for k, _zero in adapter_state(_model()).items())
