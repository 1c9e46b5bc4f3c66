"""Files the package ships: a leaf module (no imports of the package, no torch), so that reading a path never
widens the code a rule depends on (iteralite.provenance)."""

from pathlib import Path

EMBEDDED_CORPUS = Path(__file__).parent / "data" / "austen.jsonl.gz"
