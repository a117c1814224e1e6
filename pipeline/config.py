"""Typed stage configuration: dataclass defaults <- conf/<stage>.yaml <- preset <- command line.

Every stage is run as ``python -m jobs.<stage> [config=PRESET.yaml] [key=value ...]``. The
dataclass is the schema: OmegaConf rejects unknown keys and values of the wrong type.
Credentials never live here; S3 access comes from the standard AWS environment.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

T = TypeVar("T")

_SECRET_KEY = re.compile(r"(secret|password|token|api_key|credential)", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def load_config(
    cls: type[T], stage: str, argv: list[str], conf_dir: Path = CONF_DIR, nested: tuple[str, ...] = ()
) -> T:
    """Build a `cls` instance for `stage` from the layered sources, last one wins.

    `nested` names fields of `cls` that are whole stage configs (the pipeline driver's): each
    gets its own ``conf/<field>.yaml`` layered in first, so a stage has the same defaults
    whether it runs alone or inside the pipeline.
    """
    layers: list[Any] = [OmegaConf.structured(cls)]
    layers += [OmegaConf.create({name: OmegaConf.load(conf_dir / f"{name}.yaml")}) for name in nested]
    stage_yaml = conf_dir / f"{stage}.yaml"
    if stage_yaml.exists():
        layers.append(OmegaConf.load(stage_yaml))
    overrides = []
    for arg in argv:
        if arg.startswith("config="):
            preset = Path(arg.split("=", 1)[1])
            if not preset.exists():
                raise FileNotFoundError(f"config preset {preset} does not exist")
            layers.append(OmegaConf.load(preset))
        elif "=" not in arg:
            raise ValueError(f"argument {arg!r} is not key=value (see conf/{stage}.yaml for the keys)")
        else:
            overrides.append(arg)
    layers.append(OmegaConf.from_dotlist(overrides))
    return OmegaConf.to_object(OmegaConf.merge(*layers))


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
