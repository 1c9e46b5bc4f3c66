"""Generate with a torch model file: the torch side of the benchmark's serving-process comparison.

    python -m iteralite.torchserve results/models/<stage>/<variant>/model.pt results/tokenizer/tokenizer.json \
        --prompt "It is a truth" --tokens 64

What `python -m iteralite.serve` does with an export, in torch: load the model (an INT4 file on the benchmark's
path, `auto`), encode the prompt, generate in step mode, print the text.
"""

from __future__ import annotations

import argparse

import torch

from . import data, quant, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iteralite.torchserve", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model.pt (float32 checkpoint or INT4 file)")
    parser.add_argument("tokenizer", help="its tokenizer.json")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = quant.load_model(args.model, "auto")
    tokenizer = data.load_tokenizer(args.tokenizer)
    prompt = torch.tensor([tokenizer.encode(args.prompt).ids[: model.cfg.max_seq]])
    generated = model.generate(prompt, args.tokens, args.temperature, torch.Generator().manual_seed(args.seed))
    print(serve.decode(tokenizer, generated[0].tolist()))


if __name__ == "__main__":
    main()
