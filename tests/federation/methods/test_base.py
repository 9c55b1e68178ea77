"""The method registry: every method registers itself, and no code outside
federation/methods/ decides anything by comparing a method's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedmedlora
from fedmedlora.config import aggregation_settings, parse_config
from fedmedlora.errors import ConfigProblems
from fedmedlora.federation.methods.base import MethodSettings, method, methods

SRC = Path(fedmedlora.__file__).parent


def test_every_method_owns_a_settings_model_tagged_by_its_name():
    known = methods()
    assert next(iter(known)) == "fedmedlora"  # the default first
    for name, cls in known.items():
        assert cls.name == name
        settings = aggregation_settings(method=name)
        assert isinstance(settings, cls.settings_model) and settings.method == name
        assert issubclass(cls.settings_model, MethodSettings)


def test_an_unknown_method_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown aggregation method 'nope'; one of fedmedlora"):
        method("nope")
    with pytest.raises(ConfigProblems, match=r"federation\.aggregation\.method: method must be"):
        parse_config({"federation": {"aggregation": {"method": "nope"}}}, "run.yaml")


def test_a_key_of_another_method_is_refused_naming_the_method():
    raw = {"federation": {"aggregation": {"method": "ffa", "temperature": 0.3}}}
    with pytest.raises(ConfigProblems, match=r"unknown key 'temperature' \(method ffa\)"):
        parse_config(raw, "run.yaml")


def test_old_spellings_still_load_with_a_warning():
    with pytest.warns(FutureWarning, match="clip_norm is now max_norm"):
        settings = aggregation_settings(method="norm-clip", clip_norm=0.5)
    assert settings.max_norm == 0.5


def test_no_method_name_is_compared_outside_the_methods_package():
    names = set(methods())
    found = []
    for path in SRC.rglob("*.py"):
        if "federation/methods" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                for op in operands:
                    values = op.elts if isinstance(op, ast.Tuple | ast.List | ast.Set) else [op]
                    for v in values:
                        if isinstance(v, ast.Constant) and v.value in names:
                            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {v.value!r}")
    assert not found, found
