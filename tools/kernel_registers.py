"""Registers, spills and shared memory of each Triton scan kernel, compiled for this machine's GPU (tools/gpu_check.sh).

A program is one warp (scan_triton.NUM_WARPS) and every (BLOCK_D, N_PAD) float32 tile it keeps live costs
BLOCK_D * N_PAD / 32 registers per thread: 16 at d_state 16. The backward keeps about seven (B, C, the carry, the
three parameter-gradient sums, a loaded state), 112 registers before its temporaries, of the 255 a thread may hold;
what does not fit spills to local memory. The counts come from the compiled kernel (Triton's n_regs, n_spills), so they
need a GPU; without one this prints a line saying so.

Usage: python tools/kernel_registers.py
"""

from __future__ import annotations

import torch

# d_state -> (length, d_inner): the default model's, and sizes M and L's of iteralite.trainbench. Triton compiles
# the integer arguments in only as their divisibility by 16.
SIZES = {8: (128, 256), 16: (512, 1024)}


def compiled_kernels(d_state: int):
    """(name, compiled kernel) of the forward and the backward at this d_state, compiled without a launch."""
    import triton

    from iteralite.architectures.selective_scan.scan_triton import BLOCK_D, NUM_WARPS, _scan_backward, _scan_forward

    length, d_inner = SIZES[d_state]
    pointer = torch.zeros(1, device="cuda")  # only its dtype and alignment reach the compiler
    constants = {"N": d_state, "N_PAD": triton.next_power_of_2(d_state), "BLOCK": BLOCK_D, "num_warps": NUM_WARPS,
                 "grid": (1,)}
    for name, kernel in (("forward", _scan_forward), ("backward", _scan_backward)):
        pointers = [pointer] * sum(arg.endswith("_ptr") for arg in kernel.arg_names)
        yield name, kernel.warmup(*pointers, length, d_inner, **constants)


def main() -> None:
    if not torch.cuda.is_available():
        print("kernel registers: no CUDA device; the counts come from a kernel compiled for a GPU")
        return
    for d_state in SIZES:
        for name, kernel in compiled_kernels(d_state):
            kernel._init_handles()  # loading the binary is what reads its register count
            print(f"scan {name:<8} d_state {d_state:>2}: {kernel.n_regs:>3} registers per thread, "
                  f"{kernel.n_spills:>4} spilled, {kernel.metadata.shared:>6} bytes of shared memory")


if __name__ == "__main__":
    main()
