import contextlib
import math
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from iteralite import layers
from iteralite.architectures.selective_scan.model import Model as SelectiveScan
from iteralite.artifacts import save_torch
from iteralite.checkpoint import load_checkpoint, save_checkpoint
from iteralite.train import (
    TrainConfig,
    _capture,
    batch_losses,
    eager_step,
    lr_factor,
    perplexity,
    to_device,
    train,
    warm_up,
)


def corpus_tokens(n=6000, vocab=300, seed=0):
    """A learnable stream: a noisy repeating pattern."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 37 * 7 % vocab
    noise = torch.randint(0, vocab, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < 0.1, noise, base).to(torch.int32)


def test_lr_schedule_warms_up_then_decays():
    factors = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1, abs=0.01) and all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_training_lowers_perplexity(tiny_model):
    tokens = corpus_tokens()
    before = perplexity(tiny_model, tokens, 2000)
    cfg = TrainConfig(batch_size=8, lr=3e-3, warmup=5, max_steps=40, eval_every=20, eval_tokens=2000)
    model, curve = train(tiny_model, tokens, tokens, cfg, device=torch.device("cpu"))
    after = perplexity(model, tokens, 2000)
    assert after < before * 0.5, (before, after)
    assert len(curve) == 40 and not math.isnan(curve[-1]["val_ppl"])


def test_early_stopping_stops(tiny_model):
    tokens = corpus_tokens()
    cfg = TrainConfig(batch_size=4, lr=0.5, warmup=1, max_steps=200, eval_every=2, eval_tokens=500,
                      early_stopping_patience=2)  # a learning rate this high makes validation worse
    _, curve = train(tiny_model, tokens, tokens, cfg, device=torch.device("cpu"))
    assert len(curve) < 200


def test_distillation_changes_the_loss(tiny_model):
    tokens = corpus_tokens()
    base_cfg = dict(batch_size=4, lr=1e-3, warmup=1, max_steps=3, eval_every=3, eval_tokens=500)
    teacher = load_copy(tiny_model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    _, plain = train(load_copy(tiny_model), tokens, tokens, TrainConfig(**base_cfg), device=torch.device("cpu"))
    _, distilled = train(load_copy(tiny_model), tokens, tokens, TrainConfig(**base_cfg, distill_weight=0.5),
                         teacher=teacher, device=torch.device("cpu"))
    assert plain[0]["train_loss"] == pytest.approx(distilled[0]["train_loss"])  # same batch, same model
    assert plain[0]["loss"] != pytest.approx(distilled[0]["loss"])


def test_the_same_seed_gives_the_same_fine_tune_and_another_seed_another(tiny_model):
    """Seeds are repeats: a fine-tune's data order comes from its seed, and nothing else varies."""
    tokens = corpus_tokens()

    def fine_tune(seed):
        cfg = TrainConfig(batch_size=4, lr=1e-3, warmup=1, max_steps=4, eval_every=4, eval_tokens=500, seed=seed)
        model, _ = train(load_copy(tiny_model), tokens, tokens, cfg, device=torch.device("cpu"))
        return model.state_dict()

    first, again, other = fine_tune(1), fine_tune(1), fine_tune(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


class OffDevice(TorchDispatchMode):
    """Records every op that reads or makes a tensor off `device`."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.ops = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type != self.device for t in tree_leaves((args, kwargs, out))):
            self.ops.append(str(func))
        return out


def test_the_training_step_makes_every_tensor_on_its_device_and_reads_none_back(tiny_cfg, monkeypatch):
    """The step's forward, backward and clipping with the GPU's MoE dispatch, on the meta device: a tensor made on
    the host (which CUDA would copy with a blocking copy, illegal in a capture) is recorded, and reading a value
    back (.item(), nonzero, a branch on a tensor) raises, as a meta tensor has no values."""
    monkeypatch.setattr(layers, "DENSE_DISPATCH_DEVICES", {"cuda", "meta"})
    real_autocast = torch.autocast  # no meta backend; autocast changes dtypes, not devices
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kwargs: contextlib.nullcontext()
                        if device_type == "meta" else real_autocast(device_type, **kwargs))
    model, teacher = SelectiveScan(tiny_cfg).to("meta"), SelectiveScan(tiny_cfg).to("meta")
    batch = torch.zeros(4, tiny_cfg.max_seq + 1, dtype=torch.long, device="meta")
    with OffDevice("meta") as off_device:
        loss, _, _ = batch_losses(model, batch, TrainConfig(distill_weight=0.5), teacher)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    assert off_device.ops == []
    assert all(p.grad is not None for p in model.parameters())


def test_a_batch_goes_to_cuda_from_pinned_memory_without_a_wait():
    class Recorded:
        def __init__(self):
            self.calls = []

        def pin_memory(self):
            self.calls.append("pin_memory")
            return self

        def to(self, device, non_blocking=False):
            self.calls.append(("to", device.type, non_blocking))
            return self

    batch = Recorded()
    assert to_device(batch, torch.device("cuda")) is batch
    assert batch.calls == ["pin_memory", ("to", "cuda", True)]
    on_cpu = torch.zeros(2, 9, dtype=torch.long)
    assert to_device(on_cpu, torch.device("cpu")) is on_cpu


def optimizer_with_state(model):
    """The CPU loop's AdamW after one step: the state of a resumed run, step counts included."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    eager_step(model, optimizer, TrainConfig(), None, torch.device("cpu"))(torch.randint(0, 300, (2, 9)))
    return optimizer


def test_a_warm_up_step_that_raises_leaves_weights_and_optimizer_state_as_they_were(tiny_model):
    """The graphed step's warm-up is undone also when its second step raises (out of memory, say), after both steps
    moved the weights and the step counts: the eager run that follows starts where the run was."""
    optimizer = optimizer_with_state(tiny_model)
    weights = [p.detach().clone() for p in tiny_model.parameters()]
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    step, calls = eager_step(tiny_model, optimizer, TrainConfig(), None, torch.device("cpu")), []

    def fails_on_call_2(batch):
        calls.append(step(batch))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        warm_up(fails_on_call_2, tiny_model, optimizer, torch.randint(0, 300, (2, 9)), steps=3)
    assert len(calls) == 2
    assert all(torch.equal(p, before) for p, before in zip(tiny_model.parameters(), weights))
    assert all(torch.equal(v, state[p][k]) for p, s in optimizer.state.items() for k, v in s.items())
    assert all(p.grad is None for p in tiny_model.parameters())


def test_the_last_warm_up_step_runs_with_host_syncs_made_errors(tiny_model, monkeypatch):
    import iteralite.train as train_module

    open_blocks = []  # the devices of the _host_syncs_raise blocks entered and not yet left

    @contextlib.contextmanager
    def recorded(device):
        open_blocks.append(device)
        yield
        open_blocks.pop()

    monkeypatch.setattr(train_module, "_host_syncs_raise", recorded)
    modes = []
    warm_up(lambda batch: modes.append(bool(open_blocks)), tiny_model, torch.optim.AdamW(tiny_model.parameters()),
            torch.zeros(2, 9, dtype=torch.long), steps=3)
    assert modes == [False, False, True]


def load_copy(model):
    import copy

    return copy.deepcopy(model)


RUNNER = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
torch.set_num_threads(1)
from iteralite.stages import training
from iteralite.train import TrainConfig
settings = TrainConfig(batch_size=4, lr=float(sys.argv[5]), warmup=0.05, max_steps=60, eval_every=20, eval_tokens=500,
                       checkpoint_every=1000, log_every=1, seed=3)
training.train_model(settings, torch.device("cpu"), sys.argv[1], sys.argv[2], sys.argv[3], init_checkpoint=sys.argv[4])
"""


def finetune_command(out, tokens_path, init_path, lr="1e-3"):
    return [sys.executable, "-u", "-c", RUNNER, str(tokens_path), str(out / "model.pt"), str(out / "curve.csv"),
            str(init_path), lr]


def run_finetune(tmp_path, name, tokens_path, init_path, kill_after_step=None):
    out = tmp_path / name
    out.mkdir()
    cmd = finetune_command(out, tokens_path, init_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    if kill_after_step is not None:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"step {kill_after_step}/"):
                proc.send_signal(signal.SIGTERM)
                break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest, out


def test_sigterm_then_rerun_equals_uninterrupted_run(tiny_model, tmp_path):
    tokens_path, init_path = tmp_path / "tokens.pt", tmp_path / "init.pt"
    save_torch(tokens_path, {"tokens": {"train": corpus_tokens(), "validation": corpus_tokens(seed=1)},
                             "tokenizer_sha256": "sha"})
    save_checkpoint(init_path, tiny_model, "sha")

    code, log, straight = run_finetune(tmp_path, "straight", tokens_path, init_path)
    assert code == 0, log
    code, log, _ = run_finetune(tmp_path, "interrupted", tokens_path, init_path, kill_after_step=25)
    assert code == 75, log  # non-zero: Snakemake retries
    interrupted = tmp_path / "interrupted"
    assert "SIGTERM at step" in log and (interrupted / "train_state.pt").exists()
    assert not (interrupted / "model.pt").exists()
    # the retry: same command, same output folder
    cmd_out = subprocess.run(finetune_command(interrupted, tokens_path, init_path), capture_output=True, text=True,
                             timeout=300)
    assert cmd_out.returncode == 0, cmd_out.stdout + cmd_out.stderr
    assert "resumed from" in cmd_out.stdout
    assert not (interrupted / "train_state.pt").exists()

    a, _ = load_checkpoint(straight / "model.pt")
    b, _ = load_checkpoint(interrupted / "model.pt")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    import pandas as pd

    ca, cb = pd.read_csv(straight / "curve.csv"), pd.read_csv(interrupted / "curve.csv")
    cols = ["step", "train_loss", "val_ppl", "lr"]
    pd.testing.assert_frame_equal(ca[cols], cb[cols])


def test_resume_state_of_another_run_is_discarded(tiny_model, tmp_path):
    """A state saved under one learning rate is not resumed by a run with another: it is discarded, with the reason."""
    tokens_path, init_path = tmp_path / "tokens.pt", tmp_path / "init.pt"
    save_torch(tokens_path, {"tokens": {"train": corpus_tokens(), "validation": corpus_tokens(seed=1)},
                             "tokenizer_sha256": "sha"})
    save_checkpoint(init_path, tiny_model, "sha")
    code, log, interrupted = run_finetune(tmp_path, "interrupted", tokens_path, init_path, kill_after_step=25)
    assert code == 75 and (interrupted / "train_state.pt").exists(), log
    rerun = subprocess.run(finetune_command(interrupted, tokens_path, init_path, lr="2e-3"), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "discarding resume state" in rerun.stdout and "(settings differ)" in rerun.stdout, rerun.stdout
    assert "resumed from" not in rerun.stdout
    straight = tmp_path / "straight"
    straight.mkdir()
    fresh = subprocess.run(finetune_command(straight, tokens_path, init_path, lr="2e-3"), capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    a, b = load_checkpoint(straight / "model.pt")[0], load_checkpoint(interrupted / "model.pt")[0]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_steps_follow_the_cpu_ones(tiny_model):
    """A few steps on CUDA (Triton scan, dense MoE dispatch, graphed step, bf16 autocast) track the CPU steps."""
    tokens = corpus_tokens()
    cfg = TrainConfig(batch_size=8, lr=3e-3, warmup=2, max_steps=8, eval_every=8, eval_tokens=2000)
    _, cpu = train(load_copy(tiny_model), tokens, tokens, cfg, device=torch.device("cpu"))
    _, cuda = train(load_copy(tiny_model), tokens, tokens, cfg, device=torch.device("cuda"))
    for a, b in zip(cpu, cuda):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-2), (a, b)
    assert cuda[-1]["val_ppl"] == pytest.approx(cpu[-1]["val_ppl"], rel=5e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_run_twice_gives_the_same_bits(tiny_model):
    """On one GPU the same run repeats bit for bit: no step of it adds with atomics (docs/reruns.md)."""
    tokens = corpus_tokens()
    cfg = TrainConfig(batch_size=8, lr=3e-3, warmup=2, max_steps=8, eval_every=8, eval_tokens=2000)
    (first, first_curve), (again, again_curve) = (train(load_copy(tiny_model), tokens, tokens, cfg,
                                                        device=torch.device("cuda")) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), again.state_dict().values()))
    assert [row["train_loss"] for row in first_curve] == [row["train_loss"] for row in again_curve]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_training_steps_agree_with_eager_ones(tiny_model, monkeypatch, caplog):
    """The step captured as a CUDA graph and the same step run eagerly: the same losses and weights within bf16
    tolerance, and the graphed run says so in its log."""
    import iteralite.train as train_module

    tokens = corpus_tokens()
    cfg = TrainConfig(batch_size=8, lr=3e-3, warmup=2, max_steps=12, eval_every=12, eval_tokens=2000)
    with caplog.at_level("INFO", logger="iteralite.train"):
        graphed_model, graphed = train(load_copy(tiny_model), tokens, tokens, cfg, device=torch.device("cuda"))
    assert any("captured as a CUDA graph" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(train_module, "GraphedStep", None)  # capture fails: the eager fallback runs
    eager_model, eager = train(load_copy(tiny_model), tokens, tokens, cfg, device=torch.device("cuda"))
    for a, b in zip(graphed, eager):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2), (a, b)
    for p, q in zip(graphed_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=5e-2, atol=5e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_host_sync_in_the_cuda_warm_up_raises_before_any_capture(tiny_model):
    model = tiny_model.cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3, device="cuda"), capturable=True)
    with pytest.raises(RuntimeError, match="synchronizing"):
        warm_up(lambda batch: batch.sum().item(), model, optimizer, torch.zeros(2, 9, device="cuda"), steps=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_failed_cuda_graph_capture_raises_its_cause_and_leaves_the_process_clean():
    """A step that syncs with the host invalidates the capture: the error raised is the sync's, not capture_end's
    follow-on one; afterwards the default stream is current again and a new capture in the same process works."""
    x = torch.arange(8.0, device="cuda")
    with pytest.raises(RuntimeError) as failure:
        _capture(lambda batch: (batch * 2).sum().item(), x)
    assert "previous error during capture" not in str(failure.value), failure.value
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    graph, doubled = _capture(lambda batch: batch * 2, x)
    graph.replay()
    assert torch.equal(doubled, x * 2)
