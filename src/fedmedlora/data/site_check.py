"""A site's data settings checked before anything loads: its files, format, mapping and
types, each problem with its file line. `fedmedlora check` runs it on every site of a run
config (config_check); a SuperNode runs it on its own site config, which is why it lives
here, beside SiteSource, and not with the run config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.settings import SiteSource
from fedmedlora.errors import ConfigError, ConfigProblems, FedMedLoRAError, Problem, user_reason
from fedmedlora.yaml_lines import Loc, line_of, node_lines, yaml_error_line, yaml_reason


@dataclass
class Findings:
    """Where problems and notes go, and how a key path becomes a file line."""

    where: str
    lines: dict
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found; warnings that do not fail
    overrides: dict = field(default_factory=dict)
    seed: int = 0  # the run's, for a site's seeded split when its files are read

    def add(self, loc: Loc, reason: str) -> None:
        dotted = ".".join(str(x) for x in loc)
        text = f"{dotted}: {reason}" if loc else reason
        for key in self.overrides:  # a value given by --set has no line in the file
            if dotted == key or dotted.startswith(key + "."):
                self.problems.append(Problem(f"--set {key}", 0, text))
                return
        self.problems.append(Problem(self.where, line_of(self.lines, loc), text))


def schema_named(name: object, found: Findings) -> Schema | None:
    if not isinstance(name, str):
        return None  # pydantic reports the type
    try:
        return load_schema(name)
    except ConfigError as exc:
        found.add(("schema",), str(exc))
        return None


def check_site(
    source: SiteSource, schema: Schema | None, found: Findings, loc: Loc, read_data: bool = False
) -> None:
    """A site's files, format, mapping and types, as its site would use them."""
    from fedmedlora.data.formats.readers import FORMATS, detect_format

    before = len(found.problems)
    fmt_ok = True
    if source.format is not None and source.format.lower() not in FORMATS:
        found.add(
            (*loc, "format"), f"unknown format {source.format!r}; use one of {', '.join(FORMATS)}"
        )
        fmt_ok = False
    paths_ok = True
    for key, paths in (("train", source.train_paths), ("test", source.test_paths)):
        listed = (*loc, key, 0) in found.lines
        for j, path in enumerate(paths):
            where = (*loc, key, j) if listed else (*loc, key)
            if not Path(path).exists():
                found.add(where, f"{path}: no such file or folder")
                paths_ok = False
            elif source.format is None:
                try:
                    detect_format(path)
                except ConfigError as exc:
                    found.add(where, str(exc))
                    fmt_ok = False
    if source.mapping is not None:
        from fedmedlora.data.mapping import load_mapping

        try:
            load_mapping(source.mapping, schema)
        except ConfigError as exc:
            found.add((*loc, "mapping"), str(exc))
    check_types(source, schema, found, loc)
    clean = len(found.problems) == before and paths_ok and fmt_ok
    if read_data and clean and schema is not None:
        _count_documents(source, schema, found, loc)


def check_types(source: SiteSource, schema: Schema | None, found: Findings, loc: Loc) -> None:
    if schema is None:
        return
    for key in ("entity_types", "relation_types"):
        given = getattr(source, key) or []
        known = schema.entity_types if key == "entity_types" else schema.relation_types
        unknown = [t for t in given if t not in known]
        if unknown:
            found.add(
                (*loc, key), f"{unknown} not in schema {schema.name!r} (known: {', '.join(known)})"
            )


def _count_documents(source: SiteSource, schema: Schema, found: Findings, loc: Loc) -> None:
    from fedmedlora.data.sites import load_source

    try:
        data = load_source(source, schema, seed=found.seed)
    except FedMedLoRAError as exc:
        found.add(loc, f"site {source.name}: {exc}")
        return
    found.notes.append(
        f"site {source.name}: {len(data.train)} training and {len(data.test)} test "
        f"documents, {len(data.problems)} input problem(s), {len(data.warnings)} warning(s)"
    )


def check_site_config(path: str | Path, schema_name: str | None = "clinical") -> SiteSource:
    """A SuperNode's own site config, checked at start like a run config's sites (its
    types against `schema_name`'s, unless None): the SiteSource, or ConfigProblems naming
    every problem with its line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read this site config: {exc}") from None
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = f"not valid YAML: {yaml_reason(exc)}"
        raise ConfigProblems([Problem(str(p), yaml_error_line(exc), reason)], str(p)) from None
    found = Findings(str(p), node_lines(text))
    try:
        source = SiteSource.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            dotted = ".".join(str(x) for x in loc) or "(top)"
            problems.append(
                Problem(str(p), line_of(found.lines, loc), f"{dotted}: {user_reason(e)}")
            )
        raise ConfigProblems(problems, f"{p}: invalid site config") from None
    source.resolve_paths(p.resolve().parent)
    check_site(source, schema_named(schema_name, found) if schema_name else None, found, ())
    if found.problems:
        problems = sorted(found.problems, key=lambda x: x.line)
        raise ConfigProblems(problems, f"{p}: invalid site config")
    return source
