"""The selective scan: a reference in torch ops, and a fused CPU kernel (numba) for training and evaluation.

    x, delta: (b, l, di); A: (n,); B: (n, di); C: (di, n); D: (di,)  ->  y: (b, l, di)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B * x_t,    y_t = C h_t + D x_t     (per channel, state entry)

The reference builds (l, b, di, n) tensors for the decay, the drive and every state (33.5 MB each per layer at the
default size), which the allocator maps and faults in again at every step. The fused kernel walks time once per
(batch row, block of channels), keeps the block's state in a small buffer, computes the decays itself and fuses the C
readout: nothing of size (l, b, di, n) ever exists. Channels are the innermost loop everywhere: x and delta are
contiguous along them, and every sum over the state is a vertical add, so LLVM vectorises the loops without
reassociating anything. Its backward recomputes the block's states and decays into buffers (l x n x block), then
runs one reverse pass; the parameter gradients are accumulated per batch row and summed by torch afterwards, so the
result does not depend on the thread count. CUDA tensors take the same design as one Triton kernel per direction
(scan_triton.py); a CPU without numba, or a GPU without Triton, takes the reference.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload
except ImportError:  # the reference path still works
    numba = None

log = logging.getLogger(__name__)

# Channels per kernel task. The forward's loops vectorise at 16; the backward's reverse loop stayed scalar at 16 and
# vectorises from 32 on (seen in the compiled kernel's instructions; tools/scan_candidates.py times the result).
FORWARD_BLOCK = 16
BACKWARD_BLOCK = 32
# contract: fused multiply-adds; nothing that reorders a sum, so results stay those of the written order
FASTMATH = {"contract"}


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


def exp_fast(v):
    """exp, inside the kernels: for float32 a polynomial that LLVM vectorises (within 1 ulp of exp on
    [-87.33, 88]; below, exp(-87.33), about the smallest normal float, instead of a subnormal or 0), for float64
    libm's exp."""
    return np.exp(v)


