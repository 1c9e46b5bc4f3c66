"""Glue for scripts/ and the benches: logging to the rule's log file, a fixed thread count, bounded native caches."""

from __future__ import annotations

import logging
import os
import re
import sys


def bound_native_caches() -> None:
    """Bound oneDNN's cache of compiled primitives, which keeps one per matmul shape (1024 by default). The MoE
    experts see a different number of tokens at every step, so with the default the cache, and the process's
    resident memory, grew by about 20 MiB per training step (1.4 GiB after 40 steps of the default model). Read by
    oneDNN when it creates its first primitive, so this runs before any computation."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


def start(snakemake) -> logging.Logger:
    """Send this job's logging (and uncaught errors) to its log file; fix torch's threads to the rule's. A script
    imports its stage, and torch with it if the stage needs it, before it calls this: a job without torch never
    imports it here."""
    bound_native_caches()
    log_path = snakemake.log[0] if snakemake.log else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    threads = max(1, int(snakemake.threads))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by a torch imported after this point
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    logger = logging.getLogger("iteralite")

    def log_uncaught(kind, value, tb):
        logger.error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught
    return logger


def workflow_file(snakemake, name: str) -> str:
    """A file of the workflow, by its name relative to the workflow's directory (as a rule's params name it,
    `provenance.files_digest`): found from the job's script, which lies in scripts/ there, and not from the job's
    working directory, which may be another (`--directory`)."""
    return os.path.join(os.path.dirname(os.path.normpath(snakemake.scriptdir)), name)


# sbatch's own GPU requests, as a profile may pass them in `slurm_extra`: --gres=gpu..., --gpus, --gpus-per-node
# (-task, -socket), -G.
_SBATCH_GPU_REQUEST = re.compile(r"(?:^|\s)(?:--gres[= ]\S*gpu|--gpus(?:-per-\w+)?[= ]|-G ?\d)", re.IGNORECASE)


def holds_gpu(resources) -> bool:
    """Whether the job asked its executor for a GPU, as the Slurm executor plugin passes a request on: a `gres`
    naming one (the Slurm profile's "gpu:1"), a `gpu` count, or an sbatch GPU option in `slurm_extra`. `resources` is
    the job's snakemake.resources."""
    return ("gpu" in str(resources.get("gres", "") or "").lower() or int(resources.get("gpu", 0) or 0) > 0
            or bool(_SBATCH_GPU_REQUEST.search(str(resources.get("slurm_extra", "") or ""))))
