from iteralite import workflow
from iteralite.stages import corpus, user_tokenizer

workflow.start(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
tokenizer = snakemake.params.settings["tokenizer"]  # noqa: F821
if "user" in inp.keys():
    user_tokenizer.import_tokenizer(inp.user, out.tokenizer)
else:
    corpus.train_tokenizer(inp.train, tokenizer["vocab_size"], tokenizer["min_frequency"], out.tokenizer)
