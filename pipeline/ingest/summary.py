"""The ingest summary: counts by source format and resolution, quarantine counts by reason."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa


def summarize(keys: pa.Table) -> dict:
    """`keys` holds source_format, resolved and quarantine_reason for every record."""
    good = Counter()
    bad = Counter()
    for fmt, resolved, reason in zip(
        keys["source_format"].to_pylist(), keys["resolved"].to_pylist(), keys["quarantine_reason"].to_pylist()
    ):
        if reason is None:
            good[(fmt, {True: "resolved", False: "unresolved", None: "unknown"}[resolved])] += 1
        else:
            bad[reason] += 1
    rows_out, rows_quarantined = sum(good.values()), sum(bad.values())
    return {
        "rows_in": keys.num_rows,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "by_format_and_resolution": {f"{fmt}/{res}": n for (fmt, res), n in sorted(good.items())},
        "quarantined_by_reason": dict(sorted(bad.items())),
    }
