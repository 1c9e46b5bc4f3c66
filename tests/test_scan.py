"""The fused CPU scan against the reference scan: outputs, gradients (gradcheck in double), the whole model."""

import numpy as np
import pytest
import torch

from iteralite.architectures.selective_scan import scan

pytestmark = pytest.mark.skipif(scan.numba is None, reason="numba is not installed")


def scan_inputs(dtype, b=2, length=9, di=20, n=4, seed=0):
    """di=20 leaves a partial channel block; delta and A in the ranges softplus and -exp(A_log) give."""
    gen = torch.Generator().manual_seed(seed)
    tensors = (torch.randn(b, length, di, generator=gen), torch.rand(b, length, di, generator=gen) * 0.5,
               -torch.rand(n, generator=gen) - 0.5, torch.randn(n, di, generator=gen),
               torch.randn(di, n, generator=gen), torch.randn(di, generator=gen))
    return tuple(t.to(dtype).requires_grad_() for t in tensors)


def test_reference_recurrence_gradient_is_exact():
    a = torch.rand(7, 2, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(7, 2, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(scan.LinearRecurrence.apply, (a, b))


def test_fused_scan_gradients_pass_gradcheck_in_double():
    assert torch.autograd.gradcheck(scan.FusedScan.apply, scan_inputs(torch.double))


def test_fused_scan_equals_reference_in_double():
    inputs = scan_inputs(torch.double, seed=1)
    fused, reference = scan.FusedScan.apply(*inputs), scan.reference_scan(*inputs)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(fused)
    for g_fused, g_reference in zip(torch.autograd.grad((fused * weights).sum(), inputs),
                                    torch.autograd.grad((reference * weights).sum(), inputs)):
        torch.testing.assert_close(g_fused, g_reference, rtol=1e-10, atol=1e-10)


def test_model_gradients_are_the_same_with_either_scan(tiny_model, monkeypatch):
    idx = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(4))

    def loss_and_grads():
        tiny_model.zero_grad()
        logits, balance = tiny_model(idx)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()) + 0.01 * balance
        loss.backward()
        return loss.item(), [p.grad.clone() for p in tiny_model.parameters()]

    fused_loss, fused_grads = loss_and_grads()
    monkeypatch.setattr(scan, "IMPLEMENTATION", "reference")
    reference_loss, reference_grads = loss_and_grads()
    assert fused_loss == pytest.approx(reference_loss, rel=1e-5)
    for a, b in zip(fused_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.fixture
def thread_counts():
    """torch's and numba's thread counts as they were before the test, restored after it."""
    before = torch.get_num_threads(), scan.numba.get_num_threads()
    yield
    torch.set_num_threads(before[0])
    scan.numba.set_num_threads(before[1])


def test_fused_scan_does_not_depend_on_the_thread_count(thread_counts):
    """One torch thread runs the serial kernels, two the parallel ones on two numba threads: the same bits, forward
    and backward. Where numba has a single thread both runs would take the serial kernels and compare nothing."""
    if scan.numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=2 runs the parallel kernels on one core too)")
    inputs = scan_inputs(torch.float32, b=4, di=40, seed=2)
    results = []
    for threads, parallel in ((1, False), (2, True)):
        torch.set_num_threads(threads)
        assert scan._kernels() is scan.KERNELS[parallel]
        y = scan.FusedScan.apply(*inputs)
        results.append((y, *torch.autograd.grad(y.sum(), inputs)))
        assert not parallel or scan.numba.get_num_threads() == 2
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_the_kernels_float32_exp_is_within_one_ulp_of_exp():
    @scan.numba.njit
    def exp_all(values, out):
        for i in range(values.shape[0]):
            out[i] = scan.exp_fast(values[i])

    values = np.linspace(-87.33, 88.0, 1_000_003, dtype=np.float32)
    out = np.empty_like(values)
    exp_all(values, out)
    exact = np.exp(values.astype(np.float64))
    assert np.max(np.abs(out - exact) / exact) < 1.2e-7  # float32's machine epsilon
    below = np.array([-88.0, -1000.0, -np.inf], dtype=np.float32)
    exp_all(below, out[:3])
    assert np.all((out[:3] == out[0]) & (out[0] > 0) & (out[0] < 1.2e-38))  # exp(-87.33): never a subnormal or NaN
