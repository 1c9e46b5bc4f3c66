# Side-by-side benchmark of every model, the summary table and the HTML report.


localrules:
    rulegraph,
    summary,
    report,


rule benchmark:
    input:
        models=[checkpoint_path(m) for m in BENCHMARKED],
        exports=[f"{export_dir(m)}/export.json" for m in EXPORTED],
        tokens="results/tokens/tokens.pt",
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        speed="results/bench/speed.csv",
        latency="results/bench/latency.csv",
        samples="results/bench/samples.json",
        load="results/bench/load.csv",
    params:
        models=BENCHMARKED,
        exported=EXPORTED,
        settings=config_slice("benchmark", "device"),
        code=code_of("benchmark"),
    threads: 2
    resources:
        mem_mb=WINDOW_MEM_MB,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/benchmark.log",
    benchmark:
        "benchmarks/benchmark.tsv"
    script:
        "../scripts/benchmark.py"


rule rulegraph:
    output:
        dot="results/rulegraph.dot",
    params:
        # the rule graph changes with the workflow's code, and with the config only where it removes a rule
        snakefile=workflow_files(workflow.main_snakefile),
        rules=workflow_files(*Path(workflow.basedir).glob("rules/*.smk")),
        settings=config_slice("quantize.models"),
        code=code_of("rulegraph"),
    # Mostly waiting (3 s of CPU in 12-20 s: the nested Snakemake loads the Slurm plugin, which asks `scontrol` for up
    # to 10 s where Slurm's tools exist but no controller answers): it takes no core, so the baseline need not wait.
    threads: 0
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/rulegraph.log",
    benchmark:
        "benchmarks/rulegraph.tsv"
    script:
        "../scripts/rulegraph.py"


rule summary:
    input:
        metrics=[metrics_path(m) for m in MODELS],
        exports=[f"{export_dir(m)}/export.json" for m in EXPORTED],
        speed="results/bench/speed.csv",
        load="results/bench/load.csv",
    output:
        summary=report("results/metrics/summary.csv", category="Results", caption="../report/summary.rst"),
    params:
        code=code_of("summary"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    script:
        "../scripts/summary.py"


rule report:
    input:
        summary="results/metrics/summary.csv",
        analysis="results/analysis/params.json",
        corpus="results/corpus/stats.json",
        baseline_curve="results/models/baseline/dense/curve.csv",
        finetune_curves=expand("results/models/finetuned/{variant}/curve.csv", variant=FINETUNED),
        importance=expand("results/importance/{criterion}-s{seed}.csv", criterion=CRITERIA, seed=SEEDS[0]),
        prune_stats=expand("results/models/pruned/{variant}/prune_stats.json", variant=VARIANTS),
        quant_stats=[f"results/models/int4-{s}/quant_stats.json" for s in QUANTIZED],
        speed="results/bench/speed.csv",
        latency="results/bench/latency.csv",
        samples="results/bench/samples.json",
        load="results/bench/load.csv",
        job_benchmarks=job_benchmarks(),
        rulegraph="results/rulegraph.dot",
    output:
        html="results/report.html",
    params:
        targets=workflow_files(Path(workflow.basedir) / "report/targets.yaml"),
        # The report prints the study config, so every key changes its output.
        study_config=config_slice(*config),
        code=code_of("report"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    script:
        "../scripts/report.py"
