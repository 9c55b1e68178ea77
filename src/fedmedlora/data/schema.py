"""The target schema as data: which entity types exist, which are main entities or
modifiers, which main entities each modifier may modify, and one definition per type
(used in prompts). Loaded from YAML so a project can bring its own schema."""

from __future__ import annotations

from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from fedmedlora.errors import ConfigError

BUILTIN_SCHEMAS = ("clinical",)


class ModifierSpec(BaseModel):
    definition: str
    modifies: list[str] = Field(min_length=1)


class Schema(BaseModel):
    name: str
    version: int = 1
    main: dict[str, str] = Field(min_length=1)
    modifiers: dict[str, ModifierSpec] = Field(default_factory=dict)
    relations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Schema:
        clash = set(self.main) & set(self.modifiers)
        if clash:
            raise ValueError(f"types declared both main and modifier: {sorted(clash)}")
        for name, spec in self.modifiers.items():
            unknown = [t for t in spec.modifies if t not in self.main]
            if unknown:
                raise ValueError(f"modifier {name!r} modifies unknown main types {unknown}")
        if self.modifiers and not self.relations:
            raise ValueError("a schema with modifiers needs at least one relation type")
        return self

    @cached_property
    def entity_types(self) -> list[str]:
        """Main types first, then modifiers, in file order (a stable order for reports)."""
        return [*self.main, *self.modifiers]

    @property
    def relation_types(self) -> list[str]:
        return list(self.relations)

    @property
    def default_relation(self) -> str | None:
        return next(iter(self.relations), None)

    def is_main(self, entity_type: str) -> bool:
        return entity_type in self.main

    def is_modifier(self, entity_type: str) -> bool:
        return entity_type in self.modifiers

    def definition(self, entity_type: str) -> str:
        if entity_type in self.main:
            return self.main[entity_type]
        return self.modifiers[entity_type].definition

    def can_modify(self, modifier: str, main: str) -> bool:
        spec = self.modifiers.get(modifier)
        return spec is not None and main in spec.modifies

    def check_types(self, entity_types: list[str], relation_types: list[str]) -> None:
        """Raise ConfigError naming types this schema does not define."""
        bad_e = [t for t in entity_types if t not in self.entity_types]
        bad_r = [t for t in relation_types if t not in self.relations]
        if bad_e or bad_r:
            raise ConfigError(
                f"types not in schema {self.name!r}: entities {bad_e} relations {bad_r}; "
                f"known entity types: {', '.join(self.entity_types)}"
            )


def load_schema(name_or_path: str | Path = "clinical") -> Schema:
    """A built-in schema by name, or a YAML file."""
    if str(name_or_path) in BUILTIN_SCHEMAS:
        ref = resources.files("fedmedlora.data") / "schemas" / f"{name_or_path}.yaml"
        text, where = ref.read_text(encoding="utf-8"), f"built-in schema {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"schema {str(name_or_path)!r} is neither a built-in "
                f"({', '.join(BUILTIN_SCHEMAS)}) nor an existing YAML file"
            )
        text, where = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = yaml.safe_load(text)
        return Schema.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid schema: {exc}") from None
