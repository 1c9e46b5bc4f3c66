"""Side experiment: candidates for the fused CPU selective scan, side by side in one process.

    python tools/scan_candidates.py [threads] [repeats]

Times forward + backward of one SSM layer's scan at the default size (batch 32 x 128 tokens, 256 channels, state 8)
for: the reference (torch ops, the selective-scan architecture's scan.reference_scan), its numba kernel (FusedScan),
and another loop order (channels outermost, the state innermost) as a torch C++ extension (built here
with torch.utils.cpp_extension.load_inline, g++ -O3 -march=native, OpenMP; the exp in the kernel, which GCC
vectorises through glibc's libmvec). Each candidate's output
and gradients are checked against the reference first. Needs g++ and ninja; the project itself needs neither.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.utils.cpp_extension import load_inline

from iteralite.architectures.selective_scan import scan
from iteralite.workflow import bound_native_caches

CPP = r"""
#include <torch/extension.h>
#include <cmath>
#include <vector>

constexpr int BLOCK = 16;

torch::Tensor forward(torch::Tensor x, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt, torch::Tensor C,
                      torch::Tensor D) {
  const int64_t bsz = x.size(0), len = x.size(1), di = x.size(2), n = A.size(0);
  auto y = torch::empty_like(x);
  const float *px = x.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pA = A.data_ptr<float>(),
              *pB = Bt.data_ptr<float>(), *pC = C.data_ptr<float>(), *pD = D.data_ptr<float>();
  float *py = y.data_ptr<float>();
  const int64_t blocks = (di + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < bsz * blocks; ++task) {
    const int64_t b = task / blocks, first = (task % blocks) * BLOCK, width = std::min<int64_t>(BLOCK, di - first);
    std::vector<float> h(BLOCK * n, 0.f);
    for (int64_t t = 0; t < len; ++t) {
      for (int64_t c = 0; c < width; ++c) {
        const int64_t d = first + c, i = (b * len + t) * di + d;
        const float dt = pd[i], xt = px[i];
        float acc = pD[d] * xt;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < n; ++k) {
          const float s = std::exp(dt * pA[k]) * h[c * n + k] + dt * pB[d * n + k] * xt;
          h[c * n + k] = s;
          acc += pC[d * n + k] * s;
        }
        py[i] = acc;
      }
    }
  }
  return y;
}

