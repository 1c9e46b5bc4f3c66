"""One training loop for the baseline, the fine-tunes and the dense control.

AdamW, linear warmup then cosine decay, gradient clipping, the MoE load-balancing loss, optional distillation from a
teacher, early stopping on validation perplexity, bf16 autocast on CUDA. Budget in steps, tokens or epochs, with an
optional wall-clock cap. Resumable: the full state (model, optimizer, data position, curve) is saved every
`checkpoint_every` steps and when SIGTERM or SIGUSR1 arrives (Slurm time limit, preemption); the loop then stops
with `Interrupted`, and the next call with the same resume path continues at that step.

On CUDA the whole step is captured once as a CUDA graph (GraphedStep) and the losses stay on the device until a log
line, an evaluation or a save reads them back: the GPU never waits for the host between steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from .artifacts import load_torch, save_torch
from .losses import head_cross_entropy_sum, lm_losses
from .tokens import TokenWindows, eval_windows

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Training stopped on a signal after saving its state; rerun to continue."""


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: float = 50  # steps if >= 1, else a fraction of the total steps
    min_lr_ratio: float = 0.1
    max_steps: int | None = None
    max_tokens: int | None = None
    max_epochs: float | None = None
    max_minutes: float | None = None  # wall-clock cap; makes the result depend on machine speed
    grad_clip: float = 1.0
    aux_loss_weight: float = 0.01
    eval_every: int = 100
    eval_tokens: int = 50_000
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 100
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    seed: int = 1234
    log_every: int = 10

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def total_steps(self, steps_per_epoch: int, seq: int) -> int:
        budgets = []
        if self.max_steps:
            budgets.append(self.max_steps)
        if self.max_tokens:
            budgets.append(math.ceil(self.max_tokens / (self.batch_size * seq)))
        if self.max_epochs:
            budgets.append(math.ceil(self.max_epochs * steps_per_epoch))
        if not budgets:
            raise ValueError("training needs a budget: set max_steps, max_tokens or max_epochs")
        return min(budgets)


def pick_device(requested: str = "auto", holds_gpu: bool = False) -> torch.device:
    """The config's `device`: auto (CUDA when visible), cpu or cuda. A job that needs a GPU and sees none fails
    here, at its start, in one line that says where to look: `cuda` with no visible device, and `auto` in a job
    that holds a GPU (its resources ask for one, as the Slurm profile's training rules do), which would otherwise run
    on the CPU while its GPU idles."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "auto" and not holds_gpu:
        return torch.device("cpu")
    why = "device: cuda" if requested == "cuda" else "device: auto in a job that holds a GPU"
    build = ("this torch build has CUDA: check the driver with nvidia-smi" if torch.backends.cuda.is_built()
             else f"torch {torch.__version__} is a CPU build: make setup TORCH=cuda, docs/slurm.md")
    raise RuntimeError(
        f"{why}, but no CUDA device is visible on host {socket.gethostname()} "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, {build}); on Slurm, check that "
        "the job's gres request was granted, or set device: cpu"
    )


def lr_factor(step: int, total: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to min_ratio at `total`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast(device: torch.device):
    """bf16 on CUDA. Without autocast's cache of cast weights: a CUDA graph must not capture a cast it would skip
    on replay (the graph re-runs every cast anyway)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


