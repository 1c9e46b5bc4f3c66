# INT4 copies of the baseline and the fine-tuned models: results/models/int4-<stage>/<variant>/model.pt


rule quantize:
    input:
        checkpoint="results/models/{fstage}/{variant}/model.pt",
    output:
        model="results/models/int4-{fstage}/{variant}/model.pt",
        stats="results/models/int4-{fstage}/{variant}/quant_stats.json",
    params:
        settings=config_slice("quantize.group_size", "quantize.keep_high_precision"),
        code=code_of("quantize"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/quantize/{fstage}/{variant}.log",
    benchmark:
        "benchmarks/quantize/{fstage}/{variant}.tsv"
    script:
        "../scripts/quantize.py"
