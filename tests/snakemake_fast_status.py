"""`python tests/snakemake_fast_status.py <snakemake args>`: Snakemake with the Slurm plugin's status checks every
STATUS_INTERVAL seconds, for the Slurm tests.

The plugin (2.8.0) waits 10 s longer after every round of status checks in which no job finished, up to 180 s: a
test waiting on one long job noticed its end more than a minute late. A site keeps the plugin's back-off (it spares
slurmdbd); the local test cluster answers sacct in milliseconds.
"""

import sys

import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main

STATUS_INTERVAL = 2
backing_off = slurm.Executor.check_active_jobs


async def check_active_jobs(self, active_jobs):
    async for job in backing_off(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = STATUS_INTERVAL


slurm.Executor.check_active_jobs = check_active_jobs
sys.exit(main())
