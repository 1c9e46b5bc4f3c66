import json
import os

import pytest

from iteralite import data, tokens


def corpus(**settings) -> dict:
    """A corpus section as the schema fills it."""
    return {"source": "embedded", "paths": [], "text_field": "text", "hub_name": None, "hub_split": "train",
            "max_documents": None, **settings}

def test_embedded_corpus_is_real_prose():
    docs = data.load_documents(corpus(source="embedded"))
    assert len(docs) == 6
    assert "truth universally acknowledged" in "".join(docs)
    assert sum(len(d) for d in docs) > 4_000_000


def test_split_is_deterministic_and_disjoint():
    docs = [f"doc{i} " + "\n".join(f"line {i}.{j}" for j in range(100)) for i in range(3)]
    a = data.split_documents(docs, 0.1, 0.1, seed=1)
    b = data.split_documents(docs, 0.1, 0.1, seed=2)
    assert a == b  # tail mode does not depend on the seed
    lines = {k: set(v.splitlines()) - {""} for k, v in a.items()}
    assert not lines["train"] & lines["test"] and not lines["validation"] & lines["test"]
    assert "line 0.99" in lines["test"] and "line 0.85" in lines["validation"]
    many = [f"story {i}" for i in range(40)]
    s1, s2 = data.split_documents(many, 0.1, 0.1, 5, "documents"), data.split_documents(many, 0.1, 0.1, 5, "documents")
    assert s1 == s2 and s1 != data.split_documents(many, 0.1, 0.1, 6, "documents")


def test_tokenizer_round_trip_and_vocab_size():
    text = data.load_documents(corpus(source="embedded"))[0][:200_000]
    tok = data.train_tokenizer(text, 400)
    assert tok.get_vocab_size() == 400
    sample = "It is a truth universally acknowledged — café, naïve, 😀\n\nNew paragraph."
    assert tok.decode(tok.encode(sample).ids) == sample
    ids = tokens.encode(tok, sample)
    assert tok.decode(ids.tolist()).startswith("It is a truth")


def test_bad_vocab_size_is_named():
    with pytest.raises(data.DataError, match="tokenizer.vocab_size"):
        data.train_tokenizer("some text", 100)


def test_missing_and_empty_corpus_files_are_named(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(data.DataError, match=f"file not found: {missing}"):
        data.load_documents(corpus(source="files", paths=[str(missing)]))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(data.DataError, match="file is empty"):
        data.load_documents(corpus(source="files", paths=[str(empty)]))
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n  ")
    with pytest.raises(data.DataError, match="corpus is empty"):
        data.load_documents(corpus(source="files", paths=[str(blank)]))


def test_non_utf8_text_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(data.DataError, match="not UTF-8"):
        data.load_documents(corpus(source="files", paths=[str(bad)]))


def test_jsonl_and_parquet_through_datasets(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["one story", "two stories", "three"], "id": [1, 2, 3]})
    frame.to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.parquet"):
        assert data.load_documents(corpus(source="files", paths=[str(tmp_path / name)])) == list(frame["text"])
    with pytest.raises(data.DataError, match="text_field 'body'"):
        data.load_documents(corpus(source="files", paths=[str(tmp_path / "c.jsonl")], text_field="body"))


# Any name lookup or connection the process tries is recorded and refused at once (an audit hook sees every socket
# call Python makes), so a regression shows as a recorded attempt, not as a wait on a machine without network.
NO_NETWORK = """
import sys
attempts = []

def refuse(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.connect"):
        attempts.append(event)
        raise ConnectionRefusedError(f"network attempt refused by the test: {event} {args}")

sys.addaudithook(refuse)
from iteralite import data
try:
    data.load_documents({"source": "hub", "hub_name": "roneneldan/TinyStories", "text_field": "text",
                         "hub_split": "train", "max_documents": None})
finally:
    print("network attempts:", attempts)
"""


def test_hub_name_offline_fails_without_a_network_attempt():
    """In a fresh process (datasets reads HF_DATASETS_OFFLINE at import), as on a machine without network: the error
    names the key and the flag, and no socket call is made (what makes it fail at once)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # the one flag alone does it
    run = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True,
                         env={**env, "HF_DATASETS_OFFLINE": "1"}, timeout=120)
    assert run.returncode != 0
    assert "DataError: corpus.hub_name 'roneneldan/TinyStories' could not be loaded" in run.stderr
    assert "(HF_DATASETS_OFFLINE=1: no network access is attempted" in run.stderr
    assert "network attempts: []" in run.stdout, run.stdout + run.stderr[-2000:]


def test_a_split_shorter_than_one_window_fails_when_tokenized_naming_the_keys(tmp_path):
    from iteralite.architectures.itera_lite.tokenizer import read_tokenizer
    from iteralite.stages.corpus import tokenize

    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps({"token_to_id": {"<UNK>": 1, "a": 4}}))
    read_tokenizer(tokenizer)[0].save(str(tokenizer))
    splits = []
    for name, words in (("train", 300), ("validation", 65), ("test", 64)):
        splits.append(tmp_path / f"{name}.txt")
        splits[-1].write_text("a " * words)
    tokenize([str(p) for p in splits[:2]], str(tokenizer), 64, str(tmp_path / "t.pt"), str(tmp_path / "s.json"))
    with pytest.raises(data.DataError, match=r"corpus split test: 64 tokens, fewer than one window of "
                                             r"model.max_seq=64 positions and its target; a larger corpus"):
        tokenize([str(p) for p in splits], str(tokenizer), 64, str(tmp_path / "t.pt"), str(tmp_path / "s.json"))


def test_the_corpus_and_tokenizer_jobs_import_no_torch():
    """Their scripts' modules load without torch (about 3 s of CPU a job here); tokenizing, which saves tensors, and
    a split in `documents` mode, which draws torch's seeded permutation, import it when they run."""
    import subprocess
    import sys

    code = ("import sys; from iteralite import workflow; from iteralite.stages import corpus, user_tokenizer; "
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stdout + run.stderr
