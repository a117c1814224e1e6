"""The Ray Data side: a callable class run by ``map_batches(compute=ActorPoolStrategy(...))``.

One actor holds one backend (a vLLM engine, or an HTTP client pool) and the prompt builder.
It takes a batch of trajectory rows and returns one row per trajectory (`OUTCOME` below):
whole trajectories per row, so the driver can write shards without ever splitting one.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pyarrow as pa

from pipeline.label.config import CriticConfig

VERDICT = pa.struct([
    pa.field("step", pa.int32()),
    pa.field("label", pa.string()),
    pa.field("confidence", pa.float32()),
    pa.field("reason", pa.string()),
])

OUTCOME = pa.schema([
    pa.field("traj_id", pa.string()),
    pa.field("verdicts", pa.list_(VERDICT)),  # null when the trajectory errored
    pa.field("num_samples", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("attempts", pa.int32()),
    pa.field("calls", pa.int32()),
    pa.field("trajectory_tokens", pa.int64()),
    pa.field("critic_prompt_tokens", pa.int64()),
    pa.field("error_reason", pa.string()),
    pa.field("error_detail", pa.string()),
])


def critic_from_dict(d: dict) -> CriticConfig:
    from pipeline.label.config import OpenAIConfig, PoolConfig

    d = dict(d)
    d["pool"] = PoolConfig(**d["pool"])
    d["openai"] = OpenAIConfig(**d["openai"])
    return CriticConfig(**d)


def outcomes_table(outcomes) -> pa.Table:
    rows = []
    for o in outcomes:
        rows.append({
            "traj_id": o.traj_id,
            "verdicts": None if o.verdicts is None else [dataclasses.asdict(v) for v in o.verdicts],
            "num_samples": o.num_samples,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "attempts": o.attempts,
            "calls": o.calls,
            "trajectory_tokens": o.trajectory_tokens,
            "critic_prompt_tokens": o.critic_prompt_tokens,
            "error_reason": o.error_reason,
            "error_detail": o.error_detail,
        })
    return pa.Table.from_pylist(rows, schema=OUTCOME)


DEAD_ENGINE_ERRORS = ("EngineDeadError",)  # class names (vLLM's) that mean the engine is gone


def engine_dead(backend, exc: BaseException) -> bool:
    """Does `exc` (raised by, or returned from, ``backend.generate``) mean the engine is dead?
    A backend may say so itself with ``is_dead(exc)``; otherwise vLLM's EngineDeadError (by
    name, so that this module does not import vLLM) or a message naming a dead engine core."""
    check = getattr(backend, "is_dead", None)
    if callable(check):
        with contextlib.suppress(Exception):  # a broken hook is not a verdict
            if check(exc):
                return True
    if any(t.__name__ in DEAD_ENGINE_ERRORS for t in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return "engine core" in text and ("dead" in text or "died" in text)


class EngineDead(RuntimeError):
    """The actor's engine died and could not be rebuilt (``critic.max_engine_restarts`` used up)."""

    reason = "engine_dead"


class CriticActor:
    """One actor of the pool. `critic` is `dataclasses.asdict(CriticConfig)` (plain data crosses
    the Ray boundary); `api_key` is a `pipeline.label.secrets.SecretRef` or None.

    It never raises out of a call: Ray Data would fail the whole dataset (and with it every other
    trajectory's labels). A backend that cannot start, or an engine that dies and cannot be
    rebuilt, turns the batch's trajectories into error rows; an engine that dies is rebuilt (at
    most ``critic.max_engine_restarts`` times per actor) and the requests it lost are sent again
    to the new engine once.
    """

    def __init__(self, critic: dict, api_key=None) -> None:
        from pipeline.label.secrets import resolve_api_key, secret_env_names, secret_values

        self.c = critic_from_dict(critic)
        self.key_name = self.c.openai.api_key_env
        self.api_key = resolve_api_key(self.key_name, api_key) if self.c.backend == "openai" else None
        self.secrets = secret_values(secret_env_names(self.c))
        if self.api_key:
            self.secrets[self.key_name or "api_key"] = self.api_key
        self.backend = None
        self.builder = None
        self.restarts = 0
        self.start_error: str | None = None
        self._start()

    def _start(self) -> bool:
        from pipeline.label.backends import load_tokenizer, make_backend
        from pipeline.label.prompt import PromptBuilder

        try:
            if self.builder is None:
                self.builder = PromptBuilder(load_tokenizer(self.c), self.c)
            self.backend = make_backend(self.c, api_key=self.api_key)
            self.start_error = None
            return True
        except Exception as e:  # noqa: BLE001 - recorded on every row of the batches it costs
            self.backend = None
            self.start_error = self._scrub(f"{type(e).__name__}: {e}")[:1000]
            print(f"[label] critic actor: backend did not start: {self.start_error}", flush=True)
            return False

    def _scrub(self, text: str) -> str:
        from pipeline.label.secrets import scrub

        return scrub(text, self.secrets)

    def _drop_backend(self) -> None:
        backend, self.backend = self.backend, None
        shutdown = getattr(backend, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(Exception):  # it is dead already
                shutdown()
        del backend
        import gc

        gc.collect()

    def _rebuild(self, why: str) -> bool:
        """Replace a dead engine, if restarts remain."""
        self._drop_backend()
        if self.restarts >= self.c.max_engine_restarts:
            self.start_error = f"engine dead after {self.restarts} restarts: {why}"[:1000]
            return False
        self.restarts += 1
        print(f"[label] critic actor: engine died ({why[:200]}); rebuilding ({self.restarts}/"
              f"{self.c.max_engine_restarts})", flush=True)
        return self._start()

    def generate(self, requests):
        """The backend's generate, surviving engine deaths (the labeler calls this)."""
        retried = False
        while True:
            if self.backend is None and not self._rebuild(self.start_error or "the backend did not start"):
                return [EngineDead(self.start_error or "no engine")] * len(requests)
            try:
                results = list(self.backend.generate(requests))
            except Exception as e:  # noqa: BLE001
                results = [e] * len(requests)
            dead = next((r for r in results if isinstance(r, BaseException) and engine_dead(self.backend, r)), None)
            if dead is None:
                return results
            why = self._scrub(f"{type(dead).__name__}: {dead}")
            if not self._rebuild(why) or retried:
                # no engine, or the new engine died on the same requests: fail them, keep the actor
                return [r if not (isinstance(r, BaseException) and engine_dead(None, r)) else EngineDead(why)
                        for r in results]
            retried = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.label.labeler import Outcome, label_batch

        ids = [str(t) for t in batch.column("traj_id").to_pylist()]
        try:
            if self.builder is None:
                raise EngineDead(self.start_error or "no prompt builder")
            rows = batch.select(["traj_id", "messages", "resolved", "num_steps"]).to_pylist()
            outcomes = label_batch(rows, self.builder, self, self.c)
        except Exception as e:  # noqa: BLE001 - the batch becomes error rows, the actor lives on
            reason = "engine_dead" if isinstance(e, EngineDead) else "actor_error"
            detail = f"{type(e).__name__}: {e}"
            outcomes = [Outcome(t, error_reason=reason, error_detail=detail[:2000]) for t in ids]
        for o in outcomes:
            o.error_detail = self._scrub(o.error_detail) if o.error_detail else o.error_detail
            if o.verdicts:
                for v in o.verdicts:
                    if self.secrets and v.reason:
                        object.__setattr__(v, "reason", self._scrub(v.reason))
        return outcomes_table(outcomes)
