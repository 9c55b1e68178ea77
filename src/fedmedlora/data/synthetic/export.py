"""The synthetic sites written out as files, one folder per hospital, so that the
Deployment Engine can be rehearsed on one machine exactly as it runs across sites: each
SuperNode gets a site config pointing at its own JSONL notes, nothing else."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.data.sites import synthetic_site


def export_site(out: Path, name: str, train_docs: int, test_docs: int, seed: int) -> Path:
    """Write `out/name/{train,test}.jsonl` and the site config `out/name/site.yaml`
    (the same split as `data.synthetic` in a run config); returns the site config."""
    data = synthetic_site(name, train_docs, test_docs, seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(data.train, folder / "train.jsonl")
    write_jsonl(data.test, folder / "test.jsonl")
    spec = data.spec
    site = {
        "name": name,
        "train": "train.jsonl",  # relative to this file
        "test": "test.jsonl",
        "format": "jsonl",
        "entity_types": spec.entity_types,
        "relation_types": spec.relation_types,
    }
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path