std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor C, torch::Tensor D, torch::Tensor gy) {
  const int64_t bsz = x.size(0), len = x.size(1), di = x.size(2), n = A.size(0);
  auto gx = torch::empty_like(x), gdl = torch::empty_like(x);
  auto gA = torch::zeros({bsz, di, n}, x.options()), gB = torch::zeros({bsz, di, n}, x.options());
  auto gC = torch::zeros({bsz, di, n}, x.options()), gD = torch::zeros({bsz, di}, x.options());
  const float *px = x.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pA = A.data_ptr<float>(),
              *pB = Bt.data_ptr<float>(), *pC = C.data_ptr<float>(), *pD = D.data_ptr<float>(),
              *pg = gy.data_ptr<float>();
  float *pgx = gx.data_ptr<float>(), *pgd = gdl.data_ptr<float>(), *pgA = gA.data_ptr<float>(),
        *pgB = gB.data_ptr<float>(), *pgC = gC.data_ptr<float>(), *pgD = gD.data_ptr<float>();
  const int64_t blocks = (di + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < bsz * blocks; ++task) {
    const int64_t b = task / blocks, first = (task % blocks) * BLOCK, width = std::min<int64_t>(BLOCK, di - first);
    std::vector<float> states((len + 1) * BLOCK * n, 0.f), decays(len * BLOCK * n);
    for (int64_t t = 0; t < len; ++t)
      for (int64_t c = 0; c < width; ++c) {
        const int64_t d = first + c, i = (b * len + t) * di + d;
        const float dt = pd[i], xt = px[i];
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          const float e = std::exp(dt * pA[k]);
          decays[(t * BLOCK + c) * n + k] = e;
          states[((t + 1) * BLOCK + c) * n + k] = e * states[(t * BLOCK + c) * n + k] + dt * pB[d * n + k] * xt;
        }
      }
    std::vector<float> carry(BLOCK * n, 0.f);
    for (int64_t t = len - 1; t >= 0; --t)
      for (int64_t c = 0; c < width; ++c) {
        const int64_t d = first + c, i = (b * len + t) * di + d, o = (b * di + d) * n;
        const float dt = pd[i], xt = px[i], g_y = pg[i];
        float g_x = g_y * pD[d], g_delta = 0.f;
        pgD[b * di + d] += g_y * xt;
#pragma omp simd reduction(+ : g_x, g_delta)
        for (int64_t k = 0; k < n; ++k) {
          const float e = decays[(t * BLOCK + c) * n + k];
          const float g = carry[c * n + k] + g_y * pC[d * n + k];
          pgC[o + k] += g_y * states[((t + 1) * BLOCK + c) * n + k];
          const float g_decay = g * states[(t * BLOCK + c) * n + k] * e;
          g_delta += g_decay * pA[k] + g * pB[d * n + k] * xt;
          g_x += g * dt * pB[d * n + k];
          pgA[o + k] += g_decay * dt;
          pgB[o + k] += g * dt * xt;
          carry[c * n + k] = g * e;
        }
        pgx[i] = g_x;
        pgd[i] = g_delta;
      }
  }
  return {gx, gdl, gA.sum({0, 1}), gB.sum(0).t(), gC.sum(0), gD.sum(0)};
}
"""


def build_extension():
    return load_inline("iteralite_scan_candidate", cpp_sources=CPP, functions=["forward", "backward"],
                       extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp"])


def cpp_scan(extension):
    class CppScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, delta, A, B, C, D):
            Bt = B.t().contiguous()
            ctx.save_for_backward(x, delta, A, Bt, C, D)
            return extension.forward(x.contiguous(), delta.contiguous(), A, Bt, C, D)

        @staticmethod
        def backward(ctx, grad_y):
            return tuple(extension.backward(*ctx.saved_tensors, grad_y.contiguous()))

    return CppScan.apply


def layer_inputs():
    gen = torch.Generator().manual_seed(0)
    b, length, di, n = 32, 128, 256, 8
    return (torch.randn(b, length, di, generator=gen), torch.rand(b, length, di, generator=gen) * 0.3,
            -torch.arange(1, n + 1.0), torch.randn(n, di, generator=gen) / 3, torch.randn(di, n, generator=gen) / 3,
            torch.ones(di))


def forward_backward(fn, inputs, grad_y):
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, grad_y)
    return y.detach(), grads


def main(argv: list[str]) -> None:
    threads = int(argv[0]) if argv else 2
    repeats = int(argv[1]) if len(argv) > 1 else 15
    bound_native_caches()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    extension = build_extension()
    print(f"C++ extension built (or loaded from the cache) in {time.perf_counter() - start:.1f} s")
    candidates = {"reference (torch ops)": scan.reference_scan, "numba fused (the project's)": scan.FusedScan.apply,
                  "C++ extension fused": cpp_scan(extension)}
    inputs = layer_inputs()
    grad_y = torch.randn_like(inputs[0])
    expected_y, expected_grads = forward_backward(scan.reference_scan, inputs, grad_y)
    for name, fn in candidates.items():
        y, grads = forward_backward(fn, inputs, grad_y)
        error = max([((y - expected_y).abs().max() / expected_y.abs().max()).item()] +
                    [((g - e).abs().max() / e.abs().max()).item() for g, e in zip(grads, expected_grads)])
        print(f"  {name:<30} largest relative difference to the reference: {error:.1e}")
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            begin = time.perf_counter()
            forward_backward(fn, inputs, grad_y)
            times[name].append(time.perf_counter() - begin)
    print(f"\nforward + backward of one layer's scan, batch 32 x 128, 256 channels, state 8, {threads} thread(s), "
          f"median of {repeats} interleaved runs:")
    reference = statistics.median(times["reference (torch ops)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<30}{1000 * median:>8.1f} ms  {reference / median:>5.1f}x the reference")


if __name__ == "__main__":
    main(sys.argv[1:])
