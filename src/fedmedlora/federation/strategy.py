"""Fed-MedLoRA as a Flower strategy: FedAvg's sampling and messaging, plus

- every reply checked against the egress rules before use (privacy.check_reply),
- aggregation by the configured method (`aggregator.Aggregator`, pure tensor code;
  Fed-MedLoRA's weighted average by default),
- per-site evaluation kept (FedAvg would average metrics away), as metric counts,
- the wire size of every message, down and up, per round.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
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
from fedmedlora.federation.privacy import EgressViolation, check_reply

NUM_EXAMPLES = "num-examples"


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
        self.node_sites: dict[int, str] = {}
        self.train_metrics: dict[int, dict[str, dict[str, float]]] = {}
        # round -> site -> inference.INFERENCE_METRICS (speed of the evaluation)
        self.eval_inference: dict[int, dict[str, dict[str, float]]] = {}

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

    def _who(self, node: int) -> str:
        site = self.node_sites.get(node)
        return f"site {site} (node {node})" if site else f"node {node}"

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

    def _accepted(
        self, server_round: int, replies: Iterable[Message], train: bool
    ) -> list[tuple[str, Message]]:
        """(site, reply) for replies that carry no error and pass the egress check."""
        phase = "train" if train else "evaluate"
        good: list[tuple[str, Message]] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            where = f"round {server_round} {phase}: {self._who(node)}"
            if msg.has_error():
                self._reject(f"{where}: failed: {msg.error.reason}")
                continue
            try:
                check_reply(
                    msg.content,
                    self.adapter_shapes if train else None,
                    lower_rank=self.aggregator.method == "exact",
                )
                if len(msg.content.metric_records) != 1:
                    raise EgressViolation("expected exactly one metric record")
                if train and len(msg.content.array_records) != 1:
                    raise EgressViolation("expected exactly one array record")
            except EgressViolation as exc:
                self._reject(f"{where}: rejected reply: {exc}")
                continue
            site_rec = msg.content.config_records.get(SITE)
            site = str(site_rec[SITE]) if site_rec else f"node-{node}"
            if any(site == seen for seen, _ in good):
                self._reject(f"{where}: a second reply for site {site!r}, left out")
                continue
            self.node_sites[node] = site
            good.append((site, msg))
        return good

    # --- training ---------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.current = from_record(arrays)
        self.global_arrays = arrays
        config = ConfigRecord({**config, "aggregation": self.aggregator.method})
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
        server_round += self.round_offset
        replies = self._count(server_round, "train", "up", replies)
        accepted = self._accepted(server_round, replies, train=True)
        if not accepted:
            return None, None
        updates = []
        for site, msg in accepted:
            metrics = msg.content.metric_records[next(iter(msg.content.metric_records))]
            updates.append(
                SiteUpdate(
                    site,
                    from_record(msg.content.array_records[next(iter(msg.content.array_records))]),
                    float(metrics[NUM_EXAMPLES]),
                    {k: float(v) for k, v in metrics.items() if not isinstance(v, list)},
                )
            )
        assert self.current is not None, "configure_train runs before aggregate_train"
        try:
            aggregated = self.aggregator.aggregate(server_round, self.current, updates)
        except (NotEnoughSites, PrivacyBudgetExhausted) as exc:
            self._reject(f"round {server_round} skipped, the global adapter kept: {exc}")
            return None, None
        finally:
            for why in self.aggregator.screened_out.get(server_round, []):
                self._reject(f"round {server_round}: left out {why}")
        weights = self.aggregator.weights_log[server_round]
        per_site = {
            u.site: {**u.metrics, "aggregation-weight": weights.get(u.site, 0.0)} for u in updates
        }
        self.train_metrics[server_round] = per_site
        if self.on_trained:
            self.on_trained(server_round, per_site)
        loss = sum(u.metrics.get("train-loss", 0.0) * weights.get(u.site, 0.0) for u in updates)
        self.global_arrays = to_record(aggregated)
        return self.global_arrays, MetricRecord({"train-loss": loss, "sites": len(updates)})

    # --- evaluation -------------------------------------------------------------------
    def wants_evaluation(self, server_round: int) -> bool:
        if server_round == 0 or server_round == self.num_rounds:
            return True
        return self.evaluate_every > 0 and server_round % self.evaluate_every == 0

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if server_round > 0:  # round 0 (zero-shot) is the server app's own call
            server_round += self.round_offset
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
        if server_round > 0:
            server_round += self.round_offset
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
        for site, msg in accepted:
            metrics = msg.content.metric_records[next(iter(msg.content.metric_records))]
            scores = Scores.from_counts(dict(metrics))
            per_site[site] = scores
            micro += scores
            self.eval_inference.setdefault(server_round, {})[site] = {
                k: float(metrics[k]) for k in INFERENCE_METRICS if k in metrics
            }
        if self.on_evaluated:
            self.on_evaluated(server_round, per_site)
        return MetricRecord(micro.summary())
