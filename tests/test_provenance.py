"""Which package code each rule runs (the code digest in its params), and config slices."""

import pytest
from conftest import ROOT

from iteralite import provenance, study
from iteralite.study import ConfigError

SCRIPTS = ROOT / "scripts"


def closure(script: str) -> set[str]:
    return set(provenance.module_closure(SCRIPTS / f"{script}.py"))


def test_report_runs_only_the_report_code():
    assert closure("report") == {"iteralite", "iteralite.report", "iteralite.naming", "iteralite.rulegraph",
                                 "iteralite.artifacts", "iteralite.workflow"}


def test_closures_follow_relative_and_lazy_imports():
    prune = closure("prune")
    assert {"iteralite.stages", "iteralite.stages.pruning", "iteralite.pruning.surgery", "iteralite.analysis",
            "iteralite.checkpoint", "iteralite.model"} <= prune
    assert not prune & {"iteralite.quant", "iteralite.report", "iteralite.study"}  # train: recovery between steps
    finetune = closure("finetune")
    assert {"iteralite.train", "iteralite.provenance", "iteralite.data"} <= finetune
    assert not {m for m in finetune if m.startswith("iteralite.pruning")}
    assert "iteralite.quant" in closure("evaluate") and "iteralite.pruning.surgery" not in closure("evaluate")
    assert closure("prepare_corpus") & {"iteralite.model", "iteralite.train"} == set()


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
