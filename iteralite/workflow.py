"""Glue for scripts/: logging to the rule's log file and a fixed thread count."""

from __future__ import annotations

import logging
import sys

import torch


def start(snakemake) -> logging.Logger:
    """Send this job's logging (and uncaught errors) to its log file; fix torch's threads to the rule's."""
    log_path = snakemake.log[0] if snakemake.log else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    torch.set_num_threads(max(1, int(snakemake.threads)))
    logger = logging.getLogger("iteralite")

    def log_uncaught(kind, value, tb):
        logger.error("failed: %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught
    return logger
