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
    """(mean cross-entropy, mean distillation KL) of logits = hidden @ weight.T, in chunks of rows."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, temperature):
        with torch.autocast(hidden.device.type, enabled=False):  # the head in float32, also under bf16 autocast
            return ChunkedHeadLoss._forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, temperature)

    @staticmethod
    def _forward(ctx, hidden, weight, targets, teacher_hidden, teacher_weight, temperature):
        hidden32, weight32 = hidden.float(), weight.float()
        rows = hidden.shape[0]
        distill = teacher_hidden is not None
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grads = {}
        if want_grad:
            grads = {"ce": (torch.empty_like(hidden32), torch.zeros_like(weight32))}
            if distill:
                grads["kd"] = (torch.empty_like(hidden32), torch.zeros_like(weight32))
        ce_sum, kd_sum = hidden32.new_zeros(()), hidden32.new_zeros(())
        for start in range(0, rows, CHUNK_TOKENS):
            chunk = slice(start, min(start + CHUNK_TOKENS, rows))
            h, y = hidden32[chunk], targets[chunk]
            logits = h @ weight32.t()
            log_probs = torch.log_softmax(logits, dim=-1)
            ce_sum += -log_probs.gather(1, y[:, None]).sum()
            if want_grad:  # d(sum CE)/d logits = softmax - one-hot
                g = log_probs.exp_()
                g[torch.arange(g.shape[0]), y] -= 1
                _accumulate(grads["ce"], g, h, weight32, chunk)
            if distill:
                t = temperature
                student = torch.log_softmax(logits / t, dim=-1)
                teacher = torch.log_softmax((teacher_hidden[chunk].float() @ teacher_weight.float().t()) / t, dim=-1)
                kd_sum += (teacher.exp() * (teacher - student)).sum() * (t * t)
                if want_grad:  # d(T^2 KL)/d logits = T (softmax(z/T) - softmax(z_teacher/T))
                    g = (student.exp_() - teacher.exp_()) * t
                    _accumulate(grads["kd"], g, h, weight32, chunk)
        ctx.grads = grads
        ctx.rows = rows
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return ce_sum / rows, kd_sum / rows

    @staticmethod
    def backward(ctx, grad_ce, grad_kd):
        grad_hidden = grad_weight = None
        for name, scale in (("ce", grad_ce), ("kd", grad_kd)):
            if name not in ctx.grads or scale is None:
                continue
            g_hidden, g_weight = ctx.grads[name]
            factor = scale / ctx.rows
            grad_hidden = g_hidden * factor if grad_hidden is None else grad_hidden + g_hidden * factor
            grad_weight = g_weight * factor if grad_weight is None else grad_weight + g_weight * factor
        ctx.grads = None
        if grad_hidden is not None:
            grad_hidden, grad_weight = grad_hidden.to(ctx.dtypes[0]), grad_weight.to(ctx.dtypes[1])
        return grad_hidden, grad_weight, None, None, None, None


def _accumulate(grads, g, h, weight, chunk):
    grad_hidden, grad_weight = grads
    torch.matmul(g, weight, out=grad_hidden[chunk])
    grad_weight.addmm_(g.t(), h)


def lm_losses(hidden, weight, targets, teacher_hidden=None, teacher_weight=None, temperature: float = 1.0):
    """Mean next-token cross-entropy and (with a teacher, else 0) mean distillation loss over rows of `hidden`
    (tokens x d) against `targets` (tokens,), with the LM head `weight` (v x d)."""
    if teacher_hidden is not None:
        teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
    return ChunkedHeadLoss.apply(hidden, weight, targets, teacher_hidden, teacher_weight, temperature)


@torch.no_grad()
def head_cross_entropy_sum(head, hidden, targets) -> float:
    """Summed next-token cross-entropy of `head(hidden)` (any LM head, INT4 ones included), in chunks of rows."""
    total = 0.0
    for h, y in zip(hidden.split(CHUNK_TOKENS), targets.split(CHUNK_TOKENS)):
        total += F.cross_entropy(head(h).float(), y, reduction="sum").item()
    return total
