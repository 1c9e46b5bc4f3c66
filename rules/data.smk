# Corpus, tokenizer and token ids.


rule prepare_corpus:
    input:
        # a user's corpus files, as the config names them
        study.corpus_files(config["corpus"]),
    output:
        train="results/corpus/train.txt",
        validation="results/corpus/validation.txt",
        test="results/corpus/test.txt",
        stats="results/corpus/stats.json",
    params:
        settings=config_slice("corpus", "seed"),
        # the embedded corpus, by its name in the package and its content
        shipped=provenance.package_files_digest(*study.shipped_corpus(config["corpus"])),
        code=code_of("prepare_corpus"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/prepare_corpus.log",
    benchmark:
        "benchmarks/prepare_corpus.tsv"
    script:
        "../scripts/prepare_corpus.py"


rule train_tokenizer:
    input:
        # a byte-level BPE is trained on the corpus, or the user's tokenizer (tokenizer.path) converted
        unpack(tokenizer_inputs),
    output:
        tokenizer="results/tokenizer/tokenizer.json",
    params:
        settings=config_slice("tokenizer"),
        code=code_of("train_tokenizer"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/train_tokenizer.log",
    benchmark:
        "benchmarks/train_tokenizer.tsv"
    script:
        "../scripts/train_tokenizer.py"


rule tokenize:
    input:
        splits=expand("results/corpus/{split}.txt", split=["train", "validation", "test"]),
        tokenizer="results/tokenizer/tokenizer.json",
    output:
        tokens="results/tokens/tokens.pt",
        stats="results/tokens/stats.json",
    params:
        window=study.model_config(config).max_seq,  # every split must hold one window (+1 target)
        code=code_of("tokenize"),
    conda:
        "../envs/iteralite.yaml"
    log:
        "logs/tokenize.log",
    benchmark:
        "benchmarks/tokenize.tsv"
    script:
        "../scripts/tokenize.py"
