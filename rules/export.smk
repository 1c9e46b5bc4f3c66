# ONNX export of the models worth shipping (export.models): results/export/<stage>/<variant>/, verified against torch
# in ONNX Runtime before anything is written (docs/deploy.md).


rule export:
    input:
        model="results/models/{stage}/{variant}/model.pt",
        tokens="results/tokens/tokens.pt",
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        sequence="results/export/{stage}/{variant}/model.onnx",
        step="results/export/{stage}/{variant}/step.onnx",
        tokenizer="results/export/{stage}/{variant}/tokenizer.json",
        manifest="results/export/{stage}/{variant}/export.json",
    params:
        model="{stage}/{variant}",
        # the test perplexity is compared on evaluate.test_tokens, the windows summary.csv's test_ppl uses
        settings=config_slice("export.verify_windows", "evaluate.test_tokens"),
        code=code_of("export"),
    resources:
        mem_mb=WINDOW_MEM_MB,
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/export/{stage}/{variant}.log",
    benchmark:
        "benchmarks/export/{stage}/{variant}.tsv"
    script:
        "../scripts/export.py"
