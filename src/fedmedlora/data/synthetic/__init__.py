"""Seeded synthetic multi-site clinical notes for the offline demo and the tests.

Three built-in hospitals write differently (narrative discharge summaries, terse progress
notes, medication-list consult notes), see different diseases and annotate different
subsets of the schema; see `generator.py` for the engine and the YAML files for the data.
"""

from fedmedlora.data.synthetic.generator import (
    SYNTHETIC_SITES,
    generate_federation,
    generate_site,
    site_spec,
)
from fedmedlora.data.synthetic.overlap import sentence_overlap, split_sentences

__all__ = [
    "SYNTHETIC_SITES",
    "generate_federation",
    "generate_site",
    "sentence_overlap",
    "site_spec",
    "split_sentences",
]
