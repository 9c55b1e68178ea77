"""A tiny, randomly initialised causal LM with its own small byte-level tokenizer.

Unit tests and the CI-sized federation need a model that trains in milliseconds and is
bit-identical in every process; it is built from a config, never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> list[str]:
    from fedmedlora.data.schema import load_schema
    from fedmedlora.task.prompt import INSTRUCTION

    schema = load_schema()
    lines = [INSTRUCTION, *schema.main.values()]
    lines += [m.definition for m in schema.modifiers.values()]
    lines += [f'<span class="{t}" id="1"></span> ref="1"' for t in schema.entity_types]
    return lines * 4


def build_tiny(out_dir: Path, seed: int = 0) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _training_text(),
        vocab_size=600,
        min_frequency=2,
        special_tokens=SPECIALS,
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,  # the wrapped `tokenizers.Tokenizer`
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Larger than the usual 0.02 so that frozen embeddings allow peaked logits and a
        # LoRA-only model visibly learns in a few steps.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
