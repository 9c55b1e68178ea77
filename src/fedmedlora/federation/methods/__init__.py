"""Federated LoRA aggregation methods as pure functions over adapter tensors.

One module per method; none imports Flower, so each can be unit-tested on its own and
the strategy only has to pick one and move records around:

- `lora_pairs`: which keys of an adapter state are LoRA (A, B) pairs, which are not.
- `fedmedlora_plus`: Fed-MedLoRA+ data-aware site weights (validation loss, size).
- `exact`: product-exact aggregation of ΔW = Σ p_k s_k B_k A_k, and SVD truncation.
- `ffa`: FFA-LoRA (A frozen at the shared init; only B travels).
- `hetero_rank`: sites with different LoRA ranks (exact aggregate, redistribute).
- `server_opt`: FedAvgM / FedAdam / FedYogi on the aggregated pseudo-gradient.
- `fedprox`: the FedProx proximal term for the site's loss.
- `fedsa`: FedSA-LoRA (A shared, B stays at the site).
- `screening`, `robust`: drop faulty site updates; median, trimmed mean, Krum, clipping.
"""
