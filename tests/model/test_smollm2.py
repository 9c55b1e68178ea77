"""Real weights: the packaged SmolLM2-135M-Instruct, converted once from GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.synthetic import generate_site, site_spec
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.registry import resolve_model
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import loaded_model
from fedmedlora.training.examples import build_examples
from fedmedlora.training.loop import TrainSettings, train_steps

pytestmark = pytest.mark.slow


def test_converted_checkpoint_is_a_plain_hf_folder():
    folder = Path(resolve_model("smollm2-135m"))
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    tok = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_a_few_lora_steps_reduce_the_extraction_loss():
    recipe = Recipe.model_validate({"lora": {"dropout": 0.0}})
    lm = loaded_model(recipe)
    schema = load_schema()
    examples = build_examples(
        generate_site("lakeside", 6, seed=3),
        site_spec("lakeside"),
        schema,
        lm.tokenizer,
        max_chunk_tokens=48,
    ).examples
    stats = train_steps(
        lm.model,
        examples,
        TrainSettings(learning_rate=2e-3, batch_size=4, local_steps=8, warmup_steps=1),
        pad_id=lm.tokenizer.pad_token_id,
        start_step=0,
        total_steps=8,
        seed=0,
        device=torch.device("cpu"),
        precision=lm.precision,
    )
    assert stats.losses[-1] < 0.6 * stats.losses[0], stats.losses
