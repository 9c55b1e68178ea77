"""One file describes a run; the CLI and the Flower server app both read it.

Sites see only the "recipe" part (model, LoRA, task, training, generation settings and,
in simulation, where their data is), which the server sends them with each message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from fedmedlora.data.settings import SiteSource
from fedmedlora.errors import ConfigProblems, Problem, user_reason
from fedmedlora.evaluation.tracking import TrackingSettings
from fedmedlora.federation.methods.base import DEFAULT_METHOD, MethodSettings
from fedmedlora.federation.methods.base import method as aggregation_method
from fedmedlora.federation.methods.base import methods as aggregation_methods
from fedmedlora.federation.methods.dp import PrivacySettings
from fedmedlora.federation.methods.fedmedlora import FedMedLoRASettings
from fedmedlora.federation.methods.screening import ScreeningSettings
from fedmedlora.recipe.settings import Recipe
from fedmedlora.yaml_lines import line_of, node_lines, yaml_error_line, yaml_reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _aggregation_settings() -> Any:
    """`federation.aggregation`: the settings model of the method it names (each method's
    module owns its model, federation/methods/), chosen by its `method` key."""
    models = [Annotated[m.settings_model, Tag(name)] for name, m in aggregation_methods().items()]
    return Annotated[
        Union[tuple(models)],  # noqa: UP007 (a Union built at run time)
        Discriminator(
            lambda v: v.get("method", DEFAULT_METHOD) if isinstance(v, dict) else v.method,
            custom_error_type="unknown_method",
            custom_error_message=f"method must be one of {', '.join(aggregation_methods())}",
        ),
    ]


AggregationSettings = _aggregation_settings()
__all__ = [
    "AggregationSettings",
    "PrivacySettings",
    "RunConfig",
    "ScreeningSettings",
    "SiteSource",
    "aggregation_settings",
]


def aggregation_settings(**raw: Any) -> MethodSettings:
    """`federation.aggregation` from its keys, e.g. aggregation_settings(method="ffa")."""
    return TypeAdapter(AggregationSettings).validate_python(raw)


class FederationSettings(_Strict):
    rounds: int = Field(3, ge=1)
    min_sites: int | None = Field(None, ge=1, description="default: number of configured sites")
    aggregation: AggregationSettings = Field(default_factory=FedMedLoRASettings)
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
        agg.configure(self)
        method = aggregation_method(agg.method)
        if self.federation.privacy.enabled and not method.supports_dp:
            dp = [name for name, m in aggregation_methods().items() if m.supports_dp]
            raise ValueError(
                f"differential privacy needs an averaging method ({', '.join(dp)}), "
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
        if any(r != self.lora.rank for r in ranks.values()) and not method.lower_rank:
            lower = [name for name, m in aggregation_methods().items() if m.lower_rank]
            raise ValueError(
                f"sites with their own LoRA rank ({ranks}) need aggregation method "
                f"{' or '.join(lower)} (averaging factors of different shapes is undefined), "
                f"not {agg.method}"
            )
        return self

    def recipe(self) -> Recipe:
        fields = set(Recipe.model_fields)
        recipe = Recipe.model_validate(self.model_dump(include=fields, by_alias=True))
        return recipe.model_copy(update={"threads": self.simulation.client_threads})


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
    loc, of_method = tuple(error["loc"]), ""
    if loc[:2] == ("federation", "aggregation") and len(loc) > 2:  # the union's tag
        loc, of_method = loc[:2] + loc[3:], f" (method {loc[2]})"
    elif error["type"] == "unknown_method":
        loc += ("method",)
    dotted = ".".join(str(x) for x in loc) or "(top)"
    reason = f"{dotted}: {user_reason(error)}{of_method}"
    for key in overridden:
        if dotted == key or dotted.startswith(key + "."):
            return Problem(f"--set {key}", 0, reason)
    return Problem(where, line_of(lines, loc), reason)


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
    server_data = config.federation.aggregation.server_data()
    for site in [*config.data.sites, *([server_data] if server_data else [])]:
        site.resolve_paths(base)
    return config
