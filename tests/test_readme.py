"""The README stays true: every make target and config key it names exists, and it stays short."""

import re

import yaml
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_make_target_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README)) | set(re.findall(r"^\s+make ([a-z][a-z-]*)", README,
                                                                                flags=re.M))
    assert named and named <= targets, named - targets


def test_every_config_key_in_the_readme_exists():
    """Keys are checked against the schema, which lists every key (config.yaml leaves some to their defaults)."""
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)*)`", README))
    keys = [k for k in named if k.split(".")[0] in schema["properties"]]
    assert len(keys) >= 15
    for key in keys:
        node = schema
        for part in key.split("."):
            if "$ref" in node:  # '#/$defs/<name>'
                node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
            assert part in node.get("properties", {}), f"README names config key {key}, which the schema lacks"
            node = node["properties"][part]


def test_the_readme_is_short_and_links_docs_that_exist():
    assert len(README.splitlines()) <= 220
    for doc in re.findall(r"docs/[a-z]+\.(?:md|png)", README):
        assert (ROOT / doc).is_file(), doc
