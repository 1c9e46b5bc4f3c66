#!/usr/bin/env bash
# Every GPU check in one run: the Triton kernels and the gpu-marked tests on CUDA, each scan kernel's registers and
# spills, then the training benchmark at every size. Run from the repository root on a machine with a CUDA GPU,
# torch and triton:
#   bash tools/gpu_check.sh
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
python3 -m pytest -q -p no:cacheprovider tests/test_scan_triton.py tests/test_train.py tests/test_bench.py -k "triton or cuda or graphed" 2>&1 | tail -15
timeout 30 python3 tools/kernel_registers.py
timeout 240 python3 -m iteralite.trainbench config/config.yaml config/selective_scan.yaml --threads 16 --repeats 10 --device cuda --sizes S,M,L,L128
