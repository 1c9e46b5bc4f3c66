import torch

from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig
from iteralite.architectures.selective_scan.config import parameter_count
from iteralite.architectures.selective_scan.model import Model as SelectiveScan
from iteralite.layers import count_parameters


def test_default_shapes_and_parameter_count():
    cfg = SelectiveScanConfig()
    model = SelectiveScan(cfg)
    ssm = model.layers[0]["ssm"]
    assert tuple(ssm.in_proj.weight.shape) == (512, 128)
    assert tuple(ssm.delta_proj.weight.shape) == (256, 256)
    assert tuple(ssm.B.shape) == (8, 256) and tuple(ssm.C.shape) == (256, 8) and tuple(ssm.A_log.shape) == (8,)
    assert tuple(model.layers[0]["moe"].experts[0].w1.weight.shape) == (64, 128)
    assert model.tok_emb.weight.shape == (8000, 128)
    # arithmetic count agrees with the real module; tied head adds nothing
    assert parameter_count(cfg) == count_parameters(model) == 1_988_768
    logits, _ = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, 8000)


def test_parameter_count_arithmetic_on_uneven_config():
    cfg = SelectiveScanConfig(vocab_size=500, d_model=40, n_layers=3, max_seq=16, d_inner=24,
                          layer_d_inner=[24, 16, 8], layer_expert_hidden=[[8, 4], [12], [4, 4, 4]])
    assert parameter_count(cfg) == count_parameters(SelectiveScan(cfg))


def test_parallel_and_step_modes_agree_on_128_tokens():
    torch.manual_seed(0)
    model = SelectiveScan(SelectiveScanConfig()).eval()
    idx = torch.randint(0, 8000, (2, 128))
    with torch.no_grad():
        parallel, _ = model(idx)
        cache = model.empty_cache(2)
        steps = []
        for t in range(128):
            logits, cache = model.step(idx[:, t], t, cache)
            steps.append(logits)
    assert (torch.stack(steps, 1) - parallel).abs().max().item() <= 1e-4


def test_top2_gates_sum_to_one(tiny_model):
    moe = tiny_model.layers[0]["moe"]
    gates, chosen, probs = moe.route(torch.randn(50, 32))
    assert gates.shape == (50, 2) and chosen.shape == (50, 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(50))
    assert (chosen[:, 0] != chosen[:, 1]).all()


def test_sequence_longer_than_max_seq_is_refused(tiny_model):
    import pytest

    with pytest.raises(ValueError, match="max_seq"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


def test_generate_is_deterministic_with_seed(tiny_model):
    prompt = torch.tensor([[1, 2, 3]])
    a = tiny_model.generate(prompt, 10, 0.8, torch.Generator().manual_seed(3))
    b = tiny_model.generate(prompt, 10, 0.8, torch.Generator().manual_seed(3))
    assert a.shape == (1, 13) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)


def test_dense_moe_dispatch_equals_the_gathered_one(tiny_model, monkeypatch):
    """The static-shape dispatch (every expert on every token, gates scattered into a (t, e) matrix; the GPU's)
    gives the gathered dispatch's outputs, balance loss and gradients."""
    from iteralite import layers

    idx = torch.randint(0, tiny_model.cfg.vocab_size, (3, 17), generator=torch.Generator().manual_seed(4))
    results = {}
    for devices in ({"cpu"}, {"cuda"}):  # dense on CPU, then gathered on CPU
        monkeypatch.setattr(layers, "DENSE_DISPATCH_DEVICES", devices)
        tiny_model.zero_grad()
        hidden, balance = tiny_model.hidden_states(idx)
        (hidden.square().mean() + balance).backward()
        results[frozenset(devices)] = (hidden, balance, [p.grad.clone() for p in tiny_model.parameters()])
    (h_dense, b_dense, g_dense), (h_gathered, b_gathered, g_gathered) = results.values()
    torch.testing.assert_close(h_dense, h_gathered, rtol=1e-6, atol=1e-6)
    assert torch.equal(b_dense, b_gathered)
    for a, b in zip(g_dense, g_gathered):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
