"""What an aggregation method is, and the registry of them (as PEFT registers tuners).

A method is one module in this package: a `MethodSettings` model (its keys under
`federation.aggregation`, tagged by `method`) and a `Method` subclass registered with
`@register`. Every module here is imported on the first lookup, so a new method is one
new file; nothing outside this package names a method.

Server hooks: what goes down (`downlink`), what comes back (`uplink`), the full adapter
(`full`), site weights (`weights`), how replies combine (`combine`), its state for
checkpoints (`state`/`load_state`) and what the run saves (`save`). Site hooks (a site
knows only the method's name): what it freezes (`site_freeze`) and keeps local
(`kept_local`). Screening, the weight cap and differential privacy wrap every method
(federation/aggregator.py); DP replaces the average of `Averaging` methods only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from fedmedlora.federation.aggregation import State, head_rows_from_trainers, weighted_average
from fedmedlora.model.lora import LoraSettings, save_adapter

DEFAULT_METHOD = "fedmedlora"


class MethodSettings(BaseModel):
    """A method's keys under `federation.aggregation`; subclasses fix `method` to their
    name (a Literal) and add their own knobs."""

    model_config = ConfigDict(extra="forbid")

    method: str

    def configure(self, config: Any) -> None:
        """Fill in or check the run config's site settings the method needs (called by
        the run config's validator)."""

    @property
    def needs_site_validation(self) -> bool:
        """Whether every training reply must carry the site's validation loss."""
        return False

    def server_data(self) -> Any:
        """Annotated documents the server holds (a SiteSource), if the method uses any."""
        return None

    def site_problems(self, n_sites: int) -> list[tuple[str, str]]:
        """(key, reason) for each setting `n_sites` configured sites cannot satisfy."""
        return []


@dataclass
class SiteUpdate:
    """One site's reply, decoded: its adapter tensors (as sent) and its numbers."""

    site: str
    state: dict[str, torch.Tensor]
    num_examples: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Round:
    """One round's accepted updates, as a method combines them."""

    number: int
    current: State  # the global adapter as sent this round
    states: list[State]
    weights: list[float]  # capped, summing to 1
    cap: Callable[[int], float]  # the largest share one of n weighted updates may get


@dataclass
class Combined:
    """The next global adapter (as sent) and, when the method did not use `weights` as
    given, each update's real share (logged as the round's weights)."""

    state: dict[str, torch.Tensor]
    weights: list[float] | None = None


class Method:
    """An aggregation method; the defaults are Fed-MedLoRA's (every tensor travels)."""

    name: ClassVar[str]
    settings_model: ClassVar[type[MethodSettings]]
    summary: ClassVar[str] = ""  # one line for `--aggregation` help and docs
    lower_rank: ClassVar[bool] = False  # sites may train LoRA ranks of their own
    supports_dp: ClassVar[bool] = False  # DP-FedAvg may replace the aggregate
    # Site hooks: a predicate over parameter names to freeze, over keys to keep local.
    site_freeze: ClassVar[Callable[[str], bool] | None] = None
    kept_local: ClassVar[Callable[[str], bool] | None] = None

    def __init__(
        self,
        settings: MethodSettings,
        lora: LoraSettings,
        initial: State,
        server_loss: Callable[[dict[str, torch.Tensor]], float] | None = None,
    ) -> None:
        self.settings = settings
        self.lora = lora
        self.initial = initial
        self.server_loss = server_loss

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        """What the server sends, from a full adapter."""
        return dict(full)

    def uplink(self, sent: State) -> dict[str, torch.Tensor]:
        """What sites send back, of what the server sent."""
        return dict(sent)

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        """A complete PEFT adapter from what travels."""
        return dict(sent)

    def weights(self, updates: Sequence[SiteUpdate]) -> list[float]:
        """Each site's share before the cap: its example count over the total."""
        total = sum(u.num_examples for u in updates)
        return [u.num_examples / total for u in updates]

    def combine(self, rnd: Round) -> Combined:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this method (server optimizer moments)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state` returned."""

    def save(self, model: Any, sent: State, out_dir: Path) -> None:
        """Write the run's final adapter (as PEFT's format) under `out_dir`."""
        save_adapter(model, self.full(sent), out_dir / "adapter")


class Averaging(Method):
    """A method whose aggregate is an average of the updates (then, optionally, a step
    from it): DP-FedAvg can replace the average by its clipped, noised one."""

    supports_dp = True

    def average(self, current: State, states: list[State], weights: list[float]) -> dict:
        """The weighted average of every tensor; a head's rows over their trainers."""
        averaged = weighted_average(states, weights)
        return head_rows_from_trainers(current, states, weights, averaged)

    def after_average(self, current: State, averaged: dict) -> dict[str, torch.Tensor]:
        """The next global from the average (a server optimizer's step)."""
        return averaged

    def combine(self, rnd: Round) -> Combined:
        averaged = self.average(rnd.current, rnd.states, rnd.weights)
        return Combined(self.after_average(rnd.current, averaged))


_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` the method named `cls.name`."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"aggregation method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def methods() -> dict[str, type[Method]]:
    """Every registered method by name, the default first, after importing this package's
    modules (each registers its own)."""
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    return {DEFAULT_METHOD: _METHODS[DEFAULT_METHOD], **_METHODS}


def method(name: str) -> type[Method]:
    """The method registered as `name`; ValueError naming the known ones otherwise."""
    known = methods()
    if name not in known:
        raise ValueError(f"unknown aggregation method {name!r}; one of {', '.join(known)}")
    return known[name]


def build(
    settings: MethodSettings,
    lora: LoraSettings,
    initial: State,
    server_loss: Callable[[dict[str, torch.Tensor]], float] | None = None,
) -> Method:
    """The server's instance of the method `settings` configure."""
    return method(settings.method)(settings, lora, initial, server_loss)
