"""Which package code each rule runs (the code digest in its params), config slices, and the fingerprint that
keeps a training run from resuming another run's state."""

import copy
import logging
import os
import shutil
import signal
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import ROOT

import iteralite.train as train_module
from iteralite import provenance, study
from iteralite.artifacts import save_torch
from iteralite.checkpoint import load_checkpoint, save_checkpoint
from iteralite.stages import training
from iteralite.study import ConfigError
from iteralite.train import TrainConfig

SCRIPTS = ROOT / "scripts"


def closure(script: str) -> set[str]:
    return set(provenance.module_closure(SCRIPTS / f"{script}.py"))


def test_report_runs_only_the_report_code():
    assert closure("report") == {"iteralite", "iteralite.report", "iteralite.naming", "iteralite.rulegraph",
                                 "iteralite.artifacts", "iteralite.workflow"}


def test_closures_follow_relative_and_lazy_imports():
    prune = closure("prune")
    assert {"iteralite.stages", "iteralite.stages.pruning", "iteralite.pruning.surgery", "iteralite.analysis",
            "iteralite.checkpoint", "iteralite.architectures.itera_lite.model",
            "iteralite.architectures.itera_lite.groups"} <= prune
    assert not prune & {"iteralite.quant", "iteralite.report", "iteralite.study"}  # train: recovery between steps
    finetune = closure("finetune")
    assert {"iteralite.train", "iteralite.provenance", "iteralite.data"} <= finetune
    assert not {m for m in finetune if m.startswith("iteralite.pruning")}
    assert "iteralite.quant" in closure("evaluate") and "iteralite.pruning.surgery" not in closure("evaluate")
    assert not {m for m in closure("prepare_corpus") if m.startswith(("iteralite.architectures", "iteralite.train"))}
    # the tokenizer import reaches the Itera-Lite tokenizer reader through the registry, and no model code
    assert "iteralite.architectures.itera_lite.tokenizer" in closure("train_tokenizer")
    assert not {m for m in closure("train_tokenizer") if m.endswith((".model", ".scan", ".scan_triton", ".config"))}


def test_code_digest_changes_with_a_module_it_reaches(tmp_path, monkeypatch):
    package = tmp_path / "iteralite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n")
    (package / "b.py").write_text("X = 1\n")
    (package / "c.py").write_text("Y = 1\n")
    script = tmp_path / "script.py"
    script.write_text("from iteralite import a\n")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    assert provenance.module_closure(script) == ["iteralite", "iteralite.a", "iteralite.b"]
    before = provenance.code_digest.__wrapped__(script)
    (package / "c.py").write_text("Y = 2\n")  # not reached: same digest
    assert provenance.code_digest.__wrapped__(script) == before
    (package / "b.py").write_text("X = 2\n")
    assert provenance.code_digest.__wrapped__(script) != before


def test_fingerprint_names_each_part(tmp_path):
    tokens = tmp_path / "tokens.pt"
    tokens.write_bytes(b"abc")
    first = provenance.fingerprint({"lr": 1e-3}, {"tokens": str(tokens), "init": None}, "iteralite.stages.training")
    assert set(first) == {"settings", "tokens", "code"}
    assert provenance.fingerprint({"lr": 2e-3}, {"tokens": str(tokens)}, "iteralite.stages.training")["tokens"] == \
        first["tokens"]
    assert provenance.fingerprint({"lr": 2e-3}, {"tokens": str(tokens)}, "iteralite.stages.training")["settings"] != \
        first["settings"]


CONFIG = {"seed": 1, "train": {"lr": 0.1, "batch_size": 4}, "pruning": {"bounds": {"width": 0.5}, "targets": [0.4],
                                                                     "expert_criterion": "routing"},
          "finetune": {"lr": 0.2, "control": True}}


def test_config_slice_keeps_only_the_named_keys_in_config_shape():
    assert study.config_slice(CONFIG, ["pruning.bounds", "seed"]) == {"pruning": {"bounds": {"width": 0.5}}, "seed": 1}
    assert study.config_slice(CONFIG, ["finetune"], drop=["finetune.control"]) == {"finetune": {"lr": 0.2}}
    assert CONFIG["finetune"] == {"lr": 0.2, "control": True}  # dropping a key from a slice leaves the config whole
    # key order never changes a param (Snakemake compares params by value)
    assert list(study.config_slice(CONFIG, ["train"])["train"]) == ["batch_size", "lr"]
    with pytest.raises(ConfigError, match="config has no key train.momentum"):
        study.config_slice(CONFIG, ["train.momentum"])


