import os

import pytest
import torch
from conftest import NO_CUDA_ADVICE

from iteralite.artifacts import CheckpointError, atomic_path, write_json
from iteralite.checkpoint import load_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_code_carrying_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "iteralite-checkpoint-v1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is not a loadable weights-only torch file"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_truncated_and_foreign_files_are_named(tiny_model, tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny_model, "sha")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(truncated)):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=f"checkpoint {foreign} is not an IteraLite checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=f"{text} is not a torch file: torch files are zip archives"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_round_trip_rebuilds_the_model(tiny_model, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model, "abc", {"steps": 3})
    model, meta = load_checkpoint(path)
    assert meta["tokenizer_sha256"] == "abc" and meta["meta"] == {"steps": 3}
    idx = torch.randint(0, 300, (1, 8))
    torch.testing.assert_close(model.eval()(idx)[0], tiny_model(idx)[0])


def test_mismatched_state_is_named(tiny_model, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, tiny_model, "sha")
    blob = torch.load(path, weights_only=True)
    blob["config"]["d_model"] = 64
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="does not match its model config"):
        load_checkpoint(path)


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{") and oct(target.stat().st_mode & 0o777) != "0o600"


def test_user_baseline_checkpoint_is_checked_against_config(tiny_model, tmp_path):
    from dataclasses import replace

    from iteralite.artifacts import save_torch
    from iteralite.stages import user_baseline

    tokens = tmp_path / "tokens.pt"
    save_torch(tokens, {"tokens": {}, "tokenizer_sha256": "sha"})
    user = tmp_path / "user.pt"
    save_checkpoint(user, tiny_model, "sha")
    out = tmp_path / "out" / "model.pt"
    user_baseline.use_checkpoint(tiny_model.cfg, str(user), str(tokens), str(out), str(tmp_path / "out" / "curve.csv"))
    assert load_checkpoint(out)[0].cfg == tiny_model.cfg
    wider = replace(tiny_model.cfg, d_model=64)
    with pytest.raises(CheckpointError, match=f"model.checkpoint {user} does not match the config's model"):
        user_baseline.use_checkpoint(wider, str(user), str(tokens), str(tmp_path / "o2.pt"), str(tmp_path / "c2.csv"))
    save_torch(tokens, {"tokens": {}, "tokenizer_sha256": "other"})
    with pytest.raises(CheckpointError, match="trained with another tokenizer"):
        user_baseline.use_checkpoint(tiny_model.cfg, str(user), str(tokens), str(tmp_path / "o3.pt"),
                                str(tmp_path / "c3.csv"))


def test_claimed_sizes_allocate_nothing_before_they_are_checked(tiny_model, tmp_path):
    """A config claiming a 10^9-token vocabulary (128 GB of embedding) is refused on its tensor shapes, in a process
    allowed 4 GB of address space: the model is built without storage first."""
    import subprocess
    import sys

    path = tmp_path / "huge.pt"
    save_checkpoint(path, tiny_model, "sha")
    blob = torch.load(path, weights_only=True)
    blob["config"]["vocab_size"] = 10**9
    torch.save(blob, path)
    code = ("import resource, sys\n"
            "from iteralite.checkpoint import load_checkpoint\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "try:\n    load_checkpoint(sys.argv[1])\nexcept Exception as err:\n    print(type(err).__name__, err)\n")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert run.stdout.startswith(f"CheckpointError checkpoint {path} does not match its model config"), run
    assert "size mismatch for tok_emb.weight" in run.stdout


def test_cuda_device_that_is_not_there_is_named_at_once():
    from iteralite.train import pick_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(RuntimeError, match=r"device: cuda, but no CUDA device is visible on host .+ "
                                           r"\(CUDA_VISIBLE_DEVICES="):
        pick_device("cuda")


def test_a_job_that_holds_a_gpu_and_sees_none_fails_instead_of_running_on_the_cpu():
    from snakemake.iocontainers import ResourceList

    from iteralite.train import pick_device
    from iteralite.workflow import holds_gpu

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    slurm_training = ResourceList(fromdict={"_cores": 8, "gres": "gpu:1", "mem_mb": 4000})
    assert holds_gpu(slurm_training) and holds_gpu(ResourceList(fromdict={"gpu": 2}))
    assert not holds_gpu(ResourceList(fromdict={"_cores": 2, "mem_mb": 2000, "gres": "tmpdisk:10"}))
    for extra in ("--gres=gpu:a100:1", "--qos=long --gpus=1", "--gpus-per-node 2", "-G 1", "-G1"):
        assert holds_gpu(ResourceList(fromdict={"slurm_extra": extra})), extra
    for extra in ("--qos=gpu_long", "--constraint=gpu", "--account=gpulab"):
        assert not holds_gpu(ResourceList(fromdict={"slurm_extra": extra})), extra
    with pytest.raises(RuntimeError, match=r"^device: auto in a job that holds a GPU, but no CUDA device is visible "
                                           r"on host .+" + NO_CUDA_ADVICE):
        pick_device("auto", holds_gpu(slurm_training))
    assert pick_device("cpu", holds_gpu=True).type == "cpu"  # asked for in so many words
    assert pick_device("auto", holds_gpu=False).type == "cpu"
