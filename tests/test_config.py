from dataclasses import dataclass, field

import pytest
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from pipeline.config import load_config, redacted
from pipeline.ingest.config import IngestConfig


@dataclass
class Inner:
    threshold: float = 0.5
    labels: list[str] = field(default_factory=lambda: ["mistake"])


@dataclass
class Outer:
    input: str = "a"
    inner: Inner = field(default_factory=Inner)


def test_layers_and_dotlist(tmp_path):
    (tmp_path / "s.yaml").write_text("input: from-yaml\ninner:\n  threshold: 0.7\n")
    preset = tmp_path / "preset.yaml"
    preset.write_text("inner:\n  labels: [mistake, unnecessary]\n")
    cfg = load_config(Outer, "s", [f"config={preset}", "inner.threshold=0.9"], conf_dir=tmp_path)
    assert cfg == Outer(input="from-yaml", inner=Inner(threshold=0.9, labels=["mistake", "unnecessary"]))


def test_rejects_unknown_keys_bad_types_and_missing_required(tmp_path):
    with pytest.raises(ConfigKeyError):
        load_config(Outer, "s", ["inner.treshold=0.9"], conf_dir=tmp_path)
    with pytest.raises(ValidationError):
        load_config(Outer, "s", ["inner.threshold=high"], conf_dir=tmp_path)
    with pytest.raises(ValueError, match="not key=value"):
        load_config(Outer, "s", ["threshold"], conf_dir=tmp_path)
    with pytest.raises(MissingMandatoryValue):
        load_config(IngestConfig, "none", [], conf_dir=tmp_path)


def test_redaction():
    cfg = {"base_url": "https://user:pw@host/v1", "api_key": "sk-1", "nested": {"aws_secret": "x", "n": 3}}
    assert redacted(cfg) == {
        "base_url": "https://<redacted>@host/v1", "api_key": "<redacted>", "nested": {"aws_secret": "<redacted>", "n": 3}
    }
