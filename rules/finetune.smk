# Fine-tuning of every pruned variant by each recovery method and seed, and of the dense baseline with the same
# budget (the control, "dense-s<seed>"). On Slurm these go to the GPU partition; a preempted job saves its state and
# its retry resumes.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/models/finetuned/{variant}/model.pt",
        curve=report(
            "results/models/finetuned/{variant}/curve.csv", category="Training", caption="../report/curve.rst"
        ),
    params:
        settings=finetune_settings,
        code=code_of("finetune"),
    # One thread: on a small CPU machine two fine-tunes run side by side (in the default study about as fast as two
    # in turn with two threads each) and leave no core idle at the end; the Slurm profile sets its own.
    threads: 1
    # the longest jobs after the baseline start before the small ones (evaluations, quantization), which fill gaps
    priority: 10
    resources:
        runtime=480,
        mem_mb=WINDOW_MEM_MB,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/finetune/{variant}.log",
    benchmark:
        "benchmarks/finetune/{variant}.tsv"
    script:
        "../scripts/finetune.py"
