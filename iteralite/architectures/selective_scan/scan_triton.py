"""The selective scan on a GPU: one Triton kernel per direction (the reference in scan.py stays the readable truth).

    x, delta: (b, l, di); A: (n,); B: (n, di); C: (di, n); D: (di,)  ->  y: (b, l, di)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B * x_t,    y_t = C h_t + D x_t     (per channel, state entry)

Each program owns one batch row and a block of BLOCK_D channels and walks time inside the kernel with the block's
state, (BLOCK_D, n) floats, in registers: the decays are computed in the kernel and the C readout and D skip are
fused, so a forward is one launch per layer whatever the sequence length, and nothing of size (b, l, di, n) exists.
The backward recomputes the block's states (a first pass writes them to a scratch buffer that only this program
reads), then walks time in reverse. Parameter gradients are written per batch row and summed by torch afterwards:
no atomics, so the result is the same on every run.

Tested on CPU through Triton's interpreter (TRITON_INTERPRET=1, tests/test_scan_triton.py); measured on a GPU by
`make bench-train` (iteralite.trainbench).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Channels per program: 32 channels x d_state 8-16 is 256-512 state floats, a few registers per thread of one
# warp. Larger blocks mean fewer programs: at the default size (batch 32, d_inner 256) 32 gives 256 programs.
BLOCK_D = 32
NUM_WARPS = 1


@triton.jit
def _block_parameters(A_ptr, B_ptr, C_ptr, D_ptr, channels, states, d_inner, N: tl.constexpr):
    """A (n,), B transposed and C as (block, n), D (block,) of one block of channels, and the masks of the block's
    channels and of its (channel, state) pairs (the state lanes are padded to a power of two)."""
    c_ok, n_ok = channels < d_inner, states < N
    both_ok = c_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + states, mask=n_ok, other=0.0)
    Bt = tl.load(B_ptr + states[None, :] * d_inner + channels[:, None], mask=both_ok, other=0.0)
    C = tl.load(C_ptr + channels[:, None] * N + states[None, :], mask=both_ok, other=0.0)
    D = tl.load(D_ptr + channels, mask=c_ok, other=0.0)
    return A, Bt, C, D, c_ok, both_ok


@triton.jit
def _scan_forward(x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, length, d_inner,
                  N: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    states = tl.arange(0, N_PAD)
    A, Bt, C, D, c_ok, both_ok = _block_parameters(A_ptr, B_ptr, C_ptr, D_ptr, channels, states, d_inner, N)
    h = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    base = row * length * d_inner
    for t in range(length):
        at = base + t * d_inner + channels
        xt = tl.load(x_ptr + at, mask=c_ok, other=0.0)
        dt = tl.load(delta_ptr + at, mask=c_ok, other=0.0)
        h = tl.exp(dt[:, None] * A[None, :]) * h + (dt * xt)[:, None] * Bt
        tl.store(y_ptr + at, tl.sum(h * C, axis=1) + D * xt, mask=c_ok)


@triton.jit
def _scan_backward(x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, gy_ptr, states_ptr,
                   gx_ptr, gdelta_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, length, d_inner,
                   N: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """states_ptr: scratch (b, l, di, N_PAD); gA, gB, gC: (b, di, N_PAD) and gD: (b, di), per batch row."""
    row = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    states = tl.arange(0, N_PAD)
    A, Bt, C, D, c_ok, both_ok = _block_parameters(A_ptr, B_ptr, C_ptr, D_ptr, channels, states, d_inner, N)
    base = row * length * d_inner
    block_states = channels[:, None] * N_PAD + states[None, :]  # (block, n) offsets within one time step
    # Pass 1: recompute h_t for every t into the scratch buffer.
    h = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    for t in range(length):
        at = base + t * d_inner + channels
        xt = tl.load(x_ptr + at, mask=c_ok, other=0.0)
        dt = tl.load(delta_ptr + at, mask=c_ok, other=0.0)
        h = tl.exp(dt[:, None] * A[None, :]) * h + (dt * xt)[:, None] * Bt
        tl.store(states_ptr + (base + t * d_inner) * N_PAD + block_states, h, mask=both_ok)
    tl.debug_barrier()  # the reverse pass reads what every thread of the program wrote
    # Pass 2: reverse time; carry = dL/dh_t through h_{t+1}.
    carry = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    g_A = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    g_B = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    g_C = tl.zeros((BLOCK, N_PAD), dtype=tl.float32)
    g_D = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(length):
        t = length - 1 - i
        at = base + t * d_inner + channels
        xt = tl.load(x_ptr + at, mask=c_ok, other=0.0)
        dt = tl.load(delta_ptr + at, mask=c_ok, other=0.0)
        gy = tl.load(gy_ptr + at, mask=c_ok, other=0.0)
        h_t = tl.load(states_ptr + (base + t * d_inner) * N_PAD + block_states, mask=both_ok, other=0.0)
        h_prev = tl.load(states_ptr + (base + tl.maximum(t - 1, 0) * d_inner) * N_PAD + block_states, mask=both_ok,
                         other=0.0)
        h_prev = tl.where(t > 0, h_prev, 0.0)  # h_{-1} = 0
        decay = tl.exp(dt[:, None] * A[None, :])
        g = carry + gy[:, None] * C  # dL/dh_t
        g_C += gy[:, None] * h_t
        g_decay = g * h_prev * decay  # dL/d(delta_t * A) through the decay
        g_Bx = g * Bt
        tl.store(gdelta_ptr + at, tl.sum(g_decay * A[None, :] + g_Bx * xt[:, None], axis=1), mask=c_ok)
        tl.store(gx_ptr + at, tl.sum(g_Bx, axis=1) * dt + gy * D, mask=c_ok)
        g_A += g_decay * dt[:, None]
        g_B += g * (dt * xt)[:, None]
        g_D += gy * xt
        carry = g * decay
    per_row = row * d_inner * N_PAD + block_states
    tl.store(gA_ptr + per_row, g_A, mask=both_ok)
    tl.store(gB_ptr + per_row, g_B, mask=both_ok)
    tl.store(gC_ptr + per_row, g_C, mask=both_ok)
    tl.store(gD_ptr + row * d_inner + channels, g_D, mask=c_ok)


def _grid(x):
    return (x.shape[0], triton.cdiv(x.shape[2], BLOCK_D))


class TritonScan(torch.autograd.Function):
    """float32 in, float32 out (the caller casts): 128 or more chained products need float32 even under bf16."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        x, delta, A, B, C, D = (t.contiguous() for t in (x, delta, A, B, C, D))
        length, d_inner, n = x.shape[1], x.shape[2], A.shape[0]
        y = torch.empty_like(x)
        _scan_forward[_grid(x)](x, delta, A, B, C, D, y, length, d_inner, N=n, N_PAD=triton.next_power_of_2(n),
                                BLOCK=BLOCK_D, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, delta, A, B, C, D)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, delta, A, B, C, D = ctx.saved_tensors
        bsz, length, d_inner = x.shape
        n = A.shape[0]
        n_pad = triton.next_power_of_2(n)
        scratch = x.new_empty(bsz, length, d_inner, n_pad)
        grad_x, grad_delta = torch.empty_like(x), torch.empty_like(delta)
        grad_A, grad_B, grad_C = (x.new_empty(bsz, d_inner, n_pad) for _ in range(3))
        grad_D = x.new_empty(bsz, d_inner)
        _scan_backward[_grid(x)](x, delta, A, B, C, D, grad_y.contiguous(), scratch, grad_x, grad_delta, grad_A,
                                 grad_B, grad_C, grad_D, length, d_inner, N=n, N_PAD=n_pad, BLOCK=BLOCK_D,
                                 num_warps=NUM_WARPS)
        # per batch row -> summed here, in torch's fixed reduction order
        return (grad_x, grad_delta, grad_A[..., :n].sum((0, 1)), grad_B[..., :n].sum(0).t(), grad_C[..., :n].sum(0),
                grad_D.sum(0))
