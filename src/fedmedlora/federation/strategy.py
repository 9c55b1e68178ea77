"""Fed-MedLoRA as a Flower strategy: FedAvg's sampling and messaging, plus

- every reply checked against the egress rules (privacy.check_reply) and every field of
  it for sense (replies.py) before use; a reply that fails is left out of its round,
- each site name bound to the first node that answers as it, for the whole run,
- aggregation by the configured method (`aggregator.Aggregator`, pure tensor code;
  Fed-MedLoRA's weighted average by default),
- per-site evaluation kept (FedAvg would average metrics away), as metric counts,
- the wire size of every message, down and up, per round,
- a round whose aggregation fails for any reason skipped, the global adapter kept.

Everything left out is logged with round, site and reason, and kept in `rejected` (which
results.json records as `rejected_replies`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedmedlora.evaluation.inference import INFERENCE_METRICS
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.federation.aggregator import Aggregator, SiteUpdate
from fedmedlora.federation.messages import (
    ARRAYS,
    CONFIG,
    SITE,
    from_record,
    to_record,
    wire_bytes,
)
from fedmedlora.federation.methods.dp import PrivacyBudgetExhausted
from fedmedlora.federation.methods.screening import NotEnoughSites
from fedmedlora.federation.privacy import ALLOWED_CONFIG, EgressViolation, check_reply
from fedmedlora.federation.replies import (
    CountNames,
    InvalidReply,
    check_eval_metrics,
    check_train_metrics,
    decode_arrays,
)

NUM_EXAMPLES = "num-examples"


@dataclass
class Reply:
    """A reply that passed every check, decoded."""

    site: str
    node: int
    metrics: dict[str, float]
    state: dict[str, torch.Tensor] | None = None


class FedMedLoRA(FedAvg):
    def __init__(
        self,
        adapter_shapes: dict[str, tuple[int, ...]],
        *,
        aggregator: Aggregator,
        min_sites: int,
        fraction_train: float = 1.0,
        evaluate_every: int = 1,
        num_rounds: int = 1,
        on_evaluated: Callable[[int, dict[str, Scores]], None] | None = None,
        on_trained: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
        on_round_end: Callable[[int, ArrayRecord | None], None] | None = None,
        round_offset: int = 0,
        count_names: CountNames | None = None,
        sites: Iterable[str] | None = None,
        wire_dtype: str = "float32",
    ):
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=min_sites if fraction_train == 1.0 else 1,
            min_evaluate_nodes=min_sites,
            min_available_nodes=min_sites,
            weighted_by_key=NUM_EXAMPLES,
            arrayrecord_key=ARRAYS,
            configrecord_key=CONFIG,
        )
        self.adapter_shapes = adapter_shapes
        self.wire_dtype = wire_dtype
        self.aggregator = aggregator
        self.current: dict | None = None  # the global adapter (as sent) of this round
        self.evaluate_every = evaluate_every
        self.num_rounds = num_rounds
        self.on_evaluated = on_evaluated
        self.on_trained = on_trained
        # Called after every round's aggregation and evaluation (checkpoints).
        self.on_round_end = on_round_end
        # Rounds already done before this start() (a resumed run): Flower counts from 1.
        self.round_offset = round_offset
        self.global_arrays: ArrayRecord | None = None
        # round -> phase ("train"/"evaluate") -> direction -> bytes
        self.traffic: defaultdict[int, dict] = defaultdict(
            lambda: {p: {"down": 0, "up": 0, "messages": 0} for p in ("train", "evaluate")}
        )
        self.rejected: list[str] = []
        # (round, phase) -> nodes a message went to; node -> the site it answered as
        self.awaiting: dict[tuple[int, str], set[int]] = {}
        # Each site name is bound to the node that first answered as it (and the reverse)
        # for the whole run: no node can answer for another site, or change its name.
        self.node_sites: dict[int, str] = {}
        self.site_nodes: dict[str, int] = {}
        # The per-type evaluation counts a reply may carry (the schema's types).
        self.count_names = count_names or CountNames()
        # The site names the run config names (data.sites): no node may answer as another.
        self.sites = frozenset(sites) if sites is not None else None
        self.train_metrics: dict[int, dict[str, dict[str, float]]] = {}
        # round -> site -> inference.INFERENCE_METRICS (speed of the evaluation)
        self.eval_inference: dict[int, dict[str, dict[str, float]]] = {}

    def run_round(self, flower_round: int) -> int:
        """The run's round number of Flower's: Flower counts from 1 at each start(), a
        resumed run continues after the rounds done before; 0 is the zero-shot
        evaluation (the server app's own call)."""
        return flower_round + self.round_offset if flower_round > 0 else 0

    def state(self) -> dict:
        """What a resumed run needs (see federation/checkpoint.py)."""
        return {
            "traffic": dict(self.traffic),
            "rejected": self.rejected,
            "train_metrics": self.train_metrics,
        }

    def load_state(self, state: dict, rounds_done: int) -> None:
        """Continue after `rounds_done` rounds with what `state` returned."""
        self.traffic.update(state["traffic"])
        self.rejected = state["rejected"]
        self.train_metrics = state["train_metrics"]
        self.round_offset = rounds_done

    # --- accounting -------------------------------------------------------------------
    def _count(
        self, server_round: int, phase: str, direction: str, messages: Iterable[Message]
    ) -> list[Message]:
        messages = list(messages)
        slot = self.traffic[server_round][phase]
        for m in messages:
            slot[direction] += wire_bytes(m)
            if direction == "down":
                slot["messages"] += 1
        if direction == "down":
            self.awaiting[server_round, phase] = {m.metadata.dst_node_id for m in messages}
        else:
            self._report_missing(server_round, phase, messages)
        return messages

    def _reject(self, reason: str) -> None:
        """Every reply left out is logged and kept for results.json, with its reason."""
        log(WARNING, reason)
        self.rejected.append(reason)

    def _who(self, node: int, content: RecordDict | None = None) -> str:
        """The node and its site: the one it is bound to, else the one it claims (when the
        claim is a well-formed name; it is not trusted either way)."""
        site = self.node_sites.get(node)
        if site:
            return f"site {site} (node {node})"
        try:
            claimed = str(content.config_records[SITE][SITE]) if content is not None else ""
        except Exception:  # a reply with no (readable) site name
            claimed = ""
        if ALLOWED_CONFIG[SITE].match(claimed):
            return f"node {node} (claims site {claimed})"
        return f"node {node}"

    def _report_missing(self, server_round: int, phase: str, replies: list[Message]) -> None:
        """Flower drops a reply that did not come within the round's timeout (a site that
        hangs, is cut off, or whose process died); say which site it was."""
        missing = self.awaiting.pop((server_round, phase), set())
        missing -= {m.metadata.src_node_id for m in replies}
        for node in sorted(missing):
            self._reject(
                f"round {server_round} {phase}: {self._who(node)} sent no reply within the "
                "timeout (federation.timeout_s), left out"
            )

    def _accepted(self, server_round: int, replies: Iterable[Message], train: bool) -> list[Reply]:
        """The replies that carry no error, pass the egress check and every field check,
        and come from the node their site name is bound to; the others are rejected."""
        phase = "train" if train else "evaluate"
        checked: list[Reply] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            content = None if msg.has_error() else msg.content
            where = f"round {server_round} {phase}: {self._who(node, content)}"
            if msg.has_error():
                self._reject(f"{where}: failed: {msg.error.reason}")
                continue
            try:
                reply = self._check(node, msg.content, train)
            except (EgressViolation, InvalidReply) as exc:
                self._reject(f"{where}: rejected reply: {exc}")
                continue
            except Exception as exc:  # anything else a crafted reply may raise
                self._reject(f"{where}: rejected reply: unreadable ({type(exc).__name__}: {exc})")
                continue
            checked.append(reply)
        return self._bound(server_round, phase, checked)

    def _check(self, node: int, content, train: bool) -> Reply:
        """The reply decoded, or EgressViolation / InvalidReply saying what is wrong."""
        lower_rank = self.aggregator.method.lower_rank
        check_reply(content, self.adapter_shapes if train else None, lower_rank=lower_rank)
        if len(content.metric_records) != 1:
            raise EgressViolation("expected exactly one metric record")
        if train and len(content.array_records) != 1:
            raise EgressViolation("expected exactly one array record")
        site_rec = content.config_records.get(SITE)
        if len(content.config_records) != 1 or site_rec is None or SITE not in site_rec:
            raise InvalidReply("no site name")
        site = str(site_rec[SITE])
        if self.sites is not None and site not in self.sites:
            raise InvalidReply(f"site {site!r} is not one the run config names")
        metrics = next(iter(content.metric_records.values()))
        if not train:
            return Reply(site, node, check_eval_metrics(metrics, self.count_names))
        needs = self.aggregator.settings.needs_site_validation
        checked = check_train_metrics(metrics, needs_val_loss=needs)
        arrays = next(iter(content.array_records.values()))
        state = decode_arrays(
            arrays, self.adapter_shapes, lower_rank=lower_rank, wire_dtype=self.wire_dtype
        )
        return Reply(site, node, checked, state)

    def _bound(self, server_round: int, phase: str, replies: list[Reply]) -> list[Reply]:
        """The replies whose node holds the site name they claim, binding free names.

        A name held by another node, or a node that answered as another site before, is
        refused and named. Two nodes claiming a free name in the same round are both
        refused: nothing tells which one is the site, so neither gets the name yet.
        """
        good: list[Reply] = []
        claims: defaultdict[str, list[Reply]] = defaultdict(list)
        for r in replies:
            where = f"round {server_round} {phase}: node {r.node}"
            held_by, was = self.site_nodes.get(r.site), self.node_sites.get(r.node)
            if was is not None and was != r.site:
                self._reject(
                    f"{where} (site {was}) claims to be site {r.site!r}: refused, a node "
                    "keeps its site name for the whole run"
                )
            elif held_by is not None and held_by != r.node:
                self._reject(
                    f"{where} claims site {r.site!r}, which node {held_by} holds for this "
                    "run: refused"
                )
            elif any(c.node == r.node for c in claims[r.site]):
                self._reject(f"{where}: a second reply for site {r.site!r}, left out")
            else:
                claims[r.site].append(r)
        for site, group in claims.items():
            if len(group) > 1:
                nodes = ", ".join(str(r.node) for r in group)
                self._reject(
                    f"round {server_round} {phase}: site {site!r} claimed by nodes {nodes} "
                    "at once: all refused (the name is bound to none of them yet)"
                )
                continue
            self.site_nodes[site] = group[0].node
            self.node_sites[group[0].node] = site
            good.append(group[0])
        return good

    # --- training ---------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self.run_round(server_round)
        self.current = from_record(arrays)
        self.global_arrays = arrays
        config = ConfigRecord({**config, "aggregation": self.aggregator.name})
        return self._count(
            server_round,
            "train",
            "down",
            super().configure_train(server_round, arrays, config, grid),
        )

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.run_round(server_round)
        replies = self._count(server_round, "train", "up", replies)
        before = len(self.rejected)
        accepted = self._accepted(server_round, replies, train=True)
        skipped = f"round {server_round} skipped, the global adapter kept"
        if not accepted:
            self._reject(f"{skipped}: no reply could be used")
            return None, None
        updates = [
            SiteUpdate(r.site, r.state or {}, r.metrics[NUM_EXAMPLES], r.metrics) for r in accepted
        ]
        assert self.current is not None, "configure_train runs before aggregate_train"
        try:
            aggregated = self.aggregator.aggregate(server_round, self.current, updates)
        except NotEnoughSites as exc:  # say why the others were left out, too
            earlier = "".join(f"; left out before: {r}" for r in self.rejected[before:])
            self._reject(f"{skipped}: {exc}{earlier}")
            return None, None
        except PrivacyBudgetExhausted as exc:
            self._reject(f"{skipped}: {exc}")
            return None, None
        except Exception as exc:  # no method's failure may end the run
            self.aggregator.weights_log.pop(server_round, None)  # no weights were used
            self._reject(f"{skipped}: aggregation failed: {type(exc).__name__}: {exc}")
            return None, None
        finally:
            for why in self.aggregator.screened_out.get(server_round, []):
                self._reject(f"round {server_round}: left out {why}")
        bad = [k for k, v in aggregated.items() if not bool(torch.isfinite(v).all())]
        if bad:
            self.aggregator.weights_log.pop(server_round, None)
            self._reject(f"{skipped}: the aggregate is not finite (e.g. {bad[0]})")
            return None, None
        weights = self.aggregator.weights_log[server_round]
        per_site = {
            u.site: {**u.metrics, "aggregation-weight": weights.get(u.site, 0.0)} for u in updates
        }
        self.train_metrics[server_round] = per_site
        if self.on_trained:
            self.on_trained(server_round, per_site)
        loss = sum(u.metrics.get("train-loss", 0.0) * weights.get(u.site, 0.0) for u in updates)
        self.global_arrays = to_record(aggregated, self.wire_dtype)
        return self.global_arrays, MetricRecord({"train-loss": loss, "sites": len(updates)})

    # --- evaluation -------------------------------------------------------------------
    def wants_evaluation(self, server_round: int) -> bool:
        if server_round == 0 or server_round == self.num_rounds:
            return True
        return self.evaluate_every > 0 and server_round % self.evaluate_every == 0

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self.run_round(server_round)
        if not self.wants_evaluation(server_round):
            if server_round > 0 and self.on_round_end:
                self.on_round_end(server_round, self.global_arrays)
            return []
        return self._count(
            server_round,
            "evaluate",
            "down",
            super().configure_evaluate(server_round, arrays, config, grid),
        )

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        server_round = self.run_round(server_round)
        replies = list(replies)
        if not replies and not self.wants_evaluation(server_round):
            return None  # not an evaluation round: on_round_end ran in configure_evaluate
        try:
            return self._aggregate_evaluate(server_round, replies)
        finally:
            if server_round > 0 and self.on_round_end:
                self.on_round_end(server_round, self.global_arrays)

    def _aggregate_evaluate(self, server_round: int, replies: list[Message]) -> MetricRecord | None:
        replies = self._count(server_round, "evaluate", "up", replies)
        accepted = self._accepted(server_round, replies, train=False)
        if not accepted:
            return None
        per_site: dict[str, Scores] = {}
        micro = Scores()
        for r in accepted:
            scores = Scores.from_counts(r.metrics)
            per_site[r.site] = scores
            micro += scores
            self.eval_inference.setdefault(server_round, {})[r.site] = {
                k: r.metrics[k] for k in INFERENCE_METRICS if k in r.metrics
            }
        if self.on_evaluated:
            self.on_evaluated(server_round, per_site)
        return MetricRecord(micro.summary())
