import math

import pytest
import torch

from vtfpar.loss import WeightedBCE


def test_weighted_bce_matches_eq_6_7_by_hand():
    r = torch.tensor([0.2, 0.5])
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = [[1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))], [0.5, 1 / (1 + math.exp(-0.5))]]
    total = (
        math.exp(1 - 0.2) * -math.log(p[0][0])  # positive of attribute 0: w = e^(1-r)
        + math.exp(0.5) * -math.log(1 - p[0][1])  # negative of attribute 1: w = e^r
        + math.exp(0.2) * -math.log(1 - p[1][0])
        + math.exp(1 - 0.5) * -math.log(p[1][1])
    )
    assert WeightedBCE(r)(logits, y).item() == pytest.approx(total / 2, rel=1e-6)  # / batch (code)
    assert WeightedBCE(r, "attributes")(logits, y).item() == pytest.approx(total / 2, rel=1e-6)  # / M = 2
    assert WeightedBCE(r, "attributes")(logits[:1], y[:1]).item() == pytest.approx(
        (math.exp(0.8) * -math.log(p[0][0]) + math.exp(0.5) * -math.log(1 - p[0][1])) / 2, rel=1e-6)


def test_rare_positive_weighs_more():
    loss = WeightedBCE(torch.tensor([0.1]))
    miss_pos = loss(torch.tensor([[-2.0]]), torch.tensor([[1.0]]))
    miss_neg = loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]))
    assert miss_pos > miss_neg


def test_bad_normaliser():
    with pytest.raises(ValueError):
        WeightedBCE(torch.tensor([0.5]), "mean")


@pytest.mark.parametrize("normalize", ["batch", "attributes"])
def test_processes_averaging_their_gradients_get_the_one_process_gradient(normalize):
    """Data parallel: P processes each take 1/P of the batch and average their gradients. Whichever normaliser,
    that average is the gradient (and the mean of their losses is the loss) of one process with the whole batch."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen)
    y = (torch.rand(8, 5, generator=gen) < 0.4).float()
    r = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.7])

    def loss_and_grad(one_loss, part):
        x = logits[part].clone().requires_grad_()
        value = one_loss(x, y[part])
        (grad,) = torch.autograd.grad(value, x)
        return value.item(), torch.zeros_like(logits).index_put_((part,), grad)

    whole, whole_grad = loss_and_grad(WeightedBCE(r, normalize), torch.arange(8))
    for processes in (2, 4):
        shares = [loss_and_grad(WeightedBCE(r, normalize, processes), part)
                  for part in torch.arange(8).chunk(processes)]
        assert sum(v for v, _ in shares) / processes == pytest.approx(whole, rel=1e-6)  # float32 sums
        torch.testing.assert_close(sum(g for _, g in shares) / processes, whole_grad, rtol=1e-6, atol=1e-9)
