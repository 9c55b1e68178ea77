"""One file describes a run; the CLI and the Flower server app both read it.

Sites see only the "recipe" part (model, LoRA, task, training, generation settings and,
in simulation, where their data is), which the server sends them with each message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fedmedlora.data.settings import SiteSource
from fedmedlora.errors import ConfigProblems, Problem
from fedmedlora.evaluation.tracking import TrackingSettings
from fedmedlora.training.settings import Recipe
from fedmedlora.yaml_lines import line_of, node_lines, yaml_error_line, yaml_reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


AggregationMethod = Literal[
    "fedmedlora",
    "fedmedlora+",
    "ffa",
    "exact",
    "fedsa",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "median",
    "trimmed-mean",
    "multi-krum",
    "norm-clip",
]


class AggregationSettings(_Strict):
    """How the server combines site adapters (docs/aggregation.md compares them)."""

    method: AggregationMethod = "fedmedlora"
    # Fed-MedLoRA+: weights softmax(-validation loss / temperature), mixed with size weights.
    temperature: float = Field(0.5, gt=0)
    size_mix: float = Field(0.0, ge=0, le=1)
    validation: Literal["sites", "server"] = Field(
        "sites",
        description="sites: each site reports the loss on its own held-out documents; "
        "server: the server scores every adapter on `server_validation`",
    )
    server_validation: SiteSource | None = Field(
        None, description="annotated documents the server holds (validation: server)"
    )
    # Server optimizers (FedAvgM, FedAdam, FedYogi) on the aggregated adapter delta.
    server_lr: float | None = Field(None, gt=0, description="default: 1.0 FedAvgM, 0.01 Adam/Yogi")
    server_momentum: float = Field(0.9, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    # Robust aggregation against hostile sites (over the updates; docs/robustness.md).
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: per end")
    krum_f: int = Field(1, ge=0, description="multi-krum: hostile sites tolerated")
    krum_m: int | None = Field(None, ge=1, description="multi-krum: updates averaged")
    clip_norm: float | None = Field(
        None, gt=0, description="norm-clip: L2 bound per update (default: median norm)"
    )

    @model_validator(mode="after")
    def _server_data(self) -> AggregationSettings:
        server = self.method == "fedmedlora+" and self.validation == "server"
        if server and self.server_validation is None:
            raise ValueError("validation: server needs server_validation (the server's data)")
        return self


class ScreeningSettings(_Strict):
    """Faulty replies (NaN/Inf, wrong keys or shapes, an update norm far above the
    others') are left out of a round; the round goes on if enough remain."""

    norm_factor: float = Field(
        10.0, gt=1, description="reject an update whose norm exceeds this x the others' median"
    )
    min_updates: int = Field(
        1, ge=1, description="accepted updates a round needs to aggregate (else skipped)"
    )


class PrivacySettings(_Strict):
    """Client-level differential privacy of the global adapter (docs/privacy.md)."""

    noise_multiplier: float = Field(0.0, ge=0, description="z; 0 turns DP off")
    clip_norm: float = Field(1.0, gt=0, description="C: L2 bound of each site's update")
    target_delta: float = Field(1e-5, gt=0, lt=1, description="the δ that ε is reported at")
    max_epsilon: float | None = Field(
        None, gt=0, description="skip rounds whose release would spend more ε than this"
    )

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


# Methods whose aggregate is an average of the updates, which DP-FedAvg replaces by the
# clipped, equally weighted, noised average (server optimizers then post-process it).
DP_METHODS = ("fedmedlora", "fedprox", "ffa", "fedsa", "fedavgm", "fedadam", "fedyogi")


class FederationSettings(_Strict):
    rounds: int = Field(3, ge=1)
    min_sites: int | None = Field(None, ge=1, description="default: number of configured sites")
    aggregation: AggregationSettings = AggregationSettings()
    screening: ScreeningSettings = ScreeningSettings()
    privacy: PrivacySettings = PrivacySettings()
    fraction_train: float = Field(1.0, gt=0, le=1)
    evaluate_every: int = Field(1, ge=0, description="0: only after the last round")
    evaluate_zero_shot: bool = True
    timeout_s: float = Field(3600, gt=0)
    max_site_weight: float | None = Field(
        None,
        gt=0,
        le=1,
        description="cap on one site's share of the aggregate, renormalised "
        "(default: 0.5 with 3 or more sites in a round, none with fewer; docs/robustness.md)",
    )
    adapter_wire_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16 halves the adapter bytes each way (sites reply alike)"
    )


class SimulationSettings(_Strict):
    client_cpus: float = Field(1, gt=0)
    client_gpus: float | None = Field(None, ge=0, description="default: GPU shared by all sites")
    client_threads: int = Field(1, ge=1)


