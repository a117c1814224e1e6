"""Typed stage configuration: dataclass defaults <- preset <- command line.

Every stage is run as ``python -m jobs.<stage> [config=PRESET.yaml] [key=value ...]``. The
dataclass is the schema: OmegaConf rejects unknown keys and values of the wrong type, and each
config's ``validate()`` checks values before any work starts. The dataclass defaults are the
production-sensible ones; a stage run on its own must be given its input and output URIs. The
demo's toy settings live only in ``conf/pipeline.yaml`` (``make demo``).

Mistakes in the command line or a preset raise `UserError` with the full key and what to do.
Credentials never live here; S3 access comes from the standard AWS environment.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from pipeline.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

T = TypeVar("T")

_SECRET_KEY = re.compile(r"(secret|password|token|api_key|credential)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")

# Keys whose value is where a stage writes. Under `ray job submit --working-dir`, a relative local
# path there would resolve inside Ray's temporary copy of the working directory and be lost.
OUTPUT_KEYS = ("output", "root", "quarantine", "errors", "checkpoint_storage")


def load_config(cls: type[T], stage: str, argv: list[str], conf_dir: Path = CONF_DIR) -> T:
    """Build a validated `cls` instance from its defaults, an optional preset and `argv`.

    ``conf/<stage>.yaml``, where one exists (only the pipeline driver's demo, ``conf/pipeline.yaml``),
    is the default preset: it is layered in only when `argv` names no ``config=`` preset, so a
    production preset never inherits demo settings.
    """
    layers: list[Any] = [OmegaConf.structured(cls)]
    stage_yaml = conf_dir / f"{stage}.yaml"
    if stage_yaml.exists() and not any(a.startswith("config=") for a in argv):
        layers.append(OmegaConf.load(stage_yaml))
    overrides = []
    for arg in argv:
        if arg.startswith("config="):
            preset = Path(arg.split("=", 1)[1])
            if not preset.exists():
                raise UserError(f"config={preset}: no such preset file (presets live in conf/prod/)")
            layers.append(OmegaConf.load(preset))
        elif "=" not in arg:
            raise UserError(f"argument {arg!r} is not key=value; `python -m jobs.{stage} --help` lists the keys")
        else:
            overrides.append(arg)
    try:
        layers.append(OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"{key} is required: pass {key}=... (`python -m jobs.{stage} --help` lists the keys)") from e
    except ConfigKeyError as e:
        hint = str(e).split("\n")[0]
        raise UserError(f"unknown key {getattr(e, 'full_key', '')!r}: {hint}") from e
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).split("\n")[0]
        raise UserError(f"{key}: {first}" if key else first) from e
    validate(cfg)
    return cfg


def validate(cfg: Any) -> None:
    """Validate `cfg` once (each check raises `UserError`).

    A config with a ``validate()`` method owns its checks, those of its nested configs included
    (``LabelConfig.validate`` calls ``critic.validate``, which calls ``pool.validate``): it is called
    and not descended into, so each check runs once. A config without one (the pipeline driver's) is
    descended into. A stage config's messages name its keys from the stage's root
    (``critic.pool.min``); where a config nests whole stage configs (the pipeline driver's ``label``,
    ``build``...: the names in its ``STAGE_FIELDS``), their messages get that field's name in front,
    so that they name the key the user typed (``label.critic.pool.min``)."""
    if not dataclasses.is_dataclass(cfg):
        return
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
        return
    stage_fields = getattr(cfg, "STAGE_FIELDS", ())
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        if f.name not in stage_fields:
            validate(child)
            continue
        try:
            validate(child)
        except UserError as e:
            raise UserError(f"{f.name}.{e}") from None


def resolve_outputs_for_ray_job(cfg: Any) -> Any:
    """Under `ray job submit --working-dir`, refuse a relative local output path, or resolve it
    against ``SRFT_OUTPUT_ROOT`` when the user set one. Elsewhere, return `cfg` unchanged."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job or not json.loads(job).get("runtime_env", {}).get("working_dir"):
        return cfg
    base = os.environ.get("SRFT_OUTPUT_ROOT")

    def fix(node: Any, prefix: str) -> Any:
        if not dataclasses.is_dataclass(node):
            return node
        changes = {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                changes[f.name] = fix(value, f"{prefix}{f.name}.")
            elif f.name in OUTPUT_KEYS and isinstance(value, str) and _is_relative_local(value):
                if not base:
                    raise UserError(
                        f"{prefix}{f.name}={value} is a relative path inside a Ray job with --working-dir: it would "
                        f"land in Ray's temporary copy of the working directory and be lost. Use an absolute path on "
                        f"shared storage or s3://, or set SRFT_OUTPUT_ROOT=/abs/dir in the job's env_vars."
                    )
                changes[f.name] = os.path.join(base, value)
        return dataclasses.replace(node, **changes) if changes else node

    return fix(cfg, "")


def _is_relative_local(uri: str) -> bool:
    return urlparse(uri).scheme == "" and not os.path.isabs(uri)


def help_text(cls: type, stage: str, usage: str, about: str, collapse: tuple[str, ...] = ()) -> str:
    """Every key of `cls` with its type, default and the comment beside it in the source. Fields
    named in `collapse` (the driver's whole-stage configs) get one line pointing at that stage's help."""
    rows = list(_describe(cls, "", collapse))
    width = max(len(k) for k, *_ in rows) + 2
    type_width = max(len(t) for _, t, _, _ in rows) + 2
    lines = [f"usage: {usage}", "", about.strip(), "",
             "Keys (key=value on the command line, or in a YAML preset given as config=FILE):", ""]
    for key, typ, default, doc in rows:
        lines.append(f"  {key:<{width}}{typ:<{type_width}}{default:<14}{doc}")
    lines += ["", "Also: config=PRESET.yaml (a YAML file of these keys), print_config=true (print the resolved",
              "config and exit), --help. SRFT_DEBUG=1 shows tracebacks for user errors."]
    return "\n".join(lines)


def _describe(cls: type, prefix: str, collapse: tuple[str, ...] = ()):
    hints = typing.get_type_hints(cls)
    docs = _field_comments(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if f.name in collapse:
            yield f"{prefix}{f.name}.*", "", "", f"every key of `python -m jobs.{f.name} --help`"
            continue
        if dataclasses.is_dataclass(typ):
            yield from _describe(typ, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = "required" if f.default == "???" else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        yield f"{prefix}{f.name}", _type_name(typ), default, docs.get(f.name, "")


def _type_name(typ: Any) -> str:
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    origin = typing.get_origin(typ)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if args and origin is not None:  # Optional[X] / X | None
        return _type_name(args[0]) + "?"
    return getattr(typ, "__name__", str(typ))


def _field_comments(cls: type) -> dict[str, str]:
    """The comment on a field's line, else the comment lines just above it: the docs we already write."""
    try:
        src = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in src:
        s = line.strip()
        if s.startswith("#"):
            above.append(s.lstrip("# ").strip())
            continue
        m = re.match(r"(\w+)\s*:\s*[^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", s)
        if m and not s.startswith(("def ", "class ", "@", "return")):
            note = re.sub(r"^noqa: \w+( - [^;]*;)?\s*", "", m.group(2) or "").strip()
            out[m.group(1)] = note or " ".join(above)
        above = []
    return out


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(redacted(cfg)))


def redacted(cfg: Any) -> dict:
    """The config as a plain dict with secret-looking values and URI credentials removed."""
    def clean(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: clean(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        if isinstance(node, str):
            if _SECRET_KEY.search(key) and node:
                return "<redacted>"
            return _URI_USERINFO.sub("<redacted>@", node)
        return node

    plain = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return clean(plain)
