"""Models: resolving names to local weights, the tiny test model, LoRA adapters."""
