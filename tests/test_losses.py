"""The chunked LM head losses against the plain full-logit computation: values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from iteralite import losses


def full_kd(student_logits, teacher_logits, t):
    """KL(teacher || student) on softened distributions, T^2-scaled, mean over rows: the textbook form."""
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True,
                    reduction="batchmean") * t * t


@pytest.fixture
def head(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_TOKENS", 64)  # 150 rows: two full chunks and a partial one
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(150, 16, generator=gen, dtype=torch.double, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.double, requires_grad=True)
    targets = torch.randint(0, 50, (150,), generator=gen)
    teacher_hidden = torch.randn(150, 16, generator=gen, dtype=torch.double)
    teacher_weight = torch.randn(50, 16, generator=gen, dtype=torch.double)
    return hidden, weight, targets, teacher_hidden, teacher_weight


def test_chunked_cross_entropy_and_distillation_equal_the_full_logit_forms(head):
    hidden, weight, targets, teacher_hidden, teacher_weight = head
    loss, ce, kd = losses.lm_losses(hidden, weight, targets, teacher_hidden, teacher_weight, 2.0, kd_weight=0.7)
    loss.backward()
    chunked = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = hidden.float() @ weight.float().t()
    full_ce = F.cross_entropy(logits, targets)
    full = full_kd(logits, teacher_hidden.float() @ teacher_weight.float().t(), 2.0)
    (0.3 * full_ce + 0.7 * full).backward()
    assert ce.item() == pytest.approx(full_ce.item(), rel=1e-5) and kd.item() == pytest.approx(full.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.3 * full_ce.item() + 0.7 * full.item(), rel=1e-5)
    torch.testing.assert_close(chunked[0], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(chunked[1], weight.grad, rtol=1e-4, atol=1e-6)


def test_distillation_from_the_same_model_is_zero(head):
    hidden, weight, targets, _, _ = head
    loss, _, kd = losses.lm_losses(hidden, weight, targets, hidden.detach(), weight.detach(), 2.0, kd_weight=1.0)
    assert kd.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()  # pure distillation from itself: nothing to learn
    assert hidden.grad.abs().max().item() < 1e-6 and weight.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_a_loss_term_of_weight_zero_adds_no_gradient(head, kd_weight):
    hidden, weight, targets, teacher_hidden, teacher_weight = head
    loss, ce, kd = losses.lm_losses(hidden, weight, targets, teacher_hidden, teacher_weight, 2.0, kd_weight)
    loss.backward()
    assert loss.item() == pytest.approx((kd if kd_weight else ce).item(), rel=1e-9)
    reference = hidden.detach().clone().requires_grad_()
    logits = reference @ weight.detach().t()
    only_term = full_kd(logits, teacher_hidden @ teacher_weight.t(), 2.0) if kd_weight else F.cross_entropy(logits,
                                                                                                          targets)
    only_term.backward()
    torch.testing.assert_close(hidden.grad, reference.grad, rtol=1e-4, atol=1e-6)


def test_head_cross_entropy_sum_takes_any_head(head):
    hidden, weight, targets, _, _ = head
    total = losses.head_cross_entropy_sum(lambda h: h @ weight.t(), hidden, targets)
    assert total == pytest.approx(F.cross_entropy(hidden @ weight.t(), targets, reduction="sum").item(), rel=1e-6)
