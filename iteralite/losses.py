"""The LM head and its losses in chunks of tokens, so that the full (tokens x vocabulary) logits never exist.

At the default size one batch's logits are 32 x 128 x 8000 float32 = 131 MB, and a plain cross-entropy keeps them,
their softmax and their gradient alive at once. Here the head runs over `CHUNK_TOKENS` rows at a time, and the
gradients of the losses with respect to the hidden states and the (tied) head weight are computed in the same pass
(the losses are the graph's last nodes, so their gradient is known up to the scalar that backward brings): no
logits are kept for backward and none are recomputed. Distillation from a teacher (KL on temperature-softened
distributions, scaled by T^2, Hinton et al. 2015) is computed in the same chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 512  # 512 x 8000 float32 logits = 16 MB


class ChunkedHeadLoss(torch.autograd.Function):
    """(loss, mean cross-entropy, mean distillation KL) of logits = hidden @ weight.T, in chunks of rows, where
    loss = (1 - kd_weight) * CE + kd_weight * KD is the one output gradients flow from: each chunk's logit gradient
    is the mixed one, so the head's backward matmuls run once, and not at all for a loss term of weight 0."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, temperature, kd_weight):
        with torch.autocast(hidden.device.type, enabled=False):  # the head in float32, also under bf16 autocast
            outputs = ChunkedHeadLoss._forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight,
                                               temperature, kd_weight)
        ctx.mark_non_differentiable(outputs[1], outputs[2])
        return outputs

    @staticmethod
    def _forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, temperature, kd_weight):
        hidden32, weight32 = hidden.float(), weight.float()
        rows, t = hidden.shape[0], temperature
        ce_weight = 1.0 - kd_weight if teacher_hidden is not None else 1.0
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden32) if want_grad else None
        grad_weight = torch.zeros_like(weight32) if want_grad else None
        ce_sum, kd_sum = hidden32.new_zeros(()), hidden32.new_zeros(())
        for start in range(0, rows, CHUNK_TOKENS):
            chunk = slice(start, min(start + CHUNK_TOKENS, rows))
            h, y = hidden32[chunk], targets[chunk]
            logits = h @ weight32.t()
            log_probs = torch.log_softmax(logits, dim=-1)
            ce_sum += -log_probs.gather(1, y[:, None]).sum()
            g = None
            if want_grad and ce_weight > 0:  # d(sum CE)/d logits = softmax - one-hot
                g = log_probs.exp_()
                g[torch.arange(g.shape[0], device=g.device), y] -= 1  # on the device: a host index copy would sync
                g *= ce_weight
            if teacher_hidden is not None:
                student = torch.log_softmax(logits / t, dim=-1)
                teacher = torch.log_softmax((teacher_hidden[chunk].float() @ teacher_weight.float().t()) / t, dim=-1)
                teacher_probs = teacher.exp()
                kd_sum += (teacher_probs * (teacher - student)).sum() * (t * t)
                if want_grad and kd_weight > 0:  # d(T^2 KL)/d logits = T (softmax(z/T) - softmax(z_teacher/T))
                    g_kd = (student.exp_() - teacher_probs).mul_(t * kd_weight)
                    g = g_kd if g is None else g.add_(g_kd)
            if g is not None:
                torch.matmul(g, weight32, out=grad_hidden[chunk])
                grad_weight.addmm_(g.t(), h)
            elif want_grad:
                grad_hidden[chunk] = 0
        ctx.grads = (grad_hidden, grad_weight)
        ctx.rows = rows
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ce, kd = ce_sum / rows, kd_sum / rows
        kd_weight = kd_weight if teacher_hidden is not None else 0.0
        return ce_weight * ce + kd_weight * kd, ce, kd  # a new tensor: the loss must not be marked like ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kd):
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if grad_hidden is None:
            return (None,) * 7
        factor = grad_loss / ctx.rows
        return ((grad_hidden * factor).to(ctx.dtypes[0]), (grad_weight * factor).to(ctx.dtypes[1]),
                None, None, None, None, None)


def lm_losses(hidden, weight, targets, teacher_hidden=None, teacher_weight=None, temperature: float = 1.0,
              kd_weight: float = 0.0):
    """(loss, mean next-token cross-entropy, mean distillation loss) over rows of `hidden` (tokens x d) against
    `targets` (tokens,), with the LM head `weight` (v x d). Without a teacher the loss is the cross-entropy and the
    distillation loss 0; with one, loss = (1 - kd_weight) * CE + kd_weight * KD. Only the loss has a gradient."""
    if teacher_hidden is not None:
        teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
    return ChunkedHeadLoss.apply(hidden, weight, targets, teacher_hidden, teacher_weight, temperature, kd_weight)


@torch.no_grad()
def head_cross_entropy_sum(head, hidden, targets) -> float:
    """Summed next-token cross-entropy of `head(hidden)` (any LM head, INT4 ones included), in chunks of rows."""
    total = 0.0
    for h, y in zip(hidden.split(CHUNK_TOKENS), targets.split(CHUNK_TOKENS)):
        total += F.cross_entropy(head(h).float(), y, reduction="sum").item()
    return total
