"""The Itera-Lite architecture's scan (iteralite/architectures/itera_lite/model.py, shared_state_scan) at several
chunk lengths: forward and backward of one layer, batch 32 x 128, 256 channels, state 8, best of 5, and the part
outside the recurrence (x B, the C readout, the D skip). Usage: python tools/itera_lite_scan_chunks.py [threads]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from iteralite.architectures.itera_lite.model import shared_state_scan


def best_ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    b, length, di, n = 32, 128, 256, 8
    x = torch.randn(b, length, di, requires_grad=True)
    delta = F.softplus(torch.randn(b, length)).requires_grad_()
    A = -torch.rand(n) - 0.1
    B, C, D = (torch.randn(*shape, requires_grad=True) for shape in ((n, di), (di, n), (di,)))
    for chunk in (4, 8, 16, 32, 64, 128):
        ms = best_ms(lambda c=chunk: shared_state_scan(x, delta, A, B, C, D, chunk=c)[0].sum().backward())
        print(f"chunk {chunk:>3}: {ms:6.1f} ms forward + backward")
    outside = best_ms(lambda: ((delta[..., None] * (x @ B.t())) @ C.t() + D * x).sum().backward())
    print(f"outside the recurrence: {outside:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
