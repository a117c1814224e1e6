from dataclasses import dataclass, field

import pytest

from pipeline.config import load_config, redacted
from pipeline.errors import UserError
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
    assert load_config(Outer, "s", ["inner.threshold=0.9"], conf_dir=tmp_path) == Outer(
        input="from-yaml", inner=Inner(threshold=0.9))
    # A preset replaces the default YAML (the demo's), so production never inherits toy settings.
    preset = tmp_path / "preset.yaml"
    preset.write_text("inner:\n  labels: [mistake, unnecessary]\n")
    cfg = load_config(Outer, "s", [f"config={preset}", "inner.threshold=0.9"], conf_dir=tmp_path)
    assert cfg == Outer(input="a", inner=Inner(threshold=0.9, labels=["mistake", "unnecessary"]))


def test_rejects_unknown_keys_bad_types_and_missing_required(tmp_path):
    with pytest.raises(UserError, match=r"inner\.treshold.*Did you mean: 'threshold'"):
        load_config(Outer, "s", ["inner.treshold=0.9"], conf_dir=tmp_path)
    with pytest.raises(UserError, match=r"inner\.threshold"):
        load_config(Outer, "s", ["inner.threshold=high"], conf_dir=tmp_path)
    with pytest.raises(UserError, match="not key=value"):
        load_config(Outer, "s", ["threshold"], conf_dir=tmp_path)
    with pytest.raises(UserError, match="input is required"):
        load_config(IngestConfig, "none", [], conf_dir=tmp_path)
    with pytest.raises(UserError, match="no such preset"):
        load_config(Outer, "s", [f"config={tmp_path}/nope.yaml"], conf_dir=tmp_path)


@dataclass
class Checked:
    size: int = 1
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.size <= 0:
            raise UserError(f"size must be > 0 (got {self.size})")


def test_validate_runs_at_load_time(tmp_path):
    with pytest.raises(UserError, match="size must be > 0"):
        load_config(Checked, "s", ["size=0"], conf_dir=tmp_path)
    assert load_config(Checked, "s", ["size=3"], conf_dir=tmp_path).size == 3


@dataclass
class CountedChild:
    min: int = 1
    calls: int = 0

    def validate(self, prefix: str = "child") -> None:
        self.calls += 1
        if self.min < 1:
            raise UserError(f"{prefix}.min must be >= 1 (got {self.min})")


@dataclass
class CountedParent:
    child: CountedChild = field(default_factory=CountedChild)

    def validate(self) -> None:  # owns its child's checks, as LabelConfig owns critic.pool's
        self.child.validate("child")


@dataclass
class CountedDriver:  # no validate() of its own, like the pipeline driver's config
    STAGE_FIELDS = ("stage",)
    stage: CountedParent = field(default_factory=CountedParent)


def test_each_check_runs_once_at_load(tmp_path):
    # A nested config's validate() is its parent's to call: load_config does not call it again.
    assert load_config(CountedParent, "s", [], conf_dir=tmp_path).child.calls == 1
    assert load_config(CountedDriver, "s", [], conf_dir=tmp_path).stage.child.calls == 1
    with pytest.raises(UserError, match=r"^stage\.child\.min must be >= 1"):  # the key the user typed
        load_config(CountedDriver, "s", ["stage.child.min=0"], conf_dir=tmp_path)


def test_redaction():
    cfg = {"base_url": "https://user:pw@host/v1", "api_key": "sk-1", "nested": {"aws_secret": "x", "n": 3}}
    assert redacted(cfg) == {
        "base_url": "https://<redacted>@host/v1", "api_key": "<redacted>", "nested": {"aws_secret": "<redacted>", "n": 3}
    }
