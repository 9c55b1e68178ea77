"""Where a run's annotated documents come from: a configured site's files, or the
synthetic demo hospitals. Read by the run config (config.py) and by a site's loader
(data/sites.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticData(_Strict):
    sites: list[str] = Field(default_factory=lambda: ["riverside", "northgate", "lakeside"])
    train_docs: int = Field(40, ge=1)
    test_docs: int = Field(8, ge=1)
    corrupt_labels: dict[str, float] = Field(
        default_factory=dict,
        description="site -> share of its training entity labels reassigned to a wrong "
        "type (robustness experiments)",
    )
    lora_ranks: dict[str, int] = Field(
        default_factory=dict, description="site -> its own LoRA rank (see SiteSource)"
    )


class SiteSource(_Strict):
    """A site's own annotated files (one path or several, e.g. train + dev). Without
    `test`, a seeded `test_fraction` of `train` is held out. `test_windows` evaluates on a
    seeded sample of that many sentence windows instead of whole test documents (for
    budgets where long notes cost too much generation)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    train: str | list[str]
    test: str | list[str] | None = None
    format: str | None = None
    mapping: str | None = None
    entity_types: list[str] | None = None
    relation_types: list[str] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_docs: int | None = Field(None, ge=1)
    max_test_docs: int | None = Field(None, ge=1)
    test_windows: int | None = Field(None, ge=1)
    window_chars: int = Field(240, ge=20)
    keep_dir: str | None = Field(
        None,
        description="a folder at the site for what never leaves it (FedSA: the site's "
        "personalized adapter, in PEFT format)",
    )
    lora_rank: int | None = Field(
        None,
        ge=1,
        description="this site's LoRA rank, by its compute (default: lora.rank, the "
        "server's global rank); ranks may differ only with aggregation method exact",
    )
    corrupt_labels: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of training entity labels reassigned to a wrong type "
        "(robustness experiments; the test split stays clean)",
    )
    strict: bool | None = Field(
        None,
        description="fail on any input problem "
        "(default: for JSONL only; other readers skip and report)",
    )

    @property
    def train_paths(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def test_paths(self) -> list[str]:
        if self.test is None:
            return []
        return [self.test] if isinstance(self.test, str) else list(self.test)

    def resolve_paths(self, base: Path) -> None:
        """Relative data paths are relative to the file that names them (`base` is its
        folder), not to the working directory."""

        def resolve(value: str) -> str:
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        self.train = [resolve(p) for p in self.train_paths]
        if self.test is not None:
            self.test = [resolve(p) for p in self.test_paths]


class DataSettings(_Strict):
    synthetic: SyntheticData | None = None
    sites: list[SiteSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        if (self.synthetic is None) == (not self.sites):
            raise ValueError("give exactly one of data.synthetic or data.sites")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique: {names}")
        return self

    @property
    def site_names(self) -> list[str]:
        return self.synthetic.sites if self.synthetic else [s.name for s in self.sites]

    def site_ranks(self) -> dict[str, int]:
        """The sites that declare a LoRA rank of their own."""
        if self.synthetic:
            return dict(self.synthetic.lora_ranks)
        return {s.name: s.lora_rank for s in self.sites if s.lora_rank is not None}
