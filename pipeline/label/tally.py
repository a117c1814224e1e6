"""The label summary: what the workers reported, counted on the driver.

Keys (docs/label.md): ``rows_in`` (input trajectories) = ``trajectories_labelled`` +
``trajectories_errored`` + the skips (select.SKIPS) + ``trajectories_lost`` (selected ones that came
back neither way; 0 unless Ray lost them, and then the run fails). ``rows_out`` (step-label rows
in the committed output) = ``rows_carried`` (kept from earlier runs) + ``rows_written`` (this run's).
"""

from __future__ import annotations

import time
from collections import Counter

from pipeline.label.select import SKIPS
from pipeline.schema import LABELS

_TOKENS = ("calls", "prompt_tokens", "completion_tokens")


class LabelTally:
    def __init__(self, header: dict, rows_in: int, selected: list[str], skipped: Counter, carried_rows: int):
        self.header, self.rows_in, self.selected, self.skipped = header, rows_in, selected, skipped
        self.carried_rows = carried_rows
        self.returned: set[str] = set()  # trajectories that came back, as labels or as an error
        self.labelled = 0
        self.reasons: Counter = Counter()
        self.dist: Counter = Counter()
        self.tokens: Counter = Counter()
        self.conf_sum = 0.0
        self.label_files: set[str] = set()
        self.error_files: set[str] = set()
        self.t0 = time.time()

    def add(self, r: dict) -> bool:
        """One worker REPORT row; False for a trajectory already counted (Ray re-ran its batch)."""
        if r["traj_id"] in self.returned:
            return False
        self.returned.add(r["traj_id"])
        for k in _TOKENS:
            self.tokens[k] += r[k] or 0
        if r["trajectory_tokens"]:
            self.tokens["trajectory_tokens"] += r["trajectory_tokens"]
            self.tokens["critic_prompt_tokens"] += r["critic_prompt_tokens"] or 0
        if r["error_reason"] is not None:
            self.reasons[r["error_reason"]] += 1
            self.error_files.add(r["file"])
            return True
        self.labelled += 1
        self.label_files.add(r["file"])
        for label in LABELS:
            self.dist[label] += r[f"n_{label}"] or 0
        self.conf_sum += r["confidence_sum"] or 0.0
        return True

    def error(self, tid: str, reason: str) -> None:
        """An error row the driver made (the run stopped before `tid` came back)."""
        self.returned.add(tid)
        self.reasons[reason] += 1

    @property
    def errored(self) -> int:
        return sum(self.reasons.values())

    def summary(self, commits: int, final: bool) -> dict:
        selected, labelled, errored = len(self.selected), self.labelled, self.errored
        rows_new = sum(self.dist.values())
        elapsed = time.time() - self.t0
        t = self.tokens
        s = {
            **self.header,
            "rows_in": self.rows_in,
            "trajectories_selected": selected,
            "trajectories_labelled": labelled,
            "trajectories_errored": errored,
            **{k: self.skipped[k] for k in SKIPS},
            "rows_out": self.carried_rows + rows_new,
            "rows_written": rows_new,
            "rows_carried": self.carried_rows,
            "label_distribution": {k: self.dist[k] for k in LABELS},
            "mean_confidence": round(self.conf_sum / rows_new, 4) if rows_new else None,
            "error_reasons": dict(sorted(self.reasons.items())),
            "error_fraction": round(errored / selected, 4) if selected else 0.0,
            "calls": t["calls"],
            "calls_per_trajectory": round(t["calls"] / max(1, labelled + errored), 3),
            "prompt_tokens": t["prompt_tokens"],
            "completion_tokens": t["completion_tokens"],
            "prompt_to_trajectory_tokens": (round(t["critic_prompt_tokens"] / t["trajectory_tokens"], 4)
                                            if t["trajectory_tokens"] else None),
            "label_shards": sorted(self.label_files),
            "error_shards": sorted(self.error_files),
            "commits": commits,
            "elapsed_s": round(elapsed, 2),
            "trajectories_per_minute": round(60 * (labelled + errored) / elapsed, 2) if selected else None,
        }
        if final:
            lost = selected - labelled - errored
            if lost:  # every selected trajectory must come back as labels or an error
                s["trajectories_lost"] = lost
            accounted = labelled + errored + lost + sum(self.skipped[k] for k in SKIPS)
            if accounted != self.rows_in:
                raise RuntimeError(f"label counts do not add up: {accounted} accounted != {self.rows_in} in")
        else:
            s["in_progress"] = True
        return s