@torch.no_grad()
def perplexity(model: nn.Module, tokens: torch.Tensor, max_tokens: int, batch_size: int = 32) -> float:
    """exp(mean next-token cross-entropy) over fixed windows of the first max_tokens tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    windows = eval_windows(tokens, model.cfg.max_seq, max_tokens)
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        with autocast(device):
            hidden, _ = model.hidden_states(chunk[:, :-1])
        total += head_cross_entropy_sum(model.head, hidden.flatten(0, 1), chunk[:, 1:].flatten())
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch on `device`; to CUDA through pinned memory, so that the copy is queued and the host does not wait
    for it (a copy from pageable memory does)."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


def batch_losses(model: nn.Module, batch: torch.Tensor, cfg: TrainConfig, teacher: nn.Module | None = None):
    """(the loss to minimise, the next-token cross-entropy, the balance loss) of one batch of windows (b, l + 1).

    The LM head runs in chunks (losses.py); with a teacher and cfg.distill_weight > 0 the loss mixes in
    distillation: (1 - w) * (CE + aux * balance) + w * KD."""
    hidden, balance = model.hidden_states(batch[:, :-1])
    teacher_hidden = teacher_weight = None
    kd_weight = cfg.distill_weight if teacher is not None else 0.0
    if kd_weight > 0:
        with torch.no_grad():
            teacher_hidden = teacher.hidden_states(batch[:, :-1])[0].flatten(0, 1)
        # a student whose table lost the rows no token reaches (group vocab) reads the teacher's first rows, the
        # reachable ones: the same tokens, and the teacher's distribution over them
        teacher_weight = teacher.token_embedding.weight[: model.cfg.vocab_size]
    head_loss, ce, _ = lm_losses(hidden.flatten(0, 1), model.token_embedding.weight, batch[:, 1:].flatten(),
                                 teacher_hidden, teacher_weight, cfg.distill_temperature, kd_weight)
    return head_loss + (1 - kd_weight) * cfg.aux_loss_weight * balance, ce, balance


def eager_step(model: nn.Module, optimizer, cfg: TrainConfig, teacher: nn.Module | None, device: torch.device):
    """One optimisation step as a function of the batch (b, l + 1) on `device`; returns the tensor (loss, cross-entropy,
    balance) on the device, so nothing waits for the GPU."""
    parameters = list(model.parameters())

    def step(batch):
        with autocast(device):
            loss, ce, balance = batch_losses(model, batch, cfg, teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
        optimizer.step()
        return torch.stack([loss.detach(), ce.detach(), balance.detach()])

    return step


class GraphedStep:
    """The whole training step (forward, backward, clipping, AdamW) captured once as a CUDA graph and replayed per
    batch: one launch instead of hundreds. Each batch is copied into a static input buffer; the learning rate is a
    device tensor that the loop fills before each replay.

    Capture needs a few eager warm-up steps (allocations, kernel compilation, the optimizer's state); they run on the
    first batch, on a side stream, and are then undone, also when one raises (`warm_up`), so the run trains exactly
    the steps it is asked for."""

    WARMUP_STEPS = 3

    def __init__(self, step, model: nn.Module, optimizer, example_batch: torch.Tensor):
        self.static_batch = example_batch.clone()
        with _side_stream():
            warm_up(step, model, optimizer, self.static_batch, self.WARMUP_STEPS)
        self.graph, self.static_losses = _capture(step, self.static_batch)

    def __call__(self, batch):
        self.static_batch.copy_(batch)
        self.graph.replay()
        return self.static_losses.clone()  # the next replay overwrites the static output


def warm_up(step, model: nn.Module, optimizer, batch: torch.Tensor, steps: int) -> None:
    """Run `step(batch)` `steps` times, then undo it, also when a step raises (out of memory, once the optimizer has
    state): weights and optimizer state restored in place (a CUDA graph records these very tensors), gradients
    dropped. The last step runs with host syncs made errors, so that a sync, which would invalidate the capture
    that follows, raises here with its traceback."""
    saved = _snapshot(model, optimizer)
    try:
        for i in range(steps):
            with _host_syncs_raise(batch.device) if i == steps - 1 else contextlib.nullcontext():
                step(batch)
    finally:
        _restore(model, optimizer, saved)
        optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _host_syncs_raise(device: torch.device):
    """On CUDA, an op inside that makes the host wait for the GPU (.item(), nonzero, a copy from pageable memory)
    raises instead; elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def _side_stream():
    """Inside, a new CUDA stream is current, after the work queued so far; on leaving, also by an exception, the
    previous stream is current again and waits for the work queued inside."""
    previous, side = torch.cuda.current_stream(), torch.cuda.Stream()
    side.wait_stream(previous)
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        previous.wait_stream(side)


def _capture(step, batch: torch.Tensor):
    """(graph, outputs) of `step(batch)` captured as a CUDA graph. A capture that fails raises the error that caused
    it and leaves the process as it found it: torch.cuda.graph, when capture_end raises, raises that follow-on error,
    leaves its side stream current and the allocator routing allocations into the graph's memory pool."""
    graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # the graph allocates from a pool of its own: free what the warm-up left cached
    with _side_stream():
        graph.capture_begin(pool=pool)
        try:
            outputs = step(batch)
        except BaseException:
            with contextlib.suppress(RuntimeError):  # capture_end's error, if any, follows from the step's
                _end_capture(graph, pool)
            raise
        _end_capture(graph, pool)
    return graph, outputs


def _end_capture(graph, pool) -> None:
    """capture_end; where it raises (a capture the step invalidated), what it skipped is done here: the allocator
    stops routing into the graph's pool, and the pool is released unless the graph will release it (once
    capture_end has marked the capture ended, where pool() answers)."""
    try:
        graph.capture_end()
    except RuntimeError:
        device = torch.cuda.current_device()
        with contextlib.suppress(RuntimeError):  # capture_end had got past the allocator
            torch._C._cuda_endAllocateToPool(device, pool)
        try:
            graph.pool()
        except RuntimeError:
            torch._C._cuda_releasePool(device, pool)
        raise


def _snapshot(model: nn.Module, optimizer) -> dict:
    return {"model": [p.detach().clone() for p in model.parameters()],
            "optimizer": {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                          for p, s in optimizer.state.items()}}


@torch.no_grad()
def _restore(model: nn.Module, optimizer, saved: dict) -> None:
    """Undo the warm-up in place: weights back, optimizer state back, or zeroed where the warm-up created it."""
    for p, value in zip(model.parameters(), saved["model"]):
        p.copy_(value)
    for p, state in optimizer.state.items():
        before = saved["optimizer"].get(p, {})
        for key, value in state.items():
            if torch.is_tensor(value):
                value.copy_(before[key]) if key in before else value.zero_()


def training_step(model: nn.Module, optimizer, cfg: TrainConfig, teacher: nn.Module | None, device: torch.device,
                  example_batch: torch.Tensor):
    """The step the loop runs: graphed on CUDA, eager on CPU or where capture fails (with a log line saying why)."""
    step = eager_step(model, optimizer, cfg, teacher, device)
    if device.type != "cuda":
        return step
    # The one convolution (depthwise, k = 4): where torch gives it to cuDNN, a backward without atomics, so that a
    # run repeats bit for bit (docs/reruns.md)
    torch.backends.cudnn.deterministic = True
    try:
        graphed = GraphedStep(step, model, optimizer, example_batch)
    except Exception as err:  # capture refuses many things (a host sync, a CPU tensor, an unsupported op)
        log.warning("training step not captured as a CUDA graph (%s: %s); running it eagerly", type(err).__name__,
                    err, exc_info=err)
        return step
    log.info("training step captured as a CUDA graph")
    return graphed


class _SignalFlag:
    """Remembers SIGTERM/SIGUSR1 so the loop can stop at a step boundary with its state saved."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    model: nn.Module,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    cfg: TrainConfig,
    resume_path=None,
    teacher: nn.Module | None = None,
    device: torch.device | None = None,
    fingerprint: dict | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train in place; returns (the best model by validation perplexity, the curve as rows).

    A resume state whose `fingerprint` (what determines the run: settings, input files, code) differs from this
    run's is discarded, with a log line naming the parts that differ."""
    device = device or pick_device()
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    torch.manual_seed(cfg.seed)
    windows = TokenWindows(train_tokens, model.cfg.max_seq, cfg.batch_size, cfg.seed)
    total = cfg.total_steps(windows.steps_per_epoch, model.cfg.max_seq)
    warmup_steps = int(cfg.warmup) if cfg.warmup >= 1 else max(1, round(cfg.warmup * total))
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)  # matrices decay; norms, biases, A_log, D do not
    graphed = device.type == "cuda"
    # On CUDA the learning rate is a device tensor (filled before each step) and AdamW keeps its state on the device
    # (capturable), so that the step can be a CUDA graph.
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=torch.tensor(cfg.lr, device=device) if graphed else cfg.lr, betas=(0.9, 0.95), foreach=graphed,
        capturable=graphed,
    )

    def set_lr(step: int) -> float:
        lr = cfg.lr * lr_factor(step, total, warmup_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            if graphed:
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        return lr

    state = {"step": 0, "curve": [], "best_ppl": math.inf, "best_state": None, "stale_evals": 0, "elapsed": 0.0}
    saved = load_torch(resume_path, "training state") if resume_path and os.path.exists(resume_path) else None
    if saved is not None and saved.get("fingerprint") != fingerprint:
        made_by, this_run = saved.get("fingerprint") or {}, fingerprint or {}
        changed = sorted(k for k in set(made_by) | set(this_run) if made_by.get(k) != this_run.get(k))
        log.warning("discarding resume state %s: it was made by a different run (%s differ); starting afresh",
                    resume_path, ", ".join(changed) or "fingerprint")
        os.remove(resume_path)
        saved = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for group in optimizer.param_groups:  # a state saved on another device brings that device's settings
            group.update(lr=torch.tensor(cfg.lr, device=device) if graphed else cfg.lr, foreach=graphed,
                         capturable=graphed)
        if graphed:  # a capturable AdamW keeps its step counts on the device
            for param_state in optimizer.state.values():
                param_state["step"] = param_state["step"].to(device, torch.float32)
        windows.generator.set_state(saved["data_rng"])
        state = saved["loop"]
        log.info("resumed from %s at step %d", resume_path, state["step"])

    tokens_per_step = cfg.batch_size * model.cfg.max_seq
    started = time.perf_counter() - state["elapsed"]
    pending = []  # (curve row, losses on the device) of steps not yet read back: one host sync per flush
    window_start = time.perf_counter()

    def flush():
        """Read the pending steps' losses (one sync) and complete their curve rows; the rate is the window's."""
        nonlocal window_start
        if not pending:
            return
        values = torch.stack([losses for _, losses in pending]).tolist()
        now = time.perf_counter()
        state["elapsed"] = now - started
        for (row, _), (loss, ce, balance) in zip(pending, values):
            row.update(train_loss=ce, loss=loss, balance_loss=balance,
                       tokens_per_s=tokens_per_step * len(pending) / (now - window_start))
        state["curve"].extend(row for row, _ in pending)
        pending.clear()
        window_start = now

    def save_state():
        flush()  # the saved curve holds every step taken
        if resume_path:
            save_torch(
                resume_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data_rng": windows.generator.get_state(),
                    "loop": state,
                    "fingerprint": fingerprint,
                },
            )

    def evaluate(step: int) -> bool:
        """Record validation perplexity; True when early stopping says stop."""
        ppl = perplexity(model, val_tokens, cfg.eval_tokens, cfg.batch_size)
        state["curve"][-1]["val_ppl"] = ppl
        log.info("step %d: validation perplexity %.2f", step, ppl)
        if ppl < state["best_ppl"]:
            state["best_ppl"], state["stale_evals"] = ppl, 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["stale_evals"] += 1
        patience = cfg.early_stopping_patience
        return patience is not None and state["stale_evals"] >= patience

    example = torch.zeros(cfg.batch_size, model.cfg.max_seq + 1, dtype=torch.long, device=device)
    step_fn = training_step(model, optimizer, cfg, teacher, device, example)
    with _SignalFlag() as stop_signal:
        while state["step"] < total:
            batch = to_device(windows.next(), device)
            lr = set_lr(state["step"])
            losses = step_fn(batch)
            state["step"] += 1
            step = state["step"]
            pending.append(({"step": step, "tokens": step * tokens_per_step, "lr": lr, "val_ppl": float("nan"),
                             "elapsed_s": time.perf_counter() - started}, losses))
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - started > cfg.max_minutes * 60
            last = step == total or out_of_time
            evaluating = step % cfg.eval_every == 0 or last
            if step % cfg.log_every == 0 or step == 1 or evaluating:
                flush()
            if step % cfg.log_every == 0 or step == 1:
                row = state["curve"][-1]
                rate = step * tokens_per_step / state["elapsed"]
                eta = (total - step) * state["elapsed"] / step
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %.0fs", step, total, row["train_loss"], lr,
                         rate, eta)
            if evaluating and evaluate(step):
                log.info("early stopping at step %d: no improvement in %d evaluations", step, state["stale_evals"])
                break
            if out_of_time:
                log.info("wall-clock cap of %s minutes reached at step %d", cfg.max_minutes, step)
                break
            if stop_signal.received:
                save_state()
                raise Interrupted(
                    f"{stop_signal.received} at step {step}: state saved to {resume_path}; rerun to resume"
                )
            if step % cfg.checkpoint_every == 0:
                save_state()
    flush()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return model, state["curve"]