def test_importance_depends_on_calibration_unless_random():
    assert study.importance_keys(CONFIG, "random") == []  # its seed comes with its file name
    for criterion in ("l1", "taylor"):  # blocks are scored by their skip loss on calibration batches
        assert "pruning.calibration_batches" in study.importance_keys(CONFIG, criterion)
    assert not any("targets" in k for c in ("l1", "taylor", "random") for k in study.importance_keys(CONFIG, c))


def test_files_digest_names_files_within_their_root_wherever_it_lies(tmp_path):
    first, second = tmp_path / "checkout", tmp_path / "scratch" / "renamed"
    for root in (first, second):
        (root / "rules").mkdir(parents=True)
        (root / "Snakefile").write_text("include: 'rules/a.smk'\n")
        (root / "rules" / "a.smk").write_text("rule a:\n")

    def digest(root):
        return provenance.files_digest(root, [root / "rules" / "a.smk", root / "Snakefile"])

    assert digest(first) == digest(second) and list(digest(first)) == ["Snakefile", "rules/a.smk"]
    (second / "rules" / "a.smk").write_text("rule b:\n")
    assert digest(second)["rules/a.smk"] != digest(first)["rules/a.smk"]
    assert digest(second)["Snakefile"] == digest(first)["Snakefile"]
    with pytest.raises(ValueError):
        provenance.files_digest(first, [second / "Snakefile"])  # outside its root: no name to give it
    assert list(provenance.package_files_digest(provenance.PACKAGE_DIR / "data" / "austen.jsonl.gz")) == \
        ["iteralite/data/austen.jsonl.gz"]


# --- the resume fingerprint: a state made by another run is discarded, whichever part differs ----------------------

RUN = TrainConfig(batch_size=4, lr=1e-3, warmup=1, max_steps=6, eval_every=3, eval_tokens=200, checkpoint_every=100,
                  log_every=1, seed=3)


