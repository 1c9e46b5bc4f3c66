import copy

import pytest
import torch

from iteralite import bench


def test_timed_steps_start_from_a_prefilled_cache_they_never_change(tiny_model):
    """Every repeat of the latency benchmark times the same steps: the prefill runs once, and the cache it leaves
    must be the state after the prompt's first tokens, untouched by the timed steps."""
    model = tiny_model.eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    context = 12
    runner = bench.TorchRunner(model)
    cache = runner.prefill(prompt, context - bench.TIMED_STEPS)
    before = copy.deepcopy(cache)
    for _ in range(2):
        assert bench._time_steps(runner, prompt, context, cache) > 0
    for saved, now in zip(before, cache):
        assert (saved is None and now is None) or all(torch.equal(a, b) for a, b in zip(saved, now))
    first = context - bench.TIMED_STEPS
    with torch.no_grad():
        logits, _ = model.step(prompt[:, first], first, cache)
        full = model(prompt[:, : first + 1])[0][:, first]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)


def measure_on(device: torch.device, model):
    """The benchmark and the samples of one model on `device`."""
    models = {"baseline/dense": copy.deepcopy(model).to(device)}
    tokens = torch.randint(0, model.cfg.vocab_size, (2000,), generator=torch.Generator().manual_seed(0))
    speed, latency = bench.measure(bench.torch_runners(models), tokens, 2, 1, [8, 16], device)
    return speed, latency, bench.samples(models, FakeTokenizer(), ["a b c"], 4, device)


class FakeTokenizer:
    """Ids in, ids out, as text: samples need only encode(...).ids, decode and the lookups serve.decode makes (no
    <UNK>: every id decodes as it is)."""

    def token_to_id(self, token):
        return None

    def id_to_token(self, i):
        return str(i)

    def encode(self, text):
        return type("Encoding", (), {"ids": [ord(ch) % 50 for ch in text]})

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_the_benchmark_records_the_device_it_ran_on(tiny_model):
    speed, latency, samples = measure_on(torch.device("cpu"), tiny_model)
    assert speed["device"].tolist() == ["cpu"] and latency["context"].tolist() == [8, 16]
    assert samples == measure_on(torch.device("cpu"), tiny_model)[2]  # the same seed, the same continuation
    assert len(samples["baseline/dense"][0].split()) == len("a b c") + 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_benchmark_runs_on_cuda(tiny_model):
    """The timers wait for the GPU's queued kernels; the samples draw from a generator on the GPU."""
    speed, _, samples = measure_on(torch.device("cuda"), tiny_model)
    assert speed["device"].tolist() == ["cuda"] and torch.cuda.get_device_name() in speed["machine"].iloc[0]
    assert len(samples["baseline/dense"][0].split()) == len("a b c") + 4
