# Importance scores per criterion and seed (independent of the sparsity target), then one pruned model per variant.


rule score_importance:
    input:
        checkpoint="results/models/baseline/dense/model.pt",
        tokens="results/tokens/tokens.pt",
    output:
        scores="results/importance/{criterion}-s{seed}.pt",
        csv="results/importance/{criterion}-s{seed}.csv",
    params:
        settings=lambda w: config_slice(*study.importance_keys(config, w.criterion)),
        code=code_of("score_importance"),
    # One thread and a high priority: the fine-tunes wait on scores and pruning, so these go first. With 2 threads a
    # score waited for both cores while the scheduler kept filling single free cores with small jobs.
    threads: 1
    priority: 20
    resources:
        mem_mb=WINDOW_MEM_MB,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/score_importance/{criterion}-s{seed}.log",
    benchmark:
        "benchmarks/score_importance/{criterion}-s{seed}.tsv"
    script:
        "../scripts/score_importance.py"


rule prune:
    input:
        unpack(prune_inputs),
    output:
        checkpoint="results/models/pruned/{variant}/model.pt",
        stats="results/models/pruned/{variant}/prune_stats.json",
    params:
        variant=variant_of,
        settings=prune_settings,
        code=code_of("prune"),
    priority: 20
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/prune/{variant}.log",
    benchmark:
        "benchmarks/prune/{variant}.tsv"
    script:
        "../scripts/prune.py"
