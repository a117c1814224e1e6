"""The build summary: what came in, what came out, and where every token went (keys: docs/build.md).

``tokens`` splits every token of the output into trained, masked and context-only; ``truncation``,
``packing``, ``labels``, ``unknown_outcome``, ``template`` and ``tools`` say how the rows were made.
The counters come from the write tasks (pipeline/build/sink.py `combine`); nothing here sees a token.
"""

from __future__ import annotations

from pipeline.build.config import BuildConfig, token_limit
from pipeline.build.sink import unit_records
from pipeline.config import redacted


def summarize(cfg: BuildConfig, c: dict, *, run_id: str, info, label_stats: dict, columns: list[str]) -> dict:
    """`c`: the write tasks' combined counters; `info`: the chat template's probe (MaskBuilder.info)."""
    rows_in, kinds, tok, tools = c["records"], c["kinds"], c["tokens"], c["tools"]
    reasons = {"error": c["errors"], "excluded": c["excluded"]}
    rows_out = c["rows"]
    docs_out = sum(kinds.values())
    trained, masked, total = tok["trained"], tok["masked"], tok["total"]
    seq_len = cfg.pack.seq_len if cfg.pack.enabled else None
    summary = {
        "run_id": run_id,
        "recipe": cfg.recipe,
        "rows_in": rows_in,
        "documents_out": docs_out,
        "rows_out": rows_out,
        "rows_errored": sum(reasons["error"].values()),
        "rows_excluded": sum(reasons["excluded"].values()),
        "rows_per_recipe": {cfg.recipe: rows_out},
        "documents_by_kind": dict(kinds),
        "errors": dict(reasons["error"]),
        "exclusions": dict(reasons["excluded"]),
        "tokens": {
            "total": total,
            "trained": trained,
            "masked": masked,
            "context_only": total - trained - masked,
            "fraction_masked": masked / (trained + masked) if trained + masked else 0.0,
            "fraction_masked_of_all": masked / total if total else 0.0,
            "first_content_token_not_trained": tok["straddled_steps"],
        },
        "truncation": {
            "max_seq_len": token_limit(cfg),
            "overlong": cfg.overlong,
            "rows_truncated": tok["truncated_rows"],
            "tokens_cut": tok["truncated_tokens"],
            "steps_cut": tok["truncated_steps"],
            "rows_dropped": reasons["excluded"].get("overlong", 0) + reasons["excluded"].get("overlong_no_whole_step", 0),
        },
        "packing": {
            "enabled": cfg.pack.enabled,
            "seq_len": seq_len,
            "fill": (total / (rows_out * seq_len)) if seq_len and rows_out else None,
            "documents_per_row": docs_out / rows_out if rows_out else 0.0,
            "max_row_tokens": c["max_row_tokens"],
            # Documents are packed within units of this many records (pipeline/build/sink.py).
            "unit_records": unit_records(cfg),
            "units": c["units"],
        },
        "labels": label_stats,
        # Trajectories with resolved=null: trained as unresolved (masked like them under srft_*), or
        # excluded as resolution_unknown, per unknown_outcome (pipeline/outcome.py).
        "unknown_outcome": {
            "policy": cfg.unknown_outcome,
            "documents": tok["outcome_unknown_documents"],
            "excluded": reasons["excluded"].get("resolution_unknown", 0),
        },
        "template": {
            "generation_prompt": info.generation_prompt,
            "end_of_turn": info.end_of_turn,
            "renders_tool_calls": info.renders_tool_calls,
            "renders_tools": info.renders_tools,
        },
        # Function-calling documents built without their tool schemas (the source had none): the
        # system prompt then differs from what inference renders with `tools=`.
        "tools": {
            "column_present": "tools" in columns,
            "documents_with_tools": tools["documents_with_tools"],
            "function_calling_documents": tools["function_calling_documents"],
            "tools_missing": tools["tools_missing"],
        },
        "shards": c["shards"],
        "config": redacted(cfg),
    }
    assert trained == tok["trained_before_packing"], "packing changed the trained token count"
    return summary
