"""The pre-flight check of a run config (`fedmedlora check`, and first thing in `run`,
`demo` and a SuperNode's ClientApp): every mistake that would otherwise surface only
inside a site, after Ray and the server model have started, or never (a `min_sites` no
federation can reach waits forever). Nothing is loaded, built or written; every problem
is reported at once, one `file:line: reason` line each."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fedmedlora.config import (
    FederationSettings,
    RawConfig,
    RunConfig,
    parse_config,
    read_raw,
)
from fedmedlora.data.settings import SiteSource, SyntheticData
from fedmedlora.data.site_check import Findings, check_site, check_types, schema_named
from fedmedlora.errors import ConfigError, ConfigProblems, Problem
from fedmedlora.recipe.settings import ModelSettings

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")


@dataclass
class CheckResult:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found; warnings that do not fail
    config: RunConfig | None = None


def check_run(
    path: str | Path | None,
    overrides: dict | None = None,
    read_data: bool = False,
    site_files: bool = True,
) -> CheckResult:
    """Check the run config at `path` (the built-in demo config when None). `read_data`
    also reads every site's files and counts their documents (what the site will do);
    without `site_files` the sites' files, formats and mappings are left to the sites
    (a deployment's study config, where each SuperNode has its own site config)."""
    result = CheckResult()
    try:
        read = read_raw(path, overrides)
    except ConfigProblems as exc:
        result.problems += exc.problems
        return result
    except ConfigError as exc:  # (read_raw names its problems; this is a safety net)
        result.problems.append(Problem(str(path or "built-in demo config"), 0, str(exc)))
        return result
    seed = read.raw.get("seed", 0)
    ctx = Findings(
        read.where,
        read.lines,
        result.problems,
        result.notes,
        read.overrides,
        seed if isinstance(seed, int) else 0,
    )
    try:
        result.config = parse_config(read.raw, read.where, read.lines, read.overrides)
    except ConfigProblems as exc:
        result.problems += exc.problems
    _check_parts(read, ctx, read_data, site_files)
    result.problems.sort(key=lambda p: (p.path != read.where, p.line))
    return result


def preflight(
    path: str | Path | None, overrides: dict | None = None, site_files: bool = True
) -> RunConfig:
    """The config `run`/`demo` (and, without `site_files`, a deployment's ServerApp) use,
    or ConfigProblems listing everything wrong with it."""
    from fedmedlora.config import _resolve_paths

    result = check_run(path, overrides, site_files=site_files)
    where = str(path) if path is not None else "built-in demo config"
    if result.problems or result.config is None:
        raise ConfigProblems(result.problems, f"{where}: invalid run config")
    return _resolve_paths(result.config, Path(where).parent if path else Path.cwd())


def _part(model: type[BaseModel], raw: object) -> BaseModel | None:
    """One section validated on its own, so that a mistake elsewhere in the file does not
    hide this section's problems (pydantic already reported its own errors)."""
    raw = raw if raw is not None else {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        if not isinstance(raw, dict):
            return None
        bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
    try:  # the faulty keys left to their defaults, to check the rest
        return model.model_validate({k: v for k, v in raw.items() if k not in bad})
    except ValidationError:
        return None


def _section(raw: dict, *keys: str) -> object:
    node: object = raw
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _check_parts(read: RawConfig, ctx: Findings, read_data: bool, site_files: bool) -> None:
    raw = read.raw
    schema = schema_named(raw.get("schema", "clinical"), ctx)
    model = _part(ModelSettings, raw.get("model"))
    if isinstance(model, ModelSettings):
        _check_model(model, raw, ctx)
    sites, synthetic = _section(raw, "data", "sites"), _section(raw, "data", "synthetic")
    n_sites = 0
    if isinstance(sites, list) and sites:
        n_sites = len(sites)
        for i, entry in enumerate(sites):
            source = _part(SiteSource, entry)
            if isinstance(source, SiteSource) and site_files:
                source.resolve_paths(read.base)
                check_site(source, schema, ctx, ("data", "sites", i), read_data)
            elif isinstance(source, SiteSource):
                check_types(source, schema, ctx, ("data", "sites", i))
    elif synthetic is not None or not isinstance(raw.get("data"), dict):
        syn = _part(SyntheticData, synthetic)  # no data section: the default hospitals
        if isinstance(syn, SyntheticData):
            n_sites = len(syn.sites)
            _check_synthetic(syn, ctx)
    server = _section(raw, "federation", "aggregation", "server_validation")
    if isinstance(server, dict):
        source = _part(SiteSource, server)
        if isinstance(source, SiteSource):
            source.resolve_paths(read.base)
            loc = ("federation", "aggregation", "server_validation")
            check_site(source, schema, ctx, loc, read_data)
    fed = _part(FederationSettings, raw.get("federation"))
    if isinstance(fed, FederationSettings) and n_sites:
        _check_federation(fed, n_sites, ctx)


def _check_model(model: ModelSettings, raw: dict, ctx: Findings) -> None:
    from fedmedlora.model.registry import SHORT_NAMES, existing_model_dir

    name, loc = model.name, ("model", "name")
    want = "causal-lm" if model.task == "generative" else "encoder"
    entry = SHORT_NAMES.get(name)
    path = Path(name).expanduser()
    if entry is not None:
        if entry.kind != want:
            ctx.add(loc, f"{name} is an {entry.kind} model; model.task {model.task} needs a {want}")
    elif path.exists():
        if not (path / "config.json").is_file():
            ctx.add(loc, f"{path} is not a Hugging Face model folder (no config.json)")
    elif name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        ctx.add(
            loc,
            f"{name!r} is no folder, short name ({', '.join(SHORT_NAMES)}) or hub id",
        )
    elif existing_model_dir(name) is None:
        ctx.notes.append(
            f"note: model {name!r} is not a short name or local folder: it will be "
            "downloaded from the Hugging Face hub (every site needs network access)"
        )
    if model.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ctx.notes.append(
                f"note: model.device {model.device}: no CUDA device is visible on this machine"
            )
    _check_targets(name, model.task, _section(raw, "lora", "target_modules"), ctx)


def _check_targets(name: str, task: str, targets: object, ctx: Findings) -> None:
    """LoRA target modules against the model's architecture, from its config.json alone
    (checked only when the model is already on this machine; nothing is fetched)."""
    if targets is None or targets == "all-linear" or not isinstance(targets, str | list):
        return
    from fedmedlora.model.registry import existing_model_dir

    folder = existing_model_dir(name)
    if folder is None:
        return
    from fedmedlora.model.loading import meta_model
    from fedmedlora.model.lora import unmatched_targets

    try:
        missing = unmatched_targets(meta_model(folder, task), targets)
    except (OSError, ValueError) as exc:
        ctx.add(("model", "name"), f"cannot read the model's config.json: {exc}")
        return
    if missing:
        ctx.add(("lora", "target_modules"), f"{missing} name no layer of {name}")


def _check_synthetic(syn: SyntheticData, ctx: Findings) -> None:
    from fedmedlora.data.synthetic import SYNTHETIC_SITES

    loc = ("data", "synthetic")
    unknown = [s for s in syn.sites if s not in SYNTHETIC_SITES]
    if unknown:
        known = ", ".join(SYNTHETIC_SITES)
        ctx.add((*loc, "sites"), f"unknown synthetic sites {unknown}; known: {known}")
    for key in ("corrupt_labels", "lora_ranks"):
        stray = sorted(set(getattr(syn, key)) - set(syn.sites))
        if stray:
            ctx.add((*loc, key), f"names sites not in data.synthetic.sites: {stray}")


def _check_federation(fed: FederationSettings, n_sites: int, ctx: Findings) -> None:
    if fed.min_sites is not None and fed.min_sites > n_sites:
        ctx.add(
            ("federation", "min_sites"),
            f"{fed.min_sites} sites required but only {n_sites} configured: "
            "the server would wait for them forever",
        )
    # Flower samples int(n x fraction_train) sites a round, and at least one.
    per_round = max(1, int(n_sites * fed.fraction_train))
    if fed.screening.min_updates > per_round:
        ctx.add(
            ("federation", "screening", "min_updates"),
            f"{fed.screening.min_updates} accepted updates needed but at most {per_round} "
            "site(s) train a round: every round would be skipped",
        )
    for key, reason in fed.aggregation.site_problems(n_sites):
        ctx.add(("federation", "aggregation", key), reason)


def summary(result: CheckResult) -> str:
    """The one-line OK of a clean check."""
    c = result.config
    assert c is not None
    return (
        f"OK: {c.name}: model {c.model.name}, {len(c.data.site_names)} sites "
        f"({', '.join(c.data.site_names)}), {c.federation.rounds} round(s), "
        f"aggregation {c.federation.aggregation.method}"
    )
