"""bitfit: the image encoder's bias terms, and nothing else of it, train."""

from tests.conftest import tiny_model
from tests.method_counts import method_params


def test_trainable_count_is_every_bias_of_the_token_path():
    model = tiny_model("bitfit")
    vision = model.encoder.clip
    d = vision.width
    # q, k, v, out (4d) + fc1 (4d) + fc2 (d) + ln_1, ln_2 (2d) per block; ln_pre and ln_post (2d)
    assert method_params(model) == vision.layers * 11 * d + 2 * d
    trained = {n for n, p in vision.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in vision.named_parameters() if n.endswith(".bias")}
    assert "visual.conv1.bias" not in trained  # CLIP's patch embedding has none
