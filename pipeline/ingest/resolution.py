"""Which instances were resolved, from SWE-bench evaluation reports.

Accepted, in a single file or anywhere under a folder:
- a per-instance ``<instance_id>/report.json`` whose ``resolved`` is a bool or "True"/"False";
- the SWE-bench harness form ``{"<instance_id>": {"resolved": ...}}``;
- a run summary with ``ids_resolved`` / ``ids_unresolved`` lists of instance ids.

A report never stops the ingest. A file that cannot be read or parsed, a value that is not a
verdict (``"yes"``, ``1``, ``null``), an id that is not text: each is counted by reason in
`ResolutionReport` (the ingest summary's ``resolution``), with the first few named by file, and
the instances it would have decided stay unknown. Per-instance reports win over summaries,
since they are the harness's direct output.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline import io, record

EXAMPLES = 10  # unusable entries named in the summary; the rest are counted


@dataclass
class ResolutionReport:
    files: int = 0
    instances: int = 0
    unusable: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def refuse(self, reason: str, detail: str) -> None:
        self.unusable[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(detail.encode("utf-8", "replace").decode("utf-8")[:300])

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "instances": self.instances,
            "unusable": sum(self.unusable.values()),
            "unusable_by_reason": dict(sorted(self.unusable.items())),
            "unusable_examples": self.examples,
        }


def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _short(value: Any) -> str:
    if isinstance(value, str):
        return ascii(value[:40])
    if value is None or isinstance(value, (bool, float)) or (isinstance(value, int) and value.bit_length() < 64):
        return repr(value)
    return f"a {type(value).__name__}"


def parse_report(doc: Any, uri: str, report: ResolutionReport | None = None) -> dict[str, bool]:
    """instance_id -> resolved from one parsed report; what is unusable goes to `report`."""
    report = report if report is not None else ResolutionReport()
    out: dict[str, bool] = {}
    if not isinstance(doc, dict):
        report.refuse("not_an_object", f"{uri}: an evaluation report must be a JSON object, not {_short(doc)}")
        return out
    if "ids_resolved" in doc or "ids_unresolved" in doc:
        for key, verdict in (("ids_unresolved", False), ("ids_resolved", True)):
            ids = doc.get(key)
            if ids is None:
                continue
            if not isinstance(ids, list):
                report.refuse("bad_id_list", f"{uri}: {key} is {_short(ids)}, expected a list of instance ids")
                continue
            for i, instance_id in enumerate(ids):
                if isinstance(instance_id, str):
                    out[instance_id] = verdict
                else:
                    report.refuse("bad_instance_id", f"{uri}: {key}[{i}] is {_short(instance_id)}, expected text")
        return out
    if "resolved" in doc:
        instance_id = posixpath.basename(posixpath.dirname(uri.rstrip("/")))
        verdict = _verdict(doc["resolved"])
        if verdict is None:
            report.refuse("bad_resolved_value",
                          f"{uri}: 'resolved' is {_short(doc['resolved'])}, expected a bool or 'True'/'False'")
        else:
            out[instance_id] = verdict
        return out
    for key, value in doc.items():
        if isinstance(value, dict) and "resolved" in value:
            verdict = _verdict(value["resolved"])
            if verdict is None:
                report.refuse("bad_resolved_value", f"{uri} [{_short(key)}]: 'resolved' is "
                                                    f"{_short(value['resolved'])}, expected a bool or 'True'/'False'")
            else:
                out[key] = verdict
    return out


def read_resolution(uri: str | record.Input | None) -> tuple[dict[str, bool], ResolutionReport]:
    """instance_id -> resolved from every report under `uri` (a URI, or the input as run_stage
    located it), and what was unusable."""
    report = ResolutionReport()
    if not record.uri_of(uri):  # no resolution input configured
        return {}, report
    summaries: dict[str, bool] = {}
    per_instance: dict[str, bool] = {}
    for f in io.list_files(uri, (".json",)):
        report.files += 1
        try:
            doc = json.loads(io.read_bytes(f))
        except RecursionError:
            report.refuse("invalid_json", f"{f}: nested too deeply to parse")
            continue
        except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError, digit limit, I/O
            report.refuse("unreadable_report" if isinstance(e, OSError) else "invalid_json",
                          f"{f}: {type(e).__name__}: {str(e)[:200]}")
            continue
        parsed = parse_report(doc, f, report)
        is_summary = isinstance(doc, dict) and ("ids_resolved" in doc or "ids_unresolved" in doc)
        (summaries if is_summary else per_instance).update(parsed)
    resolution = {**summaries, **per_instance}
    report.instances = len(resolution)
    return resolution, report


def load_resolution(uri: str | None) -> dict[str, bool]:
    """instance_id -> resolved from every report under `uri` (unusable reports left out)."""
    return read_resolution(uri)[0]