if numba is not None:
    @intrinsic
    def _float32_from_bits(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @overload(exp_fast, fastmath=FASTMATH)
    def _exp_fast(v):
        if v != types.float32:
            return lambda v: np.exp(v)

        def exp_float32(v):  # Cephes expf: Cody-Waite reduction to r in [-ln2/2, ln2/2], its polynomial; 2^n from bits
            v = min(max(v, np.float32(-87.33)), np.float32(88.0))
            n = np.floor(v * np.float32(1.442695041) + np.float32(0.5))
            r = v - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * r * r + r + np.float32(1.0)
            return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
        return exp_float32


def _task_channels(task, d_inner, block):
    """Task -> (batch row, first channel, channels in the block): tasks run over batch rows x blocks of channels."""
    blocks = (d_inner + block - 1) // block
    first = (task % blocks) * block
    return task // blocks, first, min(block, d_inner - first)


def _forward_task(task, x, delta, A, B, Ct, D, y):
    """One batch row x one block of channels. B and Ct: (n, di), contiguous along the channels. The block's
    buffers are padded to FORWARD_BLOCK channels so every inner loop has the same, vectorisable trip count."""
    length, d_inner, n = x.shape[1], x.shape[2], A.shape[0]
    b, first, width = _task_channels(task, d_inner, FORWARD_BLOCK)
    B_block, C_block = np.zeros((n, FORWARD_BLOCK), x.dtype), np.zeros((n, FORWARD_BLOCK), x.dtype)
    B_block[:, :width], C_block[:, :width] = B[:, first:first + width], Ct[:, first:first + width]
    h = np.zeros((n, FORWARD_BLOCK), x.dtype)
    dt, xt, acc = np.zeros(FORWARD_BLOCK, x.dtype), np.zeros(FORWARD_BLOCK, x.dtype), np.zeros(FORWARD_BLOCK, x.dtype)
    for t in range(length):
        dt[:width], xt[:width] = delta[b, t, first:first + width], x[b, t, first:first + width]
        for c in range(FORWARD_BLOCK):
            acc[c] = 0
        for k in range(n):
            a = A[k]
            for c in range(FORWARD_BLOCK):
                state = exp_fast(dt[c] * a) * h[k, c] + dt[c] * xt[c] * B_block[k, c]
                h[k, c] = state
                acc[c] += C_block[k, c] * state
        for c in range(width):
            y[b, t, first + c] = acc[c] + D[first + c] * xt[c]


def _backward_task(task, x, delta, A, B, Ct, D, grad_y, grad_x, grad_delta, grad_A, grad_B, grad_C, grad_D):
    """One batch row x one block of channels. grad_x, grad_delta: (b, l, di); per batch row: grad_A, grad_B,
    grad_C (b, n, di), grad_D (b, di), summed over b by the caller. The block's parameter gradients accumulate in
    small buffers and are written once."""
    length, d_inner, n = x.shape[1], x.shape[2], A.shape[0]
    b, first, width = _task_channels(task, d_inner, BACKWARD_BLOCK)
    B_block, C_block = np.zeros((n, BACKWARD_BLOCK), x.dtype), np.zeros((n, BACKWARD_BLOCK), x.dtype)
    B_block[:, :width], C_block[:, :width] = B[:, first:first + width], Ct[:, first:first + width]
    dt, xt, gy = np.zeros(BACKWARD_BLOCK, x.dtype), np.zeros(BACKWARD_BLOCK, x.dtype), np.zeros(BACKWARD_BLOCK, x.dtype)
    states = np.zeros((length + 1, n, BACKWARD_BLOCK), x.dtype)  # states[t + 1] = h_t, states[0] = 0
    decays = np.empty((length, n, BACKWARD_BLOCK), x.dtype)
    for t in range(length):  # recompute the block's decays and states
        dt[:width], xt[:width] = delta[b, t, first:first + width], x[b, t, first:first + width]
        for k in range(n):
            a = A[k]
            for c in range(BACKWARD_BLOCK):
                decay = exp_fast(dt[c] * a)
                decays[t, k, c] = decay
                states[t + 1, k, c] = decay * states[t, k, c] + dt[c] * xt[c] * B_block[k, c]
    carry = np.zeros((n, BACKWARD_BLOCK), x.dtype)  # dL/dh_t through h_{t+1}
    g_A, g_B, g_C = np.zeros_like(carry), np.zeros_like(carry), np.zeros_like(carry)
    gx, gdelta = np.zeros(BACKWARD_BLOCK, x.dtype), np.zeros(BACKWARD_BLOCK, x.dtype)
    for t in range(length - 1, -1, -1):
        dt[:width], xt[:width] = delta[b, t, first:first + width], x[b, t, first:first + width]
        gy[:width] = grad_y[b, t, first:first + width]
        for c in range(BACKWARD_BLOCK):
            gx[c], gdelta[c] = 0, 0
        for k in range(n):
            a = A[k]
            for c in range(BACKWARD_BLOCK):
                decay = decays[t, k, c]
                g = carry[k, c] + gy[c] * C_block[k, c]  # dL/dh_t
                g_C[k, c] += gy[c] * states[t + 1, k, c]
                g_decay = g * states[t, k, c] * decay  # dL/d(delta_t * A) through the decay
                gdelta[c] += g_decay * a + g * B_block[k, c] * xt[c]
                gx[c] += g * dt[c] * B_block[k, c]
                g_A[k, c] += g_decay * dt[c]
                g_B[k, c] += g * dt[c] * xt[c]
                carry[k, c] = g * decay
        for c in range(width):
            grad_x[b, t, first + c] = gx[c] + gy[c] * D[first + c]
            grad_delta[b, t, first + c] = gdelta[c]
    grad_D[b, first:first + width] = (grad_y[b, :, first:first + width] * x[b, :, first:first + width]).sum(0)
    grad_A[b, :, first:first + width] = g_A[:, :width]
    grad_B[b, :, first:first + width] = g_B[:, :width]
    grad_C[b, :, first:first + width] = g_C[:, :width]


def _tasks(x, block):
    """Batch rows x blocks of channels."""
    return x.shape[0] * ((x.shape[2] + block - 1) // block)


def _forward_serial(x, *args):
    for task in range(_tasks(x, FORWARD_BLOCK)):
        _forward_task(task, x, *args)


def _forward_parallel(x, *args):
    for task in numba.prange(_tasks(x, FORWARD_BLOCK)):
        _forward_task(task, x, *args)


def _backward_serial(x, *args):
    for task in range(_tasks(x, BACKWARD_BLOCK)):
        _backward_task(task, x, *args)


def _backward_parallel(x, *args):
    for task in numba.prange(_tasks(x, BACKWARD_BLOCK)):
        _backward_task(task, x, *args)


# (forward, backward), serial and parallel: separate functions, so that numba's on-disk cache keeps them apart. With
# one thread the serial pair runs: numba's OpenMP pool spins between parallel regions, and two 1-thread evaluation
# jobs side by side on 2 cores each took 40 s instead of 3 s.
KERNELS = {}
if numba is not None:
    _task_channels = numba.njit(cache=True)(_task_channels)
    _forward_task = numba.njit(cache=True, fastmath=FASTMATH)(_forward_task)
    _backward_task = numba.njit(cache=True, fastmath=FASTMATH)(_backward_task)
    _tasks = numba.njit(cache=True)(_tasks)
    KERNELS = {
        False: (numba.njit(cache=True)(_forward_serial),
                numba.njit(cache=True)(_backward_serial)),
        True: (numba.njit(parallel=True, cache=True)(_forward_parallel),
               numba.njit(parallel=True, cache=True)(_backward_parallel)),
    }


def _arrays(*tensors):
    return [t.detach().contiguous().numpy() for t in tensors]


class FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        x, delta, Ct = x.contiguous(), delta.contiguous(), C.t().contiguous()
        y = torch.empty_like(x)
        forward_kernel, _ = _kernels()
        forward_kernel(*_arrays(x, delta, A, B, Ct, D), y.numpy())
        ctx.save_for_backward(x, delta, A, B, Ct, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, delta, A, B, Ct, D = ctx.saved_tensors
        bsz, _, d_inner = x.shape
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)
        grad_A, grad_B, grad_C = (x.new_empty(bsz, A.shape[0], d_inner) for _ in range(3))
        grad_D = x.new_empty(bsz, d_inner)
        _, backward_kernel = _kernels()
        backward_kernel(*_arrays(x, delta, A, B, Ct, D, grad_y),
                        *(g.numpy() for g in (grad_x, grad_delta, grad_A, grad_B, grad_C, grad_D)))
        return grad_x, grad_delta, grad_A.sum((0, 2)), grad_B.sum(0), grad_C.sum(0).t(), grad_D.sum(0)


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


@cache
def triton_scan():
    """The Triton scan's autograd Function, or None (one log line) where Triton is not installed."""
    try:
        from .scan_triton import TritonScan
    except ImportError as err:
        log.warning("Triton is not available (%s): the GPU scan takes the reference in torch ops", err)
        return None
    return TritonScan


_KERNEL_WORKS = {}  # (device, shape of x, d_state) -> whether the Triton scan ran forward and backward on it


def gpu_scan(x, delta, A, B, C, D):
    """The Triton kernel in float32 where it has run forward and backward for this shape; where Triton is missing or
    the kernel fails, the reference, which computes the same function exactly."""
    kernel = triton_scan()
    if kernel is not None and _kernel_works(kernel, x, A.shape[0]):
        return kernel.apply(*(t.float() for t in (x, delta, A, B, C, D)))
    return reference_scan(x, delta, A, B, C, D)


def _kernel_works(kernel, x, d_state: int) -> bool:
    """Tried on a shape's first call, eagerly: the backward runs later, from loss.backward(), where no fallback can
    catch its failure, and a failure inside a CUDA graph capture would be the capture's, not the kernel's."""
    key = (x.device, tuple(x.shape), d_state)
    if key not in _KERNEL_WORKS:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"the Triton scan was not tried for x of shape {key[1]} before this capture")
        _KERNEL_WORKS[key] = _try_kernel(kernel, x.device, key[1], d_state)
    return _KERNEL_WORKS[key]


def _try_kernel(kernel, device, shape, d_state: int) -> bool:
    """Whether the kernel runs forward and backward on zeros of this shape; a failure is logged, naming the shape."""
    d_inner = shape[2]
    sizes = (shape, shape, (d_state,), (d_state, d_inner), (d_inner, d_state), (d_inner,))
    inputs = [torch.zeros(size, device=device, requires_grad=True) for size in sizes]
    try:
        with torch.enable_grad():  # also where the caller runs without gradients (evaluation)
            torch.autograd.grad(kernel.apply(*inputs).sum(), inputs)
    except Exception as err:  # a compile or launch failure: Triton raises many kinds
        log.warning("Triton scan failed for x of shape (b, l, di) = %s with d_state %d on %s (%s: %s); this shape "
                    "takes the reference scan", shape, d_state, device, type(err).__name__, err)
        return False
    return True


# auto: fused where available (numba on CPU, Triton on CUDA), else reference; "reference" forces torch ops. For
# `make bench-train` only (iteralite.trainbench): "none" replaces the scan by y = D * x, the floor, which also drops
# delta's path (delta_proj, softplus); "delta" is that floor with delta's path kept (y = D * x + 0 * delta).
IMPLEMENTATION = "auto"


def selective_scan(x, delta, A, B, C, D):
    if IMPLEMENTATION == "none":
        return D * x
    if IMPLEMENTATION == "delta":
        return D * x + 0 * delta
    if IMPLEMENTATION == "auto" and fused_available(x, delta, A, B, C, D):
        dtype = torch.promote_types(x.dtype, A.dtype)
        return FusedScan.apply(*(t.to(dtype) for t in (x, delta, A, B, C, D)))
    if IMPLEMENTATION == "auto" and x.is_cuda and x.dtype != torch.float64:  # the kernel computes in float32
        return gpu_scan(x, delta, A, B, C, D)
    return reference_scan(x, delta, A, B, C, D)
