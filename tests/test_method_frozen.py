"""frozen: nothing of CLIP trains."""

from tests.conftest import tiny_model
from tests.method_counts import method_params


def test_trainable_count():
    assert method_params(tiny_model("frozen")) == 0
