"""Which instances were resolved, from SWE-bench evaluation reports.

Accepted, in a single file or anywhere under a folder:
- a per-instance ``<instance_id>/report.json`` whose ``resolved`` is a bool or "True"/"False";
- the SWE-bench harness form ``{"<instance_id>": {"resolved": ...}}``;
- a run summary with ``ids_resolved`` / ``ids_unresolved`` lists.
"""

from __future__ import annotations

import json
import posixpath

from pipeline import io


def _as_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{where}: 'resolved' is {value!r}, expected a bool or 'True'/'False'")


def parse_report(doc: dict, uri: str) -> dict[str, bool]:
    if not isinstance(doc, dict):
        raise ValueError(f"{uri}: an evaluation report must be a JSON object")
    if "ids_resolved" in doc or "ids_unresolved" in doc:
        out = {i: False for i in doc.get("ids_unresolved") or []}
        out.update({i: True for i in doc.get("ids_resolved") or []})
        return out
    if "resolved" in doc:
        instance_id = posixpath.basename(posixpath.dirname(uri.rstrip("/")))
        return {instance_id: _as_bool(doc["resolved"], uri)}
    return {
        key: _as_bool(value["resolved"], f"{uri} [{key}]")
        for key, value in doc.items()
        if isinstance(value, dict) and "resolved" in value
    }


def load_resolution(uri: str | None) -> dict[str, bool]:
    """instance_id -> resolved, from every report under `uri`. Per-instance reports win over
    summaries, since they are the harness's direct output."""
    if not uri:
        return {}
    summaries: dict[str, bool] = {}
    per_instance: dict[str, bool] = {}
    for f in io.list_files(uri, (".json",)):
        try:
            doc = json.loads(io.read_bytes(f))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f}: evaluation report is not valid JSON ({e})") from None
        parsed = parse_report(doc, f)
        (summaries if "ids_resolved" in doc or "ids_unresolved" in doc else per_instance).update(parsed)
    return {**summaries, **per_instance}
