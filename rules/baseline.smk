# The dense baseline: training (GPU partition on Slurm), parameter analysis, evaluation of any model.


rule train_baseline:
    input:
        unpack(baseline_inputs),
    output:
        checkpoint="results/models/baseline/dense/model.pt",
        curve=report("results/models/baseline/dense/curve.csv", category="Training", caption="../report/curve.rst"),
    params:
        settings=baseline_settings(),
        code=code_of("train_baseline"),
    threads: 2
    resources:
        runtime=480,
        mem_mb=WINDOW_MEM_MB,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/train_baseline.log",
    benchmark:
        "benchmarks/train_baseline.tsv"
    script:
        "../scripts/train_baseline.py"


rule analyze:
    input:
        checkpoint="results/models/baseline/dense/model.pt",
    output:
        json="results/analysis/params.json",
        csv="results/analysis/params.csv",
        groups="results/analysis/groups.csv",
    params:
        code=code_of("analyze"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/analyze.log",
    benchmark:
        "benchmarks/analyze.tsv"
    script:
        "../scripts/analyze.py"


rule evaluate:
    input:
        model=lambda w: checkpoint_path(f"{w.stage}/{w.variant}"),
        tokens="results/tokens/tokens.pt",
    output:
        metrics="results/metrics/models/{stage}/{variant}.json",
    params:
        settings=config_slice("evaluate", "device"),
        code=code_of("evaluate"),
    threads: 1
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/evaluate/{stage}/{variant}.log",
    benchmark:
        "benchmarks/evaluate/{stage}/{variant}.tsv"
    script:
        "../scripts/evaluate.py"
