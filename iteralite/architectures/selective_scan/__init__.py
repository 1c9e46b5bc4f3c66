"""The selective-scan architecture: a Mamba-style IteraLite with a step size and a d_state state per channel,
RMSNorms that divide by the unpruned width (a pruned model equals its masked dense model), an inner norm, and MoE in
every layer; the Itera-Lite architecture's tensor names and shapes otherwise.

config.py holds its sizes (torch-free), model.py its forward and step modes, scan.py its scan (the readable reference
in torch ops and the fused CPU kernel), scan_triton.py the GPU kernels, groups.py its coupled pruning groups, onnx.py
its ONNX graphs. The rest of the package reaches it through the registry (`iteralite.architectures`).
"""
