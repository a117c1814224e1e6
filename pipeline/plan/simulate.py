"""One training step of the real architecture, simulated: no weights, no GPU, no cluster.

The model is built by `pipeline.train.model.build` itself (meta-device init, activation
checkpointing per decoder layer, `fully_shard` per layer and on the root with the preset's
MixedPrecisionPolicy) under `FakeTensorMode`, on a fake process group of the preset's world size
(`torch.testing._internal.distributed.fake_pg`: collectives return at once with correctly shaped
fake outputs). One packed micro-batch of `seq_len` tokens goes through the training code's
`CausalLMLoss` (decoder + chunked lm_head/cross-entropy), backward, gradient clipping and the
training code's AdamW step. torch's `MemTracker` records every tensor the step allocates on this
rank, by kind (parameters incl. all-gathered unsharded copies, gradients, optimizer state,
activations, temporaries); `FlopCounterMode` counts the FLOPs the step executes (with the
activation-checkpointing recompute).

Attention is the training code's packed attention forced to its CUDA `varlen` backend, whose
custom op has a fake (shape-only) implementation, so the simulation is of the GPU path.

Two data-dependent shapes are pinned by `KnownTargets`: `CausalLMLoss` selects the trained
positions with a boolean mask (`h[labels != -100]`), whose size is unknown on fake tensors. The
simulation trains every position but the last of each document (the worst case for the loss
memory), so that count is known and is given to the indexing ops.

Cost, and the reduced-layer simulation. The step's memory is affine in the number of decoder
layers L: sharded parameters, gradients and optimizer state grow by a fixed amount per layer,
checkpointed activations by one saved layer input per layer, while the root (embedding, lm_head,
final norm), one layer's recompute and the loss chunks do not depend on L. Every fake op still
costs Python time (MemTracker's per-op bookkeeping grows with the module count: ~3 min of CPU for
the 32B at 64 layers, seconds at 4-8), so by default the step is simulated at a few small depths
(4, 6, 8): every depth past the first two must lie on their line (within `LINE_TOLERANCE` of its
peak) or the plan stops, and each figure is extrapolated along the line through the two deepest:
X(L) = X(L2) + (L - L2) * (X(L2) - X(L1)). Below about 4 layers the peak's phase still moves.
The 32B's slope is 0.483 GiB per layer: one saved layer input (32,768 x 5,120 bf16) + that layer's
fp32 parameter shard + its AdamW moments; the full 64-layer simulation (`sim_layers=[64]`) gives
the extrapolated 53.14 GiB to the MiB (BENCHMARKS.md, "Production plan").

What the simulation is checked against: tests/plan runs the same `_step` on real tensors over a
gloo process group of 2 (`measure_step`) at a small Qwen2 shape, and requires the simulated peaks
to match the real ones. It guards against the one artifact of simulating under a fake mode found so
far (see `sharding_propagation_off_the_books`): DTensor's shape propagation for `clip_grad_norm_`
counted as the whole unsharded fp32 model, which had made a 64-layer simulation report 137 GiB.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

CATEGORIES = ("Parameter", "Gradient", "Optstate", "Activation", "Temp", "Buffer", "Total")


@dataclass
class StepSimulation:
    layers: int
    peak_bytes: dict[str, float]  # per category (each its own peak) and "Total" (peak of the sum)
    executed_flops: float  # this rank's FLOPs, recompute included
    wall_s: float


class KnownTargets(TorchDispatchMode):
    """Give boolean-mask indexing (and its backward) the known number of selected rows."""

    def __init__(self, selected: int):
        super().__init__()
        self.selected = selected

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        kwargs = kwargs or {}
        bool_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                              aten._index_put_impl_.default) and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func is aten.nonzero.default:
            return torch.empty((self.selected, args[0].dim()), dtype=torch.long, device=args[0].device)
        if bool_index and func is aten.index.Tensor:
            (mask,) = args[1]
            return args[0].new_empty((self.selected, *args[0].shape[mask.dim():]))
        if bool_index:
            return torch.empty_like(args[0]) if func is aten.index_put.default else args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def sharding_propagation_off_the_books():
    """Run DTensor's output-metadata propagation in a private fake mode, as it runs on real tensors.

    For each DTensor op not yet in its cache, DTensor's `ShardingPropagator` runs the op once on
    *global-shape* fake tensors to learn the output's shape (`_propagate_tensor_meta_non_cached`,
    with `detect_fake_mode() or FakeTensorMode()`). On a real run that is a fresh fake mode, which
    MemTracker ignores; inside this simulation `detect_fake_mode()` finds the simulation's own mode,
    so MemTracker counted those global-shape placeholders as memory. `clip_grad_norm_`'s one
    `_foreach_norm` over every gradient thus showed the whole unsharded fp32 model alive at once
    (1.95 GiB per 32B layer: 137 GiB at 64 layers) though no GPU ever holds it. Hiding the ambient
    fake mode for the propagation makes it take the real run's path."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def private(self, op_schema):
        with unset_fake_temporarily():
            return original(self, op_schema)

    ShardingPropagator._propagate_tensor_meta_non_cached = private
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original


