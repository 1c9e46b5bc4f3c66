"""The Itera-Lite architecture: the Itera-Lite repository's `IteraLiteModel` (CisnerosCodes/Itera-Lite, MIT,
`models/itera_lite.py`, `ssm.py`, `moe.py`), read for its facts; none of its code is copied here. The model the study
plan is written for, and the default study's.

config.py holds its sizes (torch-free), model.py its forward and step modes, groups.py its coupled pruning groups,
onnx.py its ONNX graphs; convert.py imports a checkpoint the Itera-Lite code wrote, tokenizer.py its tokenizers,
layouts.py writes that code's files (for trying the import, its tests and its fidelity figures). The rest of the
package reaches it through the registry (`iteralite.architectures`).
"""
