"""Federated LoRA aggregation methods, one module each, none importing Flower.

Each method module holds the method's maths as pure functions over adapter tensors, its
settings model and a `base.Method` subclass registered with `@base.register`; `base`
finds every module of this package, so a new method is one new file here
(docs/architecture.md, "How to add an aggregation method"). Shared pieces:

- `base`: the Method hooks, MethodSettings, the registry.
- `lora_pairs`: which keys of an adapter state are LoRA (A, B) pairs, which are not.
- `exact`: product-exact aggregation of ΔW = Σ p_k s_k B_k A_k, and SVD truncation
  (used by `hetero_rank`, the `exact` method).
- `screening`, `dp`: what wraps every method (faulty replies left out; DP-FedAvg).
"""
