import copy

import torch

from iteralite import bench


def test_timed_steps_start_from_a_prefilled_cache_they_never_change(tiny_model):
    """Every repeat of the latency benchmark times the same steps: the prefill runs once, and the cache it leaves
    must be the state after the prompt's first tokens, untouched by the timed steps."""
    model = tiny_model.eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    context = 12
    cache = bench._prefill(model, prompt, context)
    before = copy.deepcopy(cache)
    for _ in range(2):
        assert bench._time_step(model, prompt, context, cache) > 0
    for saved, now in zip(before, cache):
        assert (saved is None and now is None) or all(torch.equal(a, b) for a, b in zip(saved, now))
    first = context - bench.TIMED_STEPS
    with torch.no_grad():
        logits, _ = model.step(prompt[:, first], first, cache)
        full = model(prompt[:, : first + 1])[0][:, first]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)