def _fake_process_group(world: int) -> None:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        if dist.get_world_size() == world and dist.get_backend() == "fake":
            return
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def simulate_step(hf_config, train, world: int, layers: int) -> StepSimulation:
    """One simulated step of `hf_config` cut to `layers` decoder layers, on rank 0 of `world`,
    with the training settings `train` (a `TrainParams`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.device_mesh import init_device_mesh

    from pipeline.train import attention

    _fake_process_group(world)
    mesh = init_device_mesh("cpu", (world,))  # outside the fake mode: the mesh holds real rank tensors
    started = time.perf_counter()
    with FakeTensorMode(), attention.use_backend("varlen"):
        peak, flops = _step(hf_config, train, mesh, layers, fake=True)
    return StepSimulation(layers, peak, flops, time.perf_counter() - started)


def measure_step(hf_config, train, layers: int) -> StepSimulation:
    """The same step on real tensors, over the process group this process already belongs to
    (gloo on CPU in tests/plan), measured by the same MemTracker: the reference the simulation
    is checked against. CPU attention backend, so only shapes small enough for a CPU."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    started = time.perf_counter()
    peak, _ = _step(hf_config, train, mesh, layers, fake=False)
    return StepSimulation(layers, peak, float("nan"), time.perf_counter() - started)


