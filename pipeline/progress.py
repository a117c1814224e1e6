"""Progress lines for long stages: done/total, rate, ETA and errors so far.

Ray Data's own progress bars cover the dataset operators; this covers what the driver itself
counts (trajectories labelled, documents built, training steps). One line at most every
`every_s` seconds, to stderr, so that a stage's stdout stays its JSON summary.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stage: str, total: int | None, unit: str, every_s: float = 10.0):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int = 1, errors: int = 0, force: bool = False, **metrics: object) -> None:
        """Count `done` more items (of which `errors` failed); print a line when one is due.
        `metrics` are shown as they are (for example loss=1.23, tok_s=4567)."""
        self.done += done
        self.errors += errors
        now = time.monotonic()
        if force or now - self._last >= self.every_s or (self.total and self.done >= self.total):
            self._last = now
            # Not print(): in a Ray Train worker print is patched to also log the line through the
            # root logger, and the terminal would show it twice.
            sys.stderr.write(self.line(**metrics) + "\n")
            sys.stderr.flush()

    def line(self, **metrics: object) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"[{self.stage}] {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        per_min = rate * 60
        parts.append(f"{per_min:.1f}/min" if per_min < 600 else f"{rate:.1f}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(f"errors {self.errors}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()]
        parts.append(f"elapsed {_duration(elapsed)}")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
