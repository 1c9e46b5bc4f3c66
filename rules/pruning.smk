# Importance scores per criterion (independent of the sparsity target), then one pruned model per variant.


rule score_importance:
    input:
        checkpoint="results/models/baseline/dense/model.pt",
        tokens="results/tokens/tokens.pt",
    output:
        scores="results/importance/{criterion}.pt",
        csv="results/importance/{criterion}.csv",
    params:
        config=config,
    threads: 2
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/score_importance/{criterion}.log",
    benchmark:
        "benchmarks/score_importance/{criterion}.tsv"
    script:
        "../scripts/score_importance.py"


rule prune:
    input:
        checkpoint="results/models/baseline/dense/model.pt",
        scores=lambda w: f"results/importance/{study.parse_variant(config, w.variant)[0]}.pt",
    output:
        checkpoint="results/models/pruned/{variant}/model.pt",
        stats="results/models/pruned/{variant}/prune_stats.json",
    params:
        config=config,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/prune/{variant}.log",
    benchmark:
        "benchmarks/prune/{variant}.tsv"
    script:
        "../scripts/prune.py"
