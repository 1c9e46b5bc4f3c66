import pytest
import torch

from iteralite.model import IteraLite, IteraLiteConfig


@pytest.fixture
def tiny_cfg():
    return IteraLiteConfig(vocab_size=300, d_model=32, n_layers=2, max_seq=32, d_inner=48, d_state=4, d_conv=4,
                           n_experts=4, expert_hidden=16, top_k=2)


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    model = IteraLite(tiny_cfg).eval()
    # Move weights away from init so no channel is trivially zero or equal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
