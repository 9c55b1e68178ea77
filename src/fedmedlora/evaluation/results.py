"""results.json: everything a run measured, written after every round so that a failure
late in a run never loses the rounds already done."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from fedmedlora.evaluation.metrics import Scores

HEADLINE = ("entity_strict_f1", "entity_lenient_f1", "relation_strict_f1", "relation_lenient_f1")


def write_json_atomic(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def site_block(scores: Scores) -> dict[str, Any]:
    return {**scores.summary(), "detail": scores.as_dict()}


def _inference_totals(sites) -> dict[str, float]:
    """All sites' windows over all sites' seconds (sites in a simulation share the
    machine), and forward passes per generated token over all windows."""
    sites = list(sites)
    seconds = sum(s.get("eval-seconds", 0.0) for s in sites)
    windows = sum(s.get("eval-chunks", 0.0) for s in sites)
    tokens = sum(s.get("eval-generated-tokens", 0.0) for s in sites)
    passes = sum(s.get("eval-forward-passes", 0.0) for s in sites)
    return {
        "windows_per_second": windows / seconds if seconds else 0.0,
        "forward_passes_per_token": passes / tokens if tokens else 0.0,
    }


class RunRecorder:
    """Accumulates a federated run's measurements in the results.json layout."""

    def __init__(self, out_dir: Path, run: dict[str, Any], communication: dict[str, Any]):
        self.path = Path(out_dir) / "results.json"
        self.began = time.time()
        self.data: dict[str, Any] = {
            "run": {**run, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running"},
            "rounds": [],
            "communication": {**communication, "per_round": []},
            "rejected_replies": [],
        }

    def _round(self, server_round: int) -> dict[str, Any]:
        for r in self.data["rounds"]:
            if r["round"] == server_round:
                return r
        entry: dict[str, Any] = {"round": server_round}
        self.data["rounds"].append(entry)
        self.data["rounds"].sort(key=lambda r: r["round"])
        return entry

    def trained(
        self,
        server_round: int,
        per_site: dict[str, dict[str, float]],
        privacy: dict[str, float] | None = None,
    ) -> None:
        """`privacy`: the DP accountant's figures after this round (epsilon, ...)."""
        self._round(server_round)["train"] = per_site
        if privacy:
            self.data.setdefault("privacy", {})[str(server_round)] = privacy
        self.save()

    def rejected(self, reasons: list[str]) -> None:
        """Every reply left out so far, each naming its round and site."""
        self.data["rejected_replies"] = list(reasons)
        self.save()

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to go on recording (see federation/checkpoint.py)."""
        return self.data

    def load_state(self, state: dict[str, Any]) -> None:
        """Go on from what `state` returned (a checkpoint's)."""
        self.data = state

    def note(self, key: str, value: Any) -> None:
        """A top-level entry other parts of the server keep here (tracking state, ...)."""
        self.data[key] = value
        self.save()

    def evaluated(
        self,
        server_round: int,
        per_site: dict[str, Scores],
        inference: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """`inference`: site -> its evaluation's speed (inference.INFERENCE_METRICS)."""
        micro = Scores()
        for s in per_site.values():
            micro += s
        entry = self._round(server_round)
        entry["phase"] = "zero-shot" if server_round == 0 else "federated"
        entry["sites"] = {name: site_block(s) for name, s in sorted(per_site.items())}
        entry["micro"] = micro.summary()
        if inference:
            entry["inference"] = {
                "sites": {name: inference[name] for name in sorted(inference)},
                **_inference_totals(inference.values()),
            }
        self.save()

    def traffic(self, per_round: dict[int, dict]) -> None:
        rows = []
        for rnd in sorted(per_round):
            t = per_round[rnd]
            rows.append(
                {
                    "round": rnd,
                    "train_down_bytes": t["train"]["down"],
                    "train_up_bytes": t["train"]["up"],
                    "evaluate_down_bytes": t["evaluate"]["down"],
                    "evaluate_up_bytes": t["evaluate"]["up"],
                    "total_bytes": sum(
                        t[p][d] for p in ("train", "evaluate") for d in ("down", "up")
                    ),
                }
            )
        comm = self.data["communication"]
        comm["per_round"] = rows
        trained = [r for r in rows if r["round"] > 0 and r["train_down_bytes"]]
        if trained:
            comm["adapter_bytes_per_round"] = max(
                r["train_down_bytes"] + r["train_up_bytes"] for r in trained
            )
            full = comm["full_model_bytes"] * 2 * comm.get("sites", 1)
            comm["full_model_bytes_per_round"] = full
            comm["reduction_factor"] = full / comm["adapter_bytes_per_round"]
        self.save()

    def finish(self, status: str = "completed", **extra: Any) -> dict[str, Any]:
        rounds = [r for r in self.data["rounds"] if "sites" in r]
        zero = next((r for r in rounds if r["round"] == 0), None)
        last = next((r for r in reversed(rounds) if r["round"] > 0), None)
        for key, entry in (("zero_shot", zero), ("final", last)):
            if entry is not None:
                self.data[key] = {
                    "round": entry["round"],
                    "sites": {s: {k: v[k] for k in HEADLINE} for s, v in entry["sites"].items()},
                    "micro": {k: entry["micro"][k] for k in HEADLINE},
                }
        self.data["run"].update(
            status=status,
            seconds=round(time.time() - self.began, 1),
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        )
        self.save()
        return self.data

    def save(self) -> None:
        write_json_atomic(self.data, self.path)


def _round_of(reason: Any) -> int | None:
    """The round a rejection names ("round 3 train: ..." or {"round": 3, ...})."""
    if isinstance(reason, dict):
        return reason.get("round")
    found = re.match(r"round (\d+)", str(reason))
    return int(found.group(1)) if found else None


def round_metrics(results: dict[str, Any], server_round: int) -> dict[str, float]:
    """Every number results.json holds for one round, flat: "riverside/entity_strict_f1",
    "micro/...", "train/riverside/train-loss", "inference/windows_per_second",
    "privacy/epsilon", "traffic/total_bytes",
    "rejected_replies". What trackers log, so they show exactly what the file says."""
    out: dict[str, Any] = {}
    entry = next((r for r in results.get("rounds", []) if r["round"] == server_round), {})
    for site, block in entry.get("sites", {}).items():
        out.update({f"{site}/{k}": block[k] for k in HEADLINE})
    out.update({f"micro/{k}": v for k, v in entry.get("micro", {}).items() if k in HEADLINE})
    for site, metrics in entry.get("train", {}).items():
        out.update({f"train/{site}/{k}": v for k, v in metrics.items()})
    inference = entry.get("inference", {})
    for site, metrics in inference.get("sites", {}).items():
        out.update({f"inference/{site}/{k}": v for k, v in metrics.items()})
    out.update({f"inference/{k}": v for k, v in inference.items() if k != "sites"})
    privacy = results.get("privacy", {}).get(str(server_round), {})
    out.update({f"privacy/{k}": v for k, v in privacy.items()})
    for row in results.get("communication", {}).get("per_round", []):
        if row["round"] == server_round:
            out.update({f"traffic/{k}": v for k, v in row.items() if k != "round"})
    rejected = results.get("rejected_replies", [])
    out["rejected_replies"] = sum(1 for r in rejected if _round_of(r) == server_round)
    return {
        k: float(v)
        for k, v in out.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
