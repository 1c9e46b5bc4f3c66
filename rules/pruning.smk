# Importance scores per criterion (independent of the sparsity target), then one pruned model per variant.


rule score_importance:
    input:
        checkpoint="results/models/baseline/dense/model.pt",
        tokens="results/tokens/tokens.pt",
    output:
        scores="results/importance/{criterion}.pt",
        csv="results/importance/{criterion}.csv",
    params:
        settings=lambda w: config_slice(*study.importance_keys(config, w.criterion)),
        code=code_of("score_importance"),
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
        scores=lambda w: f"results/importance/{variant_of(w)['criterion']}.pt",
    output:
        checkpoint="results/models/pruned/{variant}/model.pt",
        stats="results/models/pruned/{variant}/prune_stats.json",
    params:
        variant=variant_of,
        settings=config_slice("pruning.bounds", "pruning.round_to"),
        code=code_of("prune"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/prune/{variant}.log",
    benchmark:
        "benchmarks/prune/{variant}.tsv"
    script:
        "../scripts/prune.py"
