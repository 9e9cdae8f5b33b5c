"""Text datasets of many classes, and their splits: CLINC150's intents and ARSC's review-sentiment tasks.

A :class:`TextClasses` holds texts the way :class:`~.datasets.ImageClasses` holds images (class ``c``
owns ``texts[offsets[c]:offsets[c + 1]]``), so the episode samplers, the class splits and the
frozen-body cache work on either.

* **CLINC150** (Larson et al. 2019, CC BY 3.0): 150 intents, 150 in-scope utterances each (its own
  train, val and test rows together; the out-of-scope rows are left out). The intents are split by
  class with the split seed, as Tiny ImageNet's classes are (:func:`~.datasets.split_by_group`):
  38 test, 19 validation and 93 training intents for seed 0.
* **ARSC** (Yu et al. 2018): 23 product domains, each with three binary tasks (reviews rated above
  2, 4 or 5 stars against the rest). Its split is fixed: the four domains books, dvd, electronics
  and kitchen_housewares are the test tasks; the others train on their ``train`` rows (or, for the
  domains that lack them, their ``test`` rows) and validate on their ``dev`` rows. A class is one
  side of one task (``dvd/t4/positive``); its group is the task (``dvd/t4``), and episodes draw
  both classes from one group (:class:`~.episodes.ImageEpisodes` ``within_group``), since a task
  mixing two domains' reviews would be about topics, not sentiment.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: ARSC's standard test domains (Yu et al. 2018): never trained or validated on.
ARSC_TEST_DOMAINS = ("books", "dvd", "electronics", "kitchen_housewares")
ARSC_SIDES = {1: "positive", -1: "negative"}


@dataclass
class TextClasses:
    """Texts of many classes: class ``c`` owns ``texts[offsets[c]:offsets[c + 1]]``; ``groups`` as for images."""

    texts: list[str]
    offsets: Tensor  # int64 [n_classes + 1]
    names: list[str]
    groups: list[str]

    @classmethod
    def of(cls, members: Sequence[tuple[str, str, Sequence[str]]]) -> TextClasses:
        """From ``(name, group, texts)`` per class."""
        counts = torch.tensor([len(texts) for _, _, texts in members], dtype=torch.long)
        return cls([text for _, _, texts in members for text in texts],
                   torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                   [name for name, _, _ in members], [group for _, group, _ in members])

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def texts_of(self, c: int) -> list[str]:
        return self.texts[int(self.offsets[c]) : int(self.offsets[c + 1])]

    def subset(self, classes: Sequence[int]) -> TextClasses:
        return TextClasses.of([(self.names[c], self.groups[c], self.texts_of(c)) for c in classes])


def load_clinc150(root: Path, per_class: int | None = None) -> TextClasses:
    """CLINC150's in-scope utterances, one class per intent (each its own group), intents sorted by name."""
    path = root / "data_full.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: CLINC150's data_full.json (see ../shared/datasets/README.md)")
    data = json.loads(path.read_text())
    by_intent: dict[str, list[str]] = defaultdict(list)
    for split in ("train", "val", "test"):
        for text, intent in data[split]:
            by_intent[intent].append(text)
    return TextClasses.of([(intent, intent, by_intent[intent][:per_class]) for intent in sorted(by_intent)])


def read_arsc(root: Path) -> list[dict]:
    path = root / "arsc.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: ARSC's reviews (see ../shared/datasets/README.md)")
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def load_arsc(root: Path, per_class: int | None = None) -> dict[str, TextClasses]:
    """ARSC's fixed split as classes (see the module's docstring); ``per_class`` keeps each class's
    first N reviews (embedding all 98,000 reviews takes about 20 minutes on 2 cores)."""
    rows = read_arsc(root)
    present = {(row["domain"], row["split"]) for row in rows}
    members: dict[str, dict[tuple[str, str, int], list[str]]] = {split: defaultdict(list) for split in
                                                                 ("train", "val", "test")}
    for row in rows:
        domain, source = row["domain"], row["split"]
        if domain in ARSC_TEST_DOMAINS:
            split = "test" if source == "test" else None
        elif source == "dev":
            split = "val"
        else:  # a training domain's train rows; its test rows only where it has no train rows
            split = "train" if source == "train" or (domain, "train") not in present else None
        if split is not None:
            members[split][(domain, row["threshold"], row["label"])].append(row["text"])
    return {split: TextClasses.of([(f"{d}/{t}/{ARSC_SIDES[label]}", f"{d}/{t}", texts[:per_class])
                                   for (d, t, label), texts in sorted(found.items())])
            for split, found in members.items()}


@dataclass(frozen=True)
class FixedTask:
    """One of ARSC's standard test tasks: its fixed support set and its queries, labels by name."""

    name: str  # "dvd/t4"
    support: dict[str, list[str]]  # {"negative": [5 reviews], "positive": [5 reviews]}
    queries: list[str]
    query_labels: list[str]


def arsc_test_tasks(root: Path) -> list[FixedTask]:
    """ARSC's 12 standard test tasks (Yu et al. 2018): each test domain's ``train`` rows are its fixed
    support set (5 reviews a side), its ``test`` rows the queries."""
    support: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    queries: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in read_arsc(root):
        if row["domain"] not in ARSC_TEST_DOMAINS:
            continue
        task, side = f"{row['domain']}/{row['threshold']}", ARSC_SIDES[row["label"]]
        if row["split"] == "train":
            support[task][side].append(row["text"])
        elif row["split"] == "test":
            queries[task].append((row["text"], side))
    return [FixedTask(task, {side: support[task][side] for side in sorted(support[task])},
                      [text for text, _ in queries[task]], [side for _, side in queries[task]])
            for task in sorted(support)]