class RunConfig(Recipe):
    name: str = "run"
    federation: FederationSettings = FederationSettings()
    simulation: SimulationSettings = SimulationSettings()
    # Server-side only: never part of the recipe sent to sites.
    tracking: TrackingSettings = TrackingSettings()

    @model_validator(mode="after")
    def _method_needs(self) -> RunConfig:
        """Site-side settings some methods need, filled in where the user left them out."""
        agg = self.federation.aggregation
        site_validation = agg.method == "fedmedlora+" and agg.validation == "sites"
        if site_validation and self.train.validation_fraction == 0:
            self.train.validation_fraction = 0.1
        if agg.method == "fedprox" and self.train.proximal_mu == 0:
            self.train.proximal_mu = 0.01
        if self.federation.privacy.enabled and agg.method not in DP_METHODS:
            raise ValueError(
                f"differential privacy needs an averaging method ({', '.join(DP_METHODS)}), "
                f"not {agg.method}"
            )
        ranks = self.data.site_ranks()
        unknown = sorted(set(ranks) - set(self.data.site_names))
        if unknown:
            raise ValueError(f"LoRA ranks given for unknown sites {unknown}")
        too_big = {s: r for s, r in ranks.items() if r > self.lora.rank}
        if too_big:
            raise ValueError(
                f"site ranks {too_big} exceed lora.rank {self.lora.rank}, the global rank"
            )
        if any(r != self.lora.rank for r in ranks.values()) and agg.method != "exact":
            raise ValueError(
                f"sites with their own LoRA rank ({ranks}) need aggregation method exact "
                f"(averaging factors of different shapes is undefined), not {agg.method}"
            )
        return self

    def recipe(self) -> Recipe:
        fields = set(Recipe.model_fields)
        recipe = Recipe.model_validate(self.model_dump(include=fields, by_alias=True))
        return recipe.model_copy(update={"threads": self.simulation.client_threads})


def _reason(error: dict) -> str:
    """A pydantic error as a user reads it: the offending key, what was wrong, the value."""
    if error["type"] == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] not in ("missing", "value_error") and not isinstance(value, dict | list):
        shown = repr(value)
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return msg


def parse_config(
    raw: dict,
    where: str,
    lines: dict | None = None,
    overridden: dict | None = None,
) -> RunConfig:
    """Validate `raw`; every problem at once, each naming the file and line (`lines`, from
    `yaml_lines.node_lines`) or the `--set` override it came from."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigProblems(
            [config_problem(e, where, lines or {}, overridden or {}) for e in exc.errors()],
            f"{where}: invalid run config",
        ) from None


def config_problem(error: dict, where: str, lines: dict, overridden: dict) -> Problem:
    loc = tuple(error["loc"])
    dotted = ".".join(str(x) for x in loc) or "(top)"
    for key in overridden:
        if dotted == key or dotted.startswith(key + "."):
            return Problem(f"--set {key}", 0, f"{dotted}: {_reason(error)}")
    return Problem(where, line_of(lines, loc), f"{dotted}: {_reason(error)}")


@dataclass
class RawConfig:
    """A run config file as read, before validation: what `fedmedlora check` inspects."""

    raw: dict
    where: str
    lines: dict
    base: Path
    overrides: dict


def read_raw(path: str | Path | None = None, overrides: dict | None = None) -> RawConfig:
    """The YAML of a run config (the built-in demo config when `path` is None), with dotted
    overrides such as {"federation.rounds": 2} applied. Raises ConfigError."""
    if path is None:
        from importlib import resources

        text = (resources.files("fedmedlora") / "configs" / "demo.yaml").read_text()
        where = "built-in demo config"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigProblems([Problem(str(p), 0, "config file not found")], str(p))
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as exc:
            reason = f"cannot read the config file: {exc}"
            raise ConfigProblems([Problem(str(p), 0, reason)], str(p)) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigProblems(
            [Problem(where, yaml_error_line(exc), f"not valid YAML: {yaml_reason(exc)}")], where
        ) from None
    if not isinstance(raw, dict):
        raise ConfigProblems([Problem(where, 1, "a run config must be a mapping")], where)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                reason = f"{key!r} is not a section"
                raise ConfigProblems([Problem(f"--set {dotted}", 0, reason)], where)
        node[leaf] = value
    base = Path(where).parent if path is not None else Path.cwd()
    return RawConfig(raw, where, node_lines(text), base, dict(overrides or {}))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """A YAML run config (the built-in demo config when `path` is None), with dotted
    overrides such as {"federation.rounds": 2}."""
    read = read_raw(path, overrides)
    config = parse_config(read.raw, read.where, read.lines, read.overrides)
    return _resolve_paths(config, read.base)


def _resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    """Relative data paths are relative to the config file, not the working directory."""
    server_data = config.federation.aggregation.server_validation
    for site in [*config.data.sites, *([server_data] if server_data else [])]:
        site.resolve_paths(base)
    return config
