"""Records every rename a process makes, for tests/test_workflow.py::test_every_artifact_is_renamed_into_place.

On PYTHONPATH with ITERALITE_TEST_RENAMES naming a folder (the tests' tiny study sets both), every Python process
Snakemake starts, each job's script included, imports this at start-up and appends `source<TAB>target` of each
os.rename/os.replace (the audit event "os.rename") to a file of its own in that folder. Python calls the hook for
every rename, whichever library makes it; a file written in place never appears.
"""

import os
import sys

RECORDS = os.environ.get("ITERALITE_TEST_RENAMES")

if RECORDS:
    def _record(event, args):
        if event == "os.rename":
            with open(os.path.join(RECORDS, f"{os.getpid()}.tsv"), "a", encoding="utf-8") as f:
                f.write(f"{os.path.abspath(args[0])}\t{os.path.abspath(args[1])}\n")

    sys.addaudithook(_record)
