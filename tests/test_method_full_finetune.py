"""full_finetune: every parameter on the image tower's token path (CLIP's contrastive ``proj`` is not on it)."""

from tests.conftest import tiny_model
from tests.method_counts import method_params


def test_trainable_count():
    model = tiny_model("full_finetune")
    vision = model.encoder.clip
    assert method_params(model) == sum(p.numel() for n, p in vision.named_parameters() if n != "visual.proj")
