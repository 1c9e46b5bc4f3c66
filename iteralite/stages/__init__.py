"""One module per rule family: paths and typed settings in, artifacts out. scripts/ only call these.

Each module imports only what its rules run, because the workflow reruns a rule when any package module its script
reaches changes (iteralite.provenance).
"""
