"""The selective scan: a reference in torch ops, and a fused CPU kernel (numba) for training and evaluation.

    x, delta: (b, l, di); A: (n,); B: (n, di); C: (di, n); D: (di,)  ->  y: (b, l, di)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B * x_t,    y_t = C h_t + D x_t     (per channel, state entry)

The reference builds (l, b, di, n) tensors for the decay, the drive and every state (33.5 MB each per layer at the
default size), which the allocator maps and faults in again at every step. The fused kernel walks time once per
(batch row, block of channels), keeps the state of the block in a small buffer, and fuses the C readout: nothing of
size (l, b, di, n) ever exists. Its backward recomputes the states of one block into a buffer (l x block x n), then
runs one reverse pass; the parameter gradients are accumulated per batch row and summed by torch afterwards, so
the result does not depend on the thread count. CUDA tensors and CPUs without numba take the reference.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:  # the reference path still works
    numba = None

CHANNEL_BLOCK = 16  # channels per kernel task: its buffers (l x 16 x n) stay in L1/L2
DECAY_ROWS = 4  # batch rows per kernel call, whose decays torch computes first


def reference_scan(x, delta, A, B, C, D):
    """Torch ops; time first so that each step is one contiguous slice; at least float32 (128 chained products),
    even under bf16 autocast."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    delta_t, x_t = delta.to(dtype).transpose(0, 1), x.to(dtype).transpose(0, 1)
    decay = torch.exp(delta_t.unsqueeze(-1) * A).contiguous()  # (l, b, di, n)
    drive = ((delta_t * x_t).unsqueeze(-1) * B.t()).contiguous()  # (l, b, di, n)
    states = LinearRecurrence.apply(decay, drive)  # (l, b, di, n)
    return ((states * C).sum(-1) + D * x_t).transpose(0, 1)


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = 0, over dim 0 of (l, ...) tensors; returns every h_t.

    One fused multiply-add per step forward and one backward, written in place into preallocated tensors, instead
    of autograd recording a graph node per step and stacking the states afterwards.
    """

    @staticmethod
    def forward(ctx, a, b):  # a, b: (l, ...) -> h: (l, ...)
        h = torch.empty_like(b)
        h[0].copy_(b[0])
        for t in range(1, b.shape[0]):
            torch.addcmul(b[t], a[t], h[t - 1], out=h[t])
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        grad_h = grad_h.contiguous()
        grad_b = torch.empty_like(grad_h)  # dL/db_t = dL/dh_t accumulated backwards through time
        grad_b[-1].copy_(grad_h[-1])
        for t in range(grad_h.shape[0] - 2, -1, -1):
            torch.addcmul(grad_h[t], a[t + 1], grad_b[t + 1], out=grad_b[t])
        grad_a = torch.zeros_like(a)
        grad_a[1:] = grad_b[1:] * h[:-1]  # dL/da_t = dL/db_t * h_{t-1}, and h_{-1} = 0
        return grad_a, grad_b


def _forward_task(task, x, delta, decays, Bt, C, D, y):
    """One batch row x one block of channels. decays = exp(delta * A), (b, l, di, n) for the few batch rows of one
    call; Bt is B transposed, (di, n): every inner loop over the state runs over contiguous memory."""
    length, d_inner = x.shape[1], x.shape[2]
    n = Bt.shape[1]
    blocks = (d_inner + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    b, first = task // blocks, (task % blocks) * CHANNEL_BLOCK
    width = min(CHANNEL_BLOCK, d_inner - first)
    h = np.zeros((CHANNEL_BLOCK, n), dtype=x.dtype)
    for t in range(length):
        for c in range(width):
            d = first + c
            dt, xt = delta[b, t, d], x[b, t, d]
            acc = D[d] * xt
            for k in range(n):
                state = decays[b, t, d, k] * h[c, k] + dt * Bt[d, k] * xt
                h[c, k] = state
                acc += C[d, k] * state
            y[b, t, d] = acc


def _backward_task(task, x, delta, decays, A, Bt, C, D, grad_y, grad_x, grad_delta, grad_A, grad_Bt, grad_C, grad_D):
    """One batch row x one block of channels. grad_x, grad_delta: (b, l, di); per batch row: grad_A, grad_Bt,
    grad_C (b, di, n), grad_D (b, di), summed over b by the caller. The block's parameter gradients accumulate in
    small buffers and are written once."""
    length, d_inner = x.shape[1], x.shape[2]
    n = A.shape[0]
    blocks = (d_inner + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    b, first = task // blocks, (task % blocks) * CHANNEL_BLOCK
    width = min(CHANNEL_BLOCK, d_inner - first)
    states = np.zeros((length + 1, CHANNEL_BLOCK, n), dtype=x.dtype)  # states[t + 1] = h_t, states[0] = 0
    for t in range(length):  # recompute the block's states
        for c in range(width):
            d = first + c
            dt, xt = delta[b, t, d], x[b, t, d]
            for k in range(n):
                states[t + 1, c, k] = decays[b, t, d, k] * states[t, c, k] + dt * Bt[d, k] * xt
    carry = np.zeros((CHANNEL_BLOCK, n), dtype=x.dtype)  # dL/dh_t through h_{t+1}
    g_A = np.zeros((CHANNEL_BLOCK, n), dtype=x.dtype)
    g_B = np.zeros((CHANNEL_BLOCK, n), dtype=x.dtype)
    g_C = np.zeros((CHANNEL_BLOCK, n), dtype=x.dtype)
    g_D = np.zeros(CHANNEL_BLOCK, dtype=x.dtype)
    for t in range(length - 1, -1, -1):
        for c in range(width):
            d = first + c
            dt, xt, gy = delta[b, t, d], x[b, t, d], grad_y[b, t, d]
            gx = gy * D[d]
            gdelta = gx * 0  # of x's dtype
            g_D[c] += gy * xt
            for k in range(n):
                decay = decays[b, t, d, k]
                g = carry[c, k] + gy * C[d, k]  # dL/dh_t
                g_C[c, k] += gy * states[t + 1, c, k]
                g_decay = g * states[t, c, k] * decay  # dL/d(delta_t * A) through the decay
                gdelta += g_decay * A[k] + g * Bt[d, k] * xt
                gx += g * dt * Bt[d, k]
                g_A[c, k] += g_decay * dt
                g_B[c, k] += g * dt * xt
                carry[c, k] = g * decay
            grad_x[b, t, d] = gx
            grad_delta[b, t, d] = gdelta
    for c in range(width):
        grad_D[b, first + c] = g_D[c]
        for k in range(n):
            grad_A[b, first + c, k] = g_A[c, k]
            grad_Bt[b, first + c, k] = g_B[c, k]
            grad_C[b, first + c, k] = g_C[c, k]


def _tasks(x):
    """Batch rows x blocks of channels."""
    return x.shape[0] * ((x.shape[2] + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK)


def _forward_serial(x, *args):
    for task in range(_tasks(x)):
        _forward_task(task, x, *args)


def _forward_parallel(x, *args):
    for task in numba.prange(_tasks(x)):
        _forward_task(task, x, *args)


def _backward_serial(x, *args):
    for task in range(_tasks(x)):
        _backward_task(task, x, *args)


def _backward_parallel(x, *args):
    for task in numba.prange(_tasks(x)):
        _backward_task(task, x, *args)


# (forward, backward), serial and parallel: separate functions, so that numba's on-disk cache keeps them apart. With
# one thread the serial pair runs: numba's OpenMP pool spins between parallel regions, and two 1-thread evaluation
# jobs side by side on 2 cores each took 40 s instead of 3 s.
KERNELS = {}
if numba is not None:
    _forward_task = numba.njit(cache=True)(_forward_task)
    _backward_task = numba.njit(cache=True)(_backward_task)
    _tasks = numba.njit(cache=True)(_tasks)
    KERNELS = {
        False: (numba.njit(cache=True)(_forward_serial),
                numba.njit(cache=True)(_backward_serial)),
        True: (numba.njit(parallel=True, cache=True)(_forward_parallel),
               numba.njit(parallel=True, cache=True)(_backward_parallel)),
    }


def _arrays(*tensors):
    return [t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else t for t in tensors]


class FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        x, delta, Bt = x.contiguous(), delta.contiguous(), B.t().contiguous()
        y = torch.empty_like(x)
        forward_kernel, _ = _kernels()
        for rows, decays in _decays_by_rows(delta, A):
            forward_kernel(*_arrays(x[rows], delta[rows], decays, Bt, C, D), y[rows].numpy())
        ctx.save_for_backward(x, delta, A, Bt, C, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, delta, A, Bt, C, D = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        bsz, _, d_inner = x.shape
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)
        grad_A, grad_Bt, grad_C = (x.new_empty(bsz, d_inner, A.shape[0]) for _ in range(3))
        grad_D = x.new_empty(bsz, d_inner)
        _, backward_kernel = _kernels()
        for rows, decays in _decays_by_rows(delta, A):
            backward_kernel(*_arrays(x[rows], delta[rows], decays, A, Bt, C, D, grad_y[rows]),
                             *(g[rows].numpy() for g in (grad_x, grad_delta, grad_A, grad_Bt, grad_C, grad_D)))
        return grad_x, grad_delta, grad_A.sum((0, 1)), grad_Bt.sum(0).t(), grad_C.sum(0), grad_D.sum(0)


def _decays_by_rows(delta, A):
    """exp(delta * A) for DECAY_ROWS batch rows at a time: torch's vectorised exp, on one buffer that stays small
    (4 x 128 x 256 x 8 float32 = 4 MB at the default size) and is reused, so no call maps fresh memory."""
    bsz, length, d_inner = delta.shape
    buffer = delta.new_empty(min(DECAY_ROWS, bsz), length, d_inner, A.shape[0])
    for start in range(0, bsz, DECAY_ROWS):
        rows = slice(start, min(start + DECAY_ROWS, bsz))
        decays = buffer[: rows.stop - start]
        torch.mul(delta[rows].unsqueeze(-1), A, out=decays)
        yield rows, decays.exp_().numpy()


def _kernels():
    """The kernels for as many threads as torch has (the rule's `threads`)."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads == 1:
        return KERNELS[False]
    numba.set_num_threads(threads)
    return KERNELS[True]


def fused_available(*tensors) -> bool:
    return numba is not None and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
                                     for t in tensors)


# auto: fused where available, else reference; "reference" forces torch ops. For `make bench-train` only
# (iteralite.trainbench): "none" replaces the scan by y = D * x, the floor, which also drops delta's path
# (delta_proj, softplus); "delta" is that floor with delta's path kept (y = D * x + 0 * delta).
IMPLEMENTATION = "auto"


def selective_scan(x, delta, A, B, C, D):
    if IMPLEMENTATION == "none":
        return D * x
    if IMPLEMENTATION == "delta":
        return D * x + 0 * delta
    if IMPLEMENTATION == "auto" and fused_available(x, delta, A, B, C, D):
        dtype = torch.promote_types(x.dtype, A.dtype)
        return FusedScan.apply(*(t.to(dtype) for t in (x, delta, A, B, C, D)))
    return reference_scan(x, delta, A, B, C, D)
