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


def test_the_context_vectors_follow_the_start_token_and_precede_the_whole_sentence():
    """CoOp: the text encoder reads ``[SOT, v_1..v_n, the attribute sentence, EOT]``: the n placeholder words after
    the start token are what the context vectors replace, and the sentence follows them whole."""
    from vtfpar.data.synthetic import SYNTHETIC_ATTRIBUTES
    from vtfpar.text import tokenize

    n = 4
    model = tiny_model("prompt_tuning", overrides={"context": n})
    text = model.text
    with torch.no_grad():
        text.prompt_ctx.normal_()
    plain = tokenize("clip-tiny", list(SYNTHETIC_ATTRIBUTES.sentences), text.tokens.shape[1])
    x_id = tokenize("clip-tiny", ["X"], 8)[0, 1]
    assert torch.equal(text.tokens[:, 0], plain[:, 0]) and bool((text.tokens[:, 1:1 + n] == x_id).all())
    assert torch.equal(text.tokens[:, 1 + n:], plain[:, 1:plain.shape[1] - n])
    seen = []
    hook = text.encoder.transformer.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0]),
                                                              with_kwargs=True)
    with torch.no_grad():
        text()
    hook.remove()
    embed, pos = text.encoder.token_embedding, text.encoder.positional_embedding
    expected = torch.cat([embed(text.tokens[:, :1]), text.prompt_ctx.expand(len(plain), -1, -1),
                          embed(text.tokens[:, 1 + n:])], 1) + pos
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)
