"""prompt_tuning: CoOp context vectors (and optional shallow visual prompts)."""

import pytest
import torch

from tests.conftest import tiny_config, tiny_model
from tests.method_counts import method_params
from tests.operators import operator_trace
from vtfpar.errors import UserError


@pytest.mark.parametrize("visual_tokens", [0, 4])
def test_trainable_count(visual_tokens):
    model = tiny_model("prompt_tuning", overrides={"visual_tokens": visual_tokens})
    m = tiny_config("prompt_tuning").method
    assert method_params(model) == m.context * model.text.encoder.width + visual_tokens * model.encoder.clip.width


def test_prompt_context_too_long_for_the_text_encoder():
    with pytest.raises(UserError, match="lower methods.prompt_tuning.context"):
        tiny_model("prompt_tuning", overrides={"context": 30})


def test_deployed_inference_runs_the_text_encoder_once_and_then_costs_the_frozen_model(clips):
    frozen, prompted = tiny_model("frozen"), tiny_model("prompt_tuning")
    calls = []
    prompted.text.encoder.register_forward_hook(lambda *_: calls.append(1))
    traces = []
    for model in (frozen, prompted):
        with model.deployed():
            traces.append(operator_trace(lambda m=model: m(clips[0])))
            with torch.inference_mode():
                model(clips[0])
    assert len(calls) == 1  # at deployment, not per batch
    assert traces[0] == traces[1]
