"""The label and eval_critic configs: production defaults, the demo's settings, bad values refused."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.label.config import EvalCriticConfig, LabelConfig, confidence_mode
from pipeline.manifest import run_direct

REQUIRED = ["input=t", "output=l", "critic.model=m"]


def test_label_defaults_and_overrides():
    from pipeline.driver import PipelineConfig

    demo = load_config(PipelineConfig, "pipeline", []).label
    assert demo.input == "runs/demo/trajectories" and demo.output == "runs/demo/labels"
    assert demo.critic.model == ".cache/models/smollm2-135m-instruct"
    c = load_config(LabelConfig, "label", [*REQUIRED, "critic.pool.max=3", "critic.num_samples=1"])
    assert c.critic.pool.max == 3
    assert confidence_mode(c.critic) == "stated" and c.critic.enable_prefix_caching
    c.validate()


def test_vote_is_the_default_confidence():
    c = load_config(LabelConfig, "label", REQUIRED)
    assert c.critic.num_samples > 1 and confidence_mode(c.critic) == "vote"


@pytest.mark.parametrize("arg", ["critic.backend=tgi", "critic.confidence=guess", "critic.pool.min=0"])
def test_bad_values_refused(arg):
    with pytest.raises((UserError, ValueError)):  # at load time, or from validate()
        load_config(LabelConfig, "label", [*REQUIRED, arg]).validate()


def test_eval_requires_its_inputs():
    c = load_config(EvalCriticConfig, "eval_critic", ["labels=l", "reference=conf/sample/reference_labels"])
    assert c.reference == "conf/sample/reference_labels" and c.min_confidence == 0.0


@pytest.mark.parametrize("arg, key", [
    ("limit=-1", "limit"),
    ("commit_every_trajectories=0", "commit_every_trajectories"),
    ("max_error_fraction=1.5", "max_error_fraction"),
    ("unknown_outcome=maybe", "unknown_outcome"),
    ("critic.batch_size=0", "critic.batch_size"),
    ("critic.num_samples=0", "critic.num_samples"),
    ("critic.min_valid_samples=9", "critic.min_valid_samples"),
    ("critic.openai.timeout_s=0", "critic.openai.timeout_s"),
    ("critic.openai.concurrency=0", "critic.openai.concurrency"),
    ("critic.max_model_len=10", "critic.max_model_len"),
    ("critic.max_engine_restarts=-1", "critic.max_engine_restarts"),
    ("critic.env.HF_TOKEN=x", "critic.env.HF_TOKEN"),
])
def test_bad_settings_refused_at_load_naming_the_key(arg, key):
    with pytest.raises(UserError) as e:
        load_config(LabelConfig, "label", [*REQUIRED, arg])
    assert key in str(e.value)


def test_max_model_len_refused_only_when_nothing_could_fit(qwen_tokenizer_path):
    """The load-time bound is conservative: a context it refuses cannot hold even a one-step
    trajectory's prompt with a real tokenizer (so it never refuses a config that could work)."""
    from transformers import AutoTokenizer

    from pipeline.label.config import MIN_PROMPT_TOKENS, CriticConfig
    from pipeline.label.prompt import PromptBuilder, PromptTooLong
    from tests.label.helpers import trajectory

    c = CriticConfig(model="m", output_tokens_per_step=64, max_model_len=MIN_PROMPT_TOKENS + 64 + 32 - 1)
    with pytest.raises(UserError, match="critic.max_model_len"):
        c.validate()
    row = trajectory("t", 1)
    with pytest.raises(PromptTooLong):
        PromptBuilder(AutoTokenizer.from_pretrained(qwen_tokenizer_path), c).build(row["messages"], False, 1)


def test_a_config_built_in_code_is_validated_once_before_anything_runs(tmp_path):
    """Stages do not re-validate: `run_direct` (what `label.run(cfg)` calls) validates a config built
    in code, as `load_config` validates one from YAML."""
    from pipeline.label import stage as label

    out = tmp_path / "out"
    with pytest.raises(UserError, match="^limit must be"):
        run_direct(label.STAGE, LabelConfig(input=str(tmp_path / "in"), output=str(out), limit=-1))
    assert not out.exists()