def token_file(path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    splits = {split: torch.randint(0, 300, (2000,), generator=gen, dtype=torch.int32)
              for split in ("train", "validation")}
    save_torch(path, {"tokens": splits, "tokenizer_sha256": "sha"})


def checkpoint_file(path, model, shift: float) -> None:
    """`model`'s checkpoint with every weight moved by `shift` (0: the model itself)."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(shift)
    save_checkpoint(path, moved, "sha")


@pytest.fixture
def inputs(tmp_path, tiny_model):
    """The files a fine-tune reads: tokens, the model it starts from, a teacher."""
    files = {"tokens": tmp_path / "tokens.pt", "init": tmp_path / "init.pt", "teacher": tmp_path / "teacher.pt"}
    token_file(files["tokens"], seed=0)
    checkpoint_file(files["init"], tiny_model, 0.0)
    checkpoint_file(files["teacher"], tiny_model, 0.01)
    return files


def signal_once(monkeypatch, signum: int, step: int) -> None:
    """The next training run gets `signum` from its own process while it takes step `step`, as a job gets Slurm's
    signal mid-step (once: the run after it is not signalled)."""
    shots = [step]

    class Windows(train_module.TokenWindows):
        def next(self):
            self.calls = getattr(self, "calls", 0) + 1
            if shots and self.calls == shots[0]:
                shots.clear()
                assert callable(signal.getsignal(signum)), "the loop does not handle the signal (it would end pytest)"
                os.kill(os.getpid(), signum)
            return super().next()

    monkeypatch.setattr(train_module, "TokenWindows", Windows)


def run(out, inputs, settings=RUN, model_cfg=None, teacher=False):
    """A fine-tune from inputs["init"] (a baseline of `model_cfg` when given) into `out`, as the rules run it."""
    training.train_model(settings, torch.device("cpu"), str(inputs["tokens"]), str(out / "model.pt"),
                         str(out / "curve.csv"), model_cfg=model_cfg,
                         init_checkpoint=None if model_cfg else str(inputs["init"]),
                         teacher_checkpoint=str(inputs["teacher"]) if teacher else None)


def stopped_run(out, inputs, monkeypatch, signum=signal.SIGTERM, step=3, **how):
    """A run stopped by `signum` at `step`: it exits 75 (Snakemake retries) and leaves its resume state."""
    signal_once(monkeypatch, signum, step)
    with pytest.raises(SystemExit) as stop:
        run(out, inputs, **how)
    assert stop.value.code == 75 and (out / "train_state.pt").is_file() and not (out / "model.pt").exists()


def new_tokens(inputs, monkeypatch, tmp_path):
    token_file(inputs["tokens"], seed=1)


def moved(name: str):
    """The checkpoint `name` rewritten in place with other weights (the same shapes)."""
    return lambda inputs, monkeypatch, tmp_path: checkpoint_file(inputs[name], load_checkpoint(inputs[name])[0], 0.02)


def edited_training_code(inputs, monkeypatch, tmp_path):
    """The code part is the digest of the package modules the training stage reaches (names and contents, not
    paths): here a copy of the package whose train.py has an edit."""
    package = tmp_path / "package" / "iteralite"
    shutil.copytree(ROOT / "iteralite", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "train.py").write_text((package / "train.py").read_text() + "\n# an edit\n")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)


# part -> (the change made between the two runs, how both runs train, the part the discarding log line names)
CHANGED_PARTS = {
    "tokens": (new_tokens, {}, "tokens"),
    "initial checkpoint": (moved("init"), {}, "init"),
    "teacher": (moved("teacher"), {"settings": replace(RUN, distill_weight=0.5), "teacher": True}, "teacher"),
    "code": (edited_training_code, {}, "code"),
}


@pytest.mark.parametrize("part", CHANGED_PARTS)
def test_a_state_is_discarded_when_a_part_of_its_fingerprint_differs(part, inputs, tmp_path, monkeypatch, caplog):
    """Each file a run reads and the training code: a state saved before the change is discarded (the log line
    names the part), and the run starts afresh and completes."""
    change, how, named = CHANGED_PARTS[part]
    out = tmp_path / "out"
    stopped_run(out, inputs, monkeypatch, **how)
    change(inputs, monkeypatch, tmp_path)
    with caplog.at_level(logging.INFO):
        run(out, inputs, **how)
    assert f"it was made by a different run ({named} differ)" in caplog.text, caplog.text
    assert "resumed from" not in caplog.text
    assert (out / "model.pt").is_file() and not (out / "train_state.pt").exists()


def test_a_state_of_another_model_config_is_discarded(inputs, tiny_cfg, tmp_path, monkeypatch, caplog):
    """A baseline (no starting checkpoint) of another model config: the same tensor shapes (top_k 1 instead of 2),
    so only the fingerprint tells the state is not this run's."""
    out = tmp_path / "out"
    stopped_run(out, inputs, monkeypatch, model_cfg=tiny_cfg)
    with caplog.at_level(logging.INFO):
        run(out, inputs, model_cfg=replace(tiny_cfg, top_k=1))
    assert "it was made by a different run (settings differ)" in caplog.text, caplog.text
    assert "resumed from" not in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_either_signal_saves_the_state_and_the_rerun_ends_as_an_uninterrupted_run(signum, inputs, tmp_path,
                                                                                  monkeypatch, caplog):
    """SIGTERM (a time limit) and SIGUSR1 (a site's preemption warning) alike: the run finishes its step, saves its
    state and exits 75; the retry resumes at that step and ends with the model and curve of a run never stopped."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight, inputs)
    with caplog.at_level(logging.INFO):
        stopped_run(stopped, inputs, monkeypatch, signum=signum, step=4)
        assert f"{signal.Signals(signum).name} at step 4: state saved to {stopped / 'train_state.pt'}" in caplog.text
        run(stopped, inputs)
    assert f"resumed from {stopped / 'train_state.pt'} at step 4" in caplog.text
    a, b = (load_checkpoint(d / "model.pt")[0].state_dict() for d in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    columns = ["step", "train_loss", "val_ppl", "lr"]
    pd.testing.assert_frame_equal(*(pd.read_csv(d / "curve.csv")[columns] for d in (straight, stopped)))
