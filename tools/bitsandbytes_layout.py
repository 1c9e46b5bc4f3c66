"""Writes tests/data/bitsandbytes_nf4.pt: small Linear4bit layers quantized by bitsandbytes itself (NF4, with and
without double quantization of the absmax), their state dicts as bitsandbytes serialises them, and the weights
bitsandbytes dequantizes them to. tests/test_import.py reads the import's 4-bit weights against it, so the layout is
checked against the library's own output without the library in the product's dependencies.

    pip install bitsandbytes    # 0.50.2 wrote the committed file, on the CPU
    python tools/bitsandbytes_layout.py tests/data/bitsandbytes_nf4.pt
"""

from __future__ import annotations

import sys

import bitsandbytes as bnb
import torch


def quantized_layer(weight: torch.Tensor, double_quant: bool) -> dict:
    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, compress_statistics=double_quant,
                              quant_type="nf4", compute_dtype=torch.float16)
    layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=double_quant)
    layer = layer.to("cpu")  # bitsandbytes quantizes when the layer moves to a device
    dequantized = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    return {"state_dict": dict(layer.state_dict()), "dequantized": dequantized}


def main(out: str) -> None:
    weight = torch.randn(96, 200, generator=torch.Generator().manual_seed(0)) * 0.05  # 19,200: 300 blocks of 64
    torch.save({"bitsandbytes": bnb.__version__,
                **{f"double_quant_{flag}": quantized_layer(weight, flag) for flag in (True, False)}}, out)


if __name__ == "__main__":
    main(sys.argv[1])