def _step(hf_config, train, mesh, layers: int, *, fake: bool) -> tuple[dict[str, float], float]:
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.train.data import MicroBatch
    from pipeline.train.loop import make_optimizer
    from pipeline.train.model import build

    config = copy.deepcopy(hf_config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    seq, docs = train.seq_len, 4
    model = build(config, torch.device("cpu"), mesh, attn_implementation="auto",
                  # auto: bf16 on GPU, as the training loop resolves it there.
                  param_dtype="bfloat16" if train.param_dtype == "auto" else train.param_dtype,
                  reduce_dtype=train.reduce_dtype,
                  activation_checkpointing=train.activation_checkpointing, cpu_offload=False,
                  compile=False, ce_chunk_tokens=train.ce_chunk_tokens, weights=None, seed=train.seed)
    model.train()  # as the training loop does: HF checkpoints its layers only in training mode
    optimizer = make_optimizer(model, train)
    # Steady state: the optimizer state exists before the step (AdamW creates it lazily).
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    bounds = [round(i * seq / docs) for i in range(docs + 1)]
    cu = torch.tensor(bounds, dtype=torch.int32)
    labels = torch.zeros(1, seq, dtype=torch.long)
    labels[0, torch.tensor(bounds[1:]) - 1] = -100  # the last position of each document: no target
    mb = MicroBatch(input_ids=torch.zeros(1, seq, dtype=torch.long),
                    position_ids=torch.cat([torch.arange(b - a) for a, b in itertools.pairwise(bounds)])[None],
                    labels=labels, cu_seqlens=cu,
                    max_seqlen=max(b - a for a, b in itertools.pairwise(bounds)), num_tokens=seq, num_rows=1)
    # Fake tensors cannot count a boolean mask's True entries: KnownTargets gives the count.
    targets = KnownTargets(seq - docs) if fake else contextlib.nullcontext()

    def step() -> None:
        loss = model(mb)
        (loss / (seq - docs)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Memory and FLOPs in two passes: FlopCounterMode's module tracking keeps the
    # checkpointed layers' activations alive, which would defeat the memory measurement.
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker, targets, sharding_propagation_off_the_books():
        step()
    snapshot = tracker.get_tracker_snapshot("peak")
    flops = float("nan")
    if fake:
        with KnownTargets(seq - docs), FlopCounterMode(display=False) as counter:
            step()
        flops = float(counter.get_total_flops())
    per_device = next(iter(snapshot.values()))
    peak = {c: 0.0 for c in CATEGORIES}
    for key, value in per_device.items():
        name = getattr(key, "value", key)
        if name in peak:
            peak[name] = float(value)
    return peak, flops


def extrapolate(a: StepSimulation, b: StepSimulation, layers: int) -> dict[str, float]:
    """Each figure on the line through the two simulated depths, at `layers`."""
    if a.layers == b.layers:
        raise ValueError("need two different depths")
    span = b.layers - a.layers
    out = {c: b.peak_bytes[c] + (layers - b.layers) * (b.peak_bytes[c] - a.peak_bytes[c]) / span for c in CATEGORIES}
    out["executed_flops"] = b.executed_flops + (layers - b.layers) * (b.executed_flops - a.executed_flops) / span
    return out


_cache: dict[tuple, dict] = {}


def simulate(hf_config, train, world: int, depths: list[int]) -> dict:
    """Peak memory by kind and executed FLOPs of one step of the full model on one rank
    (memoised per process: presets that share a train section share the simulation)."""
    key = (hf_config.to_json_string(), world, tuple(depths), train.seq_len, train.param_dtype, train.reduce_dtype,
           train.activation_checkpointing, train.ce_chunk_tokens)
    if key not in _cache:
        _cache[key] = _simulate(hf_config, train, world, depths)
    return _cache[key]


# Off-line points must lie within this share of the simulated peak of the line through the first two.
LINE_TOLERANCE = 0.01


def _simulate(hf_config, train, world: int, depths: list[int]) -> dict:
    from pipeline.errors import StageFailed

    full = hf_config.num_hidden_layers
    if len(depths) == 1:
        s = simulate_step(hf_config, train, world, depths[0])
        if depths[0] != full:
            raise ValueError(f"plan.sim_layers=[{depths[0]}]: a single depth must be the model's {full} layers")
        figures = dict(s.peak_bytes, executed_flops=s.executed_flops)
        return {"method": f"full {full}-layer simulation", "figures": figures, "wall_s": s.wall_s}
    runs = [simulate_step(hf_config, train, world, d) for d in sorted(depths)]
    a, b = runs[0], runs[1]
    slope = (b.peak_bytes["Total"] - a.peak_bytes["Total"]) / (b.layers - a.layers)
    for r in runs[2:]:
        predicted = a.peak_bytes["Total"] + (r.layers - a.layers) * slope
        if abs(r.peak_bytes["Total"] - predicted) > LINE_TOLERANCE * r.peak_bytes["Total"]:
            raise StageFailed(
                f"the simulated peak is not affine in the depth: {r.peak_bytes['Total'] / 2**30:.2f} GiB at "
                f"{r.layers} layers, {predicted / 2**30:.2f} GiB on the line through {a.layers} and {b.layers} "
                f"layers; the extrapolation to {full} cannot be trusted: simulate deeper depths or the whole "
                f"model (plan.sim_layers=[{full}])")
    names = ", ".join(str(r.layers) for r in runs)
    return {"method": f"simulated at {names} layers (on one line within {LINE_TOLERANCE:.0%}), "
                      f"extrapolated linearly to {full}",
            "figures": extrapolate(runs[-2], runs[-1], full), "wall_s": sum(r.wall_s for r in runs)}
