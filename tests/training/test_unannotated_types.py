"""train.mask_unannotated_types: at a tag's type name, the types a site does not annotate
leave the softmax (and nothing else changes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmedlora.config import parse_config
from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import LoraSettings, add_lora
from fedmedlora.task.markup import type_starts
from fedmedlora.training.batching import collate
from fedmedlora.training.examples import build_examples, type_first_tokens
from fedmedlora.training.loop import causal_lm_loss
from tests.fixtures import notes

SITE = SiteSpec(name="b", entity_types=["drug", "problem"])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-random")


@pytest.fixture(scope="module")
def masked(tok):
    return build_examples(
        notes(4), SITE, load_schema(), tok, max_chunk_tokens=200, mask_unannotated=True
    )


def test_type_starts_point_at_each_type_name():
    markup = 'a <span class="drug" id="1">x</span> <span class="dosage" ref="1">5</span>'
    assert [markup[i : i + 4] for i in type_starts(markup)] == ["drug", "dosa"]


def test_type_positions_hold_the_gold_type_token(tok, masked):
    first = type_first_tokens(tok, load_schema().entity_types)
    assert set(first) == set(load_schema().entity_types)
    assert masked.unmasked_type_positions == 0
    for ex in masked.examples:
        text = tok.decode(ex.target_ids)
        assert len(ex.type_positions) == text.count('class="')
        golds = {ex.target_ids[p] for p in ex.type_positions}
        assert golds <= {first["drug"], first["problem"]}
        assert not golds & set(ex.excluded_ids)
        # Types this site does not annotate are excluded: dosage, test, negation, ...
        assert {first["dosage"], first["test"], first["negation"]} <= set(ex.excluded_ids)


def test_masking_is_off_by_default(tok):
    plain = build_examples(notes(2), SITE, load_schema(), tok, max_chunk_tokens=200)
    assert all(not ex.type_positions and not ex.excluded_ids for ex in plain.examples)
    assert "excluded" not in collate(plain.examples, pad_id=0)
    cfg = parse_config({"train": {"mask_unannotated_types": True}}, "test")
    assert cfg.recipe().train.mask_unannotated_types is True


def test_loss_leaves_the_excluded_tokens_out_of_the_softmax_at_type_positions(tok, masked):
    torch.manual_seed(0)
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4, dropout=0.0), seed=0)
    batch = collate(masked.examples[:3], pad_id=tok.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs).logits.float()
    # The reference, written out: the logit at column c - 1 predicts label column c.
    expected = logits.clone()
    for row, column, token in batch["excluded"].tolist():
        expected[row, column - 1, token] = float("-inf")
    labels = batch["labels"]
    want = F.cross_entropy(expected[:, :-1].reshape(-1, expected.shape[-1]),
                           labels[:, 1:].reshape(-1), ignore_index=-100)  # fmt: skip
    got = causal_lm_loss(model, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    unmasked = {k: v for k, v in batch.items() if k != "excluded"}
    assert causal_lm_loss(model, unmasked).item() > got.item()  # less mass competes


def test_an_unannotated_type_gets_no_gradient_at_type_positions(tok, masked):
    """Without the mask the site pushes the unannotated type's token down at its type
    positions; with it that logit gets no gradient at all."""
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4, dropout=0.0), seed=0)
    batch = collate(masked.examples[:1], pad_id=tok.pad_token_id)
    row, column, token = batch["excluded"][0].tolist()
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["logits"] = output

    lm_head = model.get_output_embeddings()
    for with_mask in (True, False):
        handle = lm_head.register_forward_hook(keep)
        b = batch if with_mask else {k: v for k, v in batch.items() if k != "excluded"}
        model.zero_grad()
        causal_lm_loss(model, b).backward()
        handle.remove()
        logits = captured["logits"]
        at = column - (b["labels"].shape[1] - logits.shape[1]) - 1
        grad = logits.grad[row, at, token].item()
        if with_mask:
            assert grad == 0.0
        else:
            assert grad > 0  # gradient descent lowers the unannotated type's logit
