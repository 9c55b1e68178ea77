"""fedmedlora: federated LoRA fine-tuning of LLMs for clinical information extraction."""

__version__ = "0.1.0"
