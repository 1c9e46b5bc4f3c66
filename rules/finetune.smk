# Fine-tuning of every pruned variant, and of the dense baseline with the same budget (the control, variant
# "dense"). On Slurm these go to the GPU partition; a preempted job saves its state and its retry resumes.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/models/finetuned/{variant}/model.pt",
        curve=report(
            "results/models/finetuned/{variant}/curve.csv", category="Training", caption="../report/curve.rst"
        ),
    params:
        settings=config_slice("finetune", "seed", "device", drop=["finetune.control"]),
        code=code_of("finetune"),
    threads: 2
    resources:
        runtime=480,
        # measured peak RSS 0.95-1.16 GB (benchmarks/finetune/*.tsv, max_rss, default study), with a margin
        mem_mb=2000,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/finetune/{variant}.log",
    benchmark:
        "benchmarks/finetune/{variant}.tsv"
    script:
        "../scripts/finetune.py"
