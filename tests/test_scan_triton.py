"""The Triton scan against the reference scan: outputs and every gradient in float32, determinism, the fallback.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton compiles anything) on
CPU tensors, at tiny sizes; on a CUDA machine the same tests run the compiled kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_scan import scan_inputs  # noqa: E402

from iteralite.architectures.selective_scan import scan, scan_triton  # noqa: E402
from iteralite.architectures.selective_scan.scan_triton import BLOCK_D, TritonScan  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs_on_device(**sizes):
    return tuple(t.detach().to(DEVICE).requires_grad_() for t in scan_inputs(torch.float32, **sizes))


@pytest.mark.parametrize("sizes", [
    {"b": 2, "length": 9, "di": BLOCK_D + 8, "n": 4},  # a partial channel block
    {"b": 1, "length": 5, "di": 12, "n": 6},  # d_state not a power of two: padded state lanes
])
def test_triton_scan_equals_reference_forward_and_every_gradient(sizes):
    inputs = inputs_on_device(**sizes)
    kernel, reference = TritonScan.apply(*inputs), scan.reference_scan(*inputs)
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(kernel)
    names = ("x", "delta", "A", "B", "C", "D")
    for name, g_kernel, g_reference in zip(names, torch.autograd.grad((kernel * weights).sum(), inputs),
                                           torch.autograd.grad((reference * weights).sum(), inputs)):
        assert g_kernel.shape == g_reference.shape, name
        torch.testing.assert_close(g_kernel, g_reference, rtol=1e-4, atol=1e-4, msg=name)


def test_triton_scan_is_deterministic():
    """No atomics: two runs give the same bits, gradients included."""
    runs = []
    for _ in range(2):
        inputs = inputs_on_device(b=3, length=6, di=BLOCK_D + 4, n=4, seed=2)
        y = TritonScan.apply(*inputs)
        runs.append((y, *torch.autograd.grad(y.square().sum(), inputs)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def failures_logged(caplog):
    return [r.getMessage() for r in caplog.records if "Triton scan failed" in r.getMessage()]


def test_triton_scan_under_bf16_inputs_returns_float32(monkeypatch, caplog):
    """Under autocast x and delta arrive in bf16; the kernel runs and returns float32, as the reference does."""
    monkeypatch.setattr(scan, "_KERNEL_WORKS", {})
    x, delta, A, B, C, D = inputs_on_device(b=1, length=4, di=8, n=4)
    with caplog.at_level("WARNING", logger="iteralite.architectures.selective_scan.scan"):
        y = scan.gpu_scan(x.bfloat16(), delta.bfloat16(), A, B, C, D)
    assert failures_logged(caplog) == [] and list(scan._KERNEL_WORKS.values()) == [True]  # the kernel ran
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, scan.reference_scan(x.bfloat16(), delta.bfloat16(), A, B, C, D), rtol=1e-5,
                               atol=1e-5)


def test_triton_launch_failure_falls_back_to_the_reference_and_names_the_shape(monkeypatch, caplog):
    class Broken:
        @staticmethod
        def apply(*_):
            raise RuntimeError("out of resources")

    monkeypatch.setattr(scan, "triton_scan", lambda: Broken)
    monkeypatch.setattr(scan, "_KERNEL_WORKS", {})
    inputs = inputs_on_device(b=2, length=3, di=5, n=4)
    with caplog.at_level("WARNING", logger="iteralite.architectures.selective_scan.scan"):
        y = scan.gpu_scan(*inputs)
        scan.gpu_scan(*inputs)  # the same shape again: no second attempt, no second line
    assert torch.equal(y, scan.reference_scan(*inputs))
    failures = failures_logged(caplog)
    assert len(failures) == 1 and "(2, 3, 5) with d_state 4" in failures[0] and "out of resources" in failures[0]


def test_a_backward_kernel_that_fails_sends_its_shape_to_the_reference_before_the_run_relies_on_it(monkeypatch,
                                                                                                     caplog):
    """The backward kernel runs from loss.backward(), after the forward has returned: the shape's first call tries
    both, so a backward that fails to compile takes the reference from the start, and the run's backward works."""
    class FailsToCompile:
        def __getitem__(self, grid):
            raise RuntimeError("backward: out of resources")

    monkeypatch.setattr(scan_triton, "_scan_backward", FailsToCompile())
    monkeypatch.setattr(scan, "_KERNEL_WORKS", {})
    inputs = inputs_on_device(b=2, length=3, di=5, n=4)
    with caplog.at_level("WARNING", logger="iteralite.architectures.selective_scan.scan"):
        y = scan.gpu_scan(*inputs)
        grads = torch.autograd.grad(y.sum(), inputs)
    reference = scan.reference_scan(*inputs)
    assert torch.equal(y, reference)
    assert all(torch.equal(g, r) for g, r in zip(grads, torch.autograd.grad(reference.sum(), inputs)))
    failures = failures_logged(caplog)
    assert len(failures) == 1 and "backward: out of resources" in failures[0]


def test_the_kernel_is_tried_once_per_shape(monkeypatch):
    monkeypatch.setattr(scan, "_KERNEL_WORKS", {})
    tried, try_kernel = [], scan._try_kernel
    monkeypatch.setattr(scan, "_try_kernel", lambda *args: tried.append(args[2]) or try_kernel(*args))
    for sizes in ({"b": 1, "length": 3, "di": 4, "n": 2}, {"b": 1, "length": 3, "di": 4, "n": 2},
                  {"b": 2, "length": 3, "di": 4, "n": 2}):
        scan.gpu_scan(*inputs_on_device(**sizes))
    assert tried == [(1, 3, 4), (2, 3, 4)]


def test_without_triton_the_gpu_scan_is_the_reference_with_one_log_line(monkeypatch, caplog):
    import sys

    scan.triton_scan.cache_clear()
    # the import fails as if Triton were missing
    monkeypatch.setitem(sys.modules, "iteralite.architectures.selective_scan.scan_triton", None)
    try:
        with caplog.at_level("WARNING", logger="iteralite.architectures.selective_scan.scan"):
            inputs = inputs_on_device(b=1, length=3, di=4, n=2)
            y = scan.gpu_scan(*inputs)
            scan.gpu_scan(*inputs)
    finally:
        scan.triton_scan.cache_clear()
    assert torch.equal(y, scan.reference_scan(*inputs))
    assert sum("Triton is not available" in r.getMessage() for r in caplog.records) == 1
