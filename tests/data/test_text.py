"""Text data for RIFT: the word-level tokenizer, synonym tables, synth_sentiment, the readers (each on a tiny fixture
in its exact layout), class-balanced groups, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab.data.dataset import DataError
from vitlab.data.text import (
    SYNTH_GROUPS,
    SYNTH_MAX_COMBINATIONS,
    ClassBalancedGroups,
    EncodeStats,
    SynonymTable,
    TextDataset,
    TextExample,
    WordTokenizer,
    collate_groups,
    combinations,
    encode_examples,
    read_csv,
    read_imdb,
    read_jsonl,
    read_snli,
    read_sst2,
    synth_held_out_words,
    synth_sentiment,
    synth_synonyms,
    synth_visible_words,
)
from vitlab.methods.rift import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer(load_tokenizer("minilm"))


def test_word_tokenizer_one_id_per_word_and_first_piece_of_synonyms(tok):
    assert tok.word_id("movie") == tok.vocab["movie"]
    assert tok.word_id("Movie") == tok.vocab["movie"]  # uncased
    assert tok.word_id("unbelievablyxyz") == tok.unk  # a word the tokenizer splits: UNK, one position
    pieces = tok.tokenizer.tokenize("tiresome")
    assert len(pieces) > 1
    assert tok.synonym_id("tiresome") == tok.vocab[pieces[0]]  # first sub-token kept (the official trick)
    strict = WordTokenizer(tok.tokenizer, multi_piece="error")
    with pytest.raises(DataError, match="tiresome.*pieces"):
        strict.synonym_id("tiresome")


def test_encoding_aligns_words_with_slots(tok):
    table = SynonymTable({"good": ["great", "fine"]})
    out = encode_examples([TextExample("the movie was good", 1)], tok, table, max_len=8, slots=4)
    ids, sub, mask = out["input_ids"][0], out["sub_ids"][0], out["sub_mask"][0]
    assert ids[0] == tok.cls and ids[5] == tok.sep and out["attention_mask"][0].tolist() == [1] * 6 + [0] * 2
    assert torch.equal(sub[:, 0], ids)  # slot 0 = the original token at every position
    assert sub[4, 1:3].tolist() == [tok.vocab["great"], tok.vocab["fine"]] and mask[4].tolist() == [1, 1, 1, 0]
    assert mask[:4, 1:].sum() == 0 and mask[5:, 1:].sum() == 0  # only "good" may be substituted


def test_pairs_substitute_only_the_hypothesis(tok):
    table = SynonymTable({"man": ["guy"], "dog": ["puppy"]})
    out = encode_examples([TextExample("a man runs", 0, "a dog runs")], tok, table, max_len=12, slots=3)
    types, mask = out["token_type_ids"][0], out["sub_mask"][0]
    assert types[:5].tolist() == [0] * 5 and types[5:9].tolist() == [1] * 4
    assert mask[2, 1] == 0  # "man" in the premise: not substitutable
    assert mask[6, 1] == 1  # "dog" in the hypothesis


def test_truncation_documented_or_error(tok):
    ex = [TextExample("one two three four five six seven eight", 0)]
    stats = EncodeStats()
    out = encode_examples(ex, tok, None, max_len=6, stats=stats)
    assert stats.truncated == 1 and out["attention_mask"].sum() == 6 and out["input_ids"][0, 5] == tok.sep
    with pytest.raises(DataError, match="max_len 6"):
        encode_examples(ex, tok, None, max_len=6, truncation="error", source="train.jsonl")


def test_synth_sentiment_sizes_vocab_and_held_out_words(tok):
    synonyms = synth_synonyms()
    visible, held = synth_visible_words(), synth_held_out_words()
    for split, size in (("train", 2000), ("val", 200), ("test", 500)):
        data = synth_sentiment(split)
        assert len(data) == size and sum(e.label for e in data) == size // 2
        words = {w for e in data for w in e.text.split()}
        assert not words & held  # train and test use only train-visible words
        assert all(len(e.text.split()) <= 24 for e in data)
        assert all(combinations(e.text, synonyms) <= SYNTH_MAX_COMBINATIONS for e in data)
    assert synth_sentiment("test") == synth_sentiment("test")  # deterministic
    for words, _ in SYNTH_GROUPS.values():
        assert len(words) <= 9
        for w in words:
            assert len(tok.tokenizer.tokenize(w)) == 1, w  # every dictionary word is one token
            assert set(synonyms(w)) == set(words) - {w}
    assert held and visible and not held & visible


def test_synonym_json_rift_layout_and_errors(tmp_path):
    path = tmp_path / "counterfitted_neighbors.json"
    path.write_text(json.dumps({"good": ["great", "fine"] + [f"w{i}" for i in range(10)], "movie": []}))
    table = SynonymTable.from_json(path)
    assert table("good")[:2] == ["great", "fine"] and len(table("good")) == 8 and table("movie") == []
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json"):
        SynonymTable.from_json(tmp_path / "bad.json")
    with pytest.raises(DataError, match="not found"):
        SynonymTable.from_json(tmp_path / "missing.json")


def test_glove_neighbours_offline():
    table = SynonymTable.from_glove(["excellent", "zzzznotaword"], k=5, min_cosine=0.6)
    assert 1 <= len(table("excellent")) <= 5 and "excellent" not in table("excellent")
    assert table("zzzznotaword") == []


def test_readers_on_their_layouts(tmp_path):
    classes = ["negative", "positive"]
    (tmp_path / "d.jsonl").write_text('{"text": "A fine film.", "label": 1}\n{"text": "Bad!", "label": "negative"}\n')
    assert read_jsonl(tmp_path / "d.jsonl", classes) == [TextExample("A fine film .", 1), TextExample("Bad !", 0)]
    (tmp_path / "d.csv").write_text('text,label\n"Good, really",1\n')
    assert read_csv(tmp_path / "d.csv", classes) == [TextExample("Good , really", 1)]
    imdb = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for name in ("pos", "neg"):
            (imdb / split / name).mkdir(parents=True)
            (imdb / split / name / "0_7.txt").write_text(f"It was {name}.<br /><br />More\nsecond line")
    got = read_imdb(imdb, "train")
    assert [e.label for e in got] == [0, 1] and got[1].text == "It was pos . More"
    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text("sentence\tlabel\nhide new secretions \t0\n")
    (sst / "dev.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\n")
    assert read_sst2(sst, "train") == [TextExample("hide new secretions", 0)]
    assert read_sst2(sst, "test")[0].label == 1
    snli = tmp_path / "snli_1.0"
    snli.mkdir()
    rows = [{"gold_label": "neutral", "sentence1": "A man.", "sentence2": "A dog."},
            {"gold_label": "-", "sentence1": "x", "sentence2": "y"},
            {"gold_label": "contradiction", "sentence1": "A b.", "sentence2": "C d."}]
    (snli / "snli_1.0_test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    got = read_snli(snli, "test")
    assert [e.label for e in got] == [2, 1] and got[0].text_b == "A dog ."


def test_label_outside_the_classes_names_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": "x", "label": 5}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: label 5 is outside the 2 classes"):
        read_jsonl(tmp_path / "d.jsonl", ["neg", "pos"])
    with pytest.raises(DataError, match="outside"):
        TextDataset({"label": torch.tensor([0, 3])}, ["a", "b"])


def test_class_balanced_groups(tok):
    examples = [TextExample("good", 1)] * 7 + [TextExample("bad", 0)] * 3
    ds = TextDataset(encode_examples(examples, tok, None, 4), ["negative", "positive"])
    groups = ClassBalancedGroups(ds)
    assert len(groups) == 3  # the epoch ends with the shortest class
    batch = collate_groups([groups[i] for i in range(2)])
    assert batch["label"].tolist() == [0, 1, 0, 1] and batch["input_ids"].shape == (4, 4)
