"""The course task suite: generated reviews, deterministic from a seed, no download.

Every example is a short customer review about one of four *domains* (restaurant,
hotel, gadget, clothing). A review has a *verdict clause*, the clause the writer
means ("the waiter did not seem friendly"), often paired with a contrasting
clause ("Although the food was superb, ...") and neutral filler sentences.

The same generated reviews feed several tasks, so knowledge can transfer:

=================  ========  ===================================================
task               labels    what it asks
=================  ========  ===================================================
sentiment (main)   2         is the verdict positive or negative? Needs negation
                             ("did not seem friendly") and contrast ("X, but Y")
aspect             4         which aspect is the verdict about (price, quality,
                             service, speed)?
topic              4         which kind of business is reviewed?
negation           2         is the verdict clause negated?
routing (target)   5         low-resource (256 training examples): which team must
                             act? positive -> no_action; negative -> the team of
                             the aspect. Composes sentiment and aspect.
sentiment_long     2         the sentiment task buried in 16-20 neutral sentences
                             (>= 128 tokens), for the prefix-length lesson.
=================  ========  ===================================================

Why these tasks: a frozen sentence encoder sees mostly *which words* occur; it
struggles to tell "seemed friendly" from "did not seem friendly" or to know which
side of "but" counts. So a linear head on frozen features falls clearly short of
full fine-tuning on ``sentiment`` (lesson 00 measures it), while ``topic`` is easy
for both. ``routing`` can be solved by combining what ``sentiment`` and ``aspect``
adapters learned, which is what AdapterFusion exploits (lesson 02).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

DOMAINS = ("restaurant", "hotel", "gadget", "clothing")
ASPECTS = ("price", "quality", "service", "speed")
ROUTING_TEAMS = {"price": "billing", "quality": "product", "service": "support", "speed": "logistics"}

# What each aspect is called in each domain (singular and plural nouns both work
# with the past-tense verbs below, so no agreement rules are needed).
NOUNS = {
    "restaurant": {
        "price": ["the prices", "the bill", "the wine list prices", "the lunch menu price"],
        "quality": ["the food", "the pasta", "the soup", "the steak", "the dessert"],
        "service": ["the waiter", "the staff", "the hostess", "our server"],
        "speed": ["the kitchen", "the wait for a table", "our order", "the main course"],
    },
    "hotel": {
        "price": ["the room rate", "the nightly price", "the minibar", "the parking fee"],
        "quality": ["the room", "the bed", "the bathroom", "the breakfast buffet"],
        "service": ["the receptionist", "the concierge", "the housekeeping team", "the front desk"],
        "speed": ["check-in", "the airport shuttle", "room service", "the elevator"],
    },
    "gadget": {
        "price": ["the price tag", "the cost", "the subscription", "the extended warranty"],
        "quality": ["the battery", "the screen", "the build", "the camera", "the speaker"],
        "service": ["customer support", "the help desk", "the sales rep", "the repair team"],
        "speed": ["the shipping", "the delivery", "the setup", "the software update"],
    },
    "clothing": {
        "price": ["the price", "the sale price", "the cost of the jacket", "the shipping fee"],
        "quality": ["the fabric", "the stitching", "the jacket", "the fit", "the zipper"],
        "service": ["the shop assistant", "the returns team", "the store staff", "the tailor"],
        "speed": ["the delivery", "the shipping", "the exchange", "the alteration"],
    },
}

ADJECTIVES = {
    "price": {
        True: ["reasonable", "fair", "affordable", "good value", "cheap for what you get"],
        False: ["overpriced", "expensive", "steep", "a rip-off", "outrageous"],
    },
    "quality": {
        True: ["excellent", "superb", "well made", "top notch", "impressive", "lovely"],
        False: ["poor", "shoddy", "disappointing", "mediocre", "awful", "flimsy"],
    },
    "service": {
        True: ["friendly", "helpful", "attentive", "polite", "welcoming", "patient"],
        False: ["rude", "unhelpful", "dismissive", "careless", "grumpy", "indifferent"],
    },
    "speed": {
        True: ["quick", "fast", "prompt", "on time", "speedy", "efficient"],
        False: ["slow", "late", "delayed", "sluggish", "painfully slow", "behind schedule"],
    },
}

VERBS = ["was", "seemed", "felt", "looked", "turned out", "proved", "came across as", "was honestly"]
NEGATED_VERBS = [
    "was not", "did not seem", "never felt", "hardly seemed", "wasn't", "didn't look",
    "was far from", "did not turn out", "was by no means", "was not at all",
]
# How often a verdict is phrased through negation, and how often a review has a
# contrasting clause. Both are what a frozen bag-of-words view cannot resolve.
P_NEGATION = 0.35
P_CONTRAST = 0.5

INTENSIFIERS = ["", "", "", "really ", "quite ", "very ", "genuinely ", "surprisingly ", "pretty "]
NEGATED_INTENSIFIERS = ["", "", "", "particularly ", "exactly ", "all that "]

# (template, verdict_position): verdict clause V, the other clause O.
CONTRASTS = [
    ("{O}, but {V}.", "second"),
    ("{O}; however, {V}.", "second"),
    ("Although {O}, {V}.", "second"),
    ("Even though {O}, {V}.", "second"),
    ("{O}, yet {V}.", "second"),
    ("Sure, {O}, but in the end {V}.", "second"),
    ("{V}, even though {O}.", "first"),
    ("{V}, although {O}.", "first"),
    ("{V}, even if {O}.", "first"),
]

OPENERS = {
    "restaurant": ["We had dinner there last Friday.", "Came here for a birthday lunch.",
                   "Second visit this year.", "We tried the new place downtown."],
    "hotel": ["We stayed two nights in March.", "Booked this for a work trip.",
              "Our family spent a weekend here.", "I stayed here during a conference."],
    "gadget": ["I bought this for my sister.", "Ordered it during the holiday sale.",
               "Been using it for a month now.", "This replaced my old one."],
    "clothing": ["I ordered a size medium.", "Bought this for a wedding.",
                 "Picked it up at the city store.", "Got it as a gift for my dad."],
}
CLOSERS = ["Just my two cents.", "Make of that what you will.", "That's all for now.",
           "Hope this helps someone.", "Overall, that is my honest take.", ""]

# Neutral sentences that say nothing about the verdict: padding for long inputs.
FILLERS = [
    "The parking lot was across the street.", "It rained most of the afternoon.",
    "My cousin recommended it a while ago.", "The building is painted dark green.",
    "We arrived a little after six in the evening.", "There was a football match on that day.",
    "I paid with a credit card.", "The website lists the opening hours.",
    "A friend of mine works nearby.", "We took the train to get there.",
    "The area has changed a lot in recent years.", "I wrote this review on my phone.",
    "There is a bakery right next door.", "My order number started with a seven.",
    "The weather was mild for the season.", "I had read a few reviews beforehand.",
    "We were a group of four people.", "The receipt came by email the next day.",
    "I usually shop at a different place.", "The street was busy with tourists.",
    "My brother came along for the first time.", "We had planned this trip for weeks.",
    "The radio was playing old songs.", "I had the afternoon off work.",
    "A delivery van was parked outside.", "It was the first week of the school holidays.",
]


@dataclass(frozen=True)
class Review:
    """One generated review and every attribute the tasks read labels from."""

    text: str
    domain: str
    aspect: str  # aspect of the verdict clause
    positive: bool  # polarity of the verdict clause
    negated: bool  # whether the verdict clause uses a negation


def _clause(rng: random.Random, domain: str, aspect: str, positive: bool) -> tuple[str, bool]:
    """A clause with the requested meaning; half the time said through negation."""
    negated = rng.random() < P_NEGATION
    # "was not rude" is positive: a negated clause takes the opposite adjective.
    adjective = rng.choice(ADJECTIVES[aspect][positive != negated])
    verb = rng.choice(NEGATED_VERBS if negated else VERBS)
    intensifier = rng.choice(NEGATED_INTENSIFIERS if negated else INTENSIFIERS)
    noun = rng.choice(NOUNS[domain][aspect])
    return f"{noun} {verb} {intensifier}{adjective}", negated


def _sentence_case(text: str) -> str:
    return text[0].upper() + text[1:]


def generate_review(rng: random.Random, n_fillers: int = 0) -> Review:
    """Draw one review. ``n_fillers`` neutral sentences are spread around it."""
    domain = rng.choice(DOMAINS)
    aspect = rng.choice(ASPECTS)
    positive = rng.random() < 0.5
    verdict, negated = _clause(rng, domain, aspect, positive)

    if rng.random() >= P_CONTRAST:  # a single clause
        core = _sentence_case(verdict) + "."
    else:  # a contrast: the other clause has the opposite polarity, usually another aspect
        other_aspect = rng.choice([a for a in ASPECTS if a != aspect] + [aspect])
        other, _ = _clause(rng, domain, other_aspect, not positive)
        template, _ = rng.choice(CONTRASTS)
        core = _sentence_case(template.format(V=verdict, O=other))

    sentences = [core]
    if rng.random() < 0.5:
        sentences.insert(0, rng.choice(OPENERS[domain]))
    closer = rng.choice(CLOSERS)
    if closer and rng.random() < 0.3:
        sentences.append(closer)
    for filler in rng.sample(FILLERS, n_fillers):  # no filler twice in one review
        sentences.insert(rng.randrange(len(sentences) + 1), filler)
    return Review(" ".join(sentences), domain, aspect, positive, negated)


# ---------------------------------------------------------------------------
# Tasks: how a label is read off a review, and how many examples each split has.


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...]
    sizes: tuple[int, int, int]  # train, validation, test
    description: str
    fillers: tuple[int, int] = (0, 0)  # min and max neutral sentences added

    def label_of(self, review: Review) -> str:
        if self.name in ("sentiment", "sentiment_long"):
            return "positive" if review.positive else "negative"
        if self.name == "aspect":
            return review.aspect
        if self.name == "topic":
            return review.domain
        if self.name == "negation":
            return "negated" if review.negated else "plain"
        if self.name == "routing":
            return "no_action" if review.positive else ROUTING_TEAMS[review.aspect]
        raise KeyError(self.name)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("sentiment", ("negative", "positive"), (1200, 300, 600),
                 "Main task. Is the review's verdict positive or negative?"),
        TaskSpec("aspect", ASPECTS, (1200, 300, 600),
                 "Which aspect is the verdict about?"),
        TaskSpec("topic", DOMAINS, (1200, 300, 600),
                 "Which kind of business is reviewed? (easy: word choice gives it away)"),
        TaskSpec("negation", ("plain", "negated"), (1200, 300, 600),
                 "Is the verdict clause negated?"),
        TaskSpec("routing", ("no_action", *ROUTING_TEAMS.values()), (256, 300, 600),
                 "Low-resource target: which team must act on this review?"),
        TaskSpec("sentiment_long", ("negative", "positive"), (600, 200, 400),
                 "Sentiment, buried in 16-20 neutral sentences (>= 128 tokens).", fillers=(16, 20)),
    ]
}
SOURCE_TASKS = ("sentiment", "aspect", "topic", "negation")
TARGET_TASK = "routing"


def _task_seed(name: str, seed: int) -> int:
    # Each task draws its own reviews (stable across Python runs, unlike hash()).
    return seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(name)) % 1_000_003


def load_task(name: str, seed: int = 0, label_noise: float = 0.0) -> DatasetDict:
    """One course task as a ``DatasetDict`` with train/validation/test splits.

    Columns: ``text`` (str) and ``label`` (``ClassLabel`` with named classes).
    The same ``seed`` always gives the same examples. Texts never repeat across
    splits. ``label_noise`` flips that fraction of *training* labels at random.
    """
    if name not in TASKS:
        raise KeyError(f"Unknown task {name!r}. Course tasks: {sorted(TASKS)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer (e.g. 0), got {seed!r}.")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise is the fraction of training labels to randomise, a number in [0, 1] "
                         f"(e.g. 0.1), got {label_noise!r}.")
    spec = TASKS[name]
    rng = random.Random(_task_seed(name, seed))
    total = sum(spec.sizes)

    seen: set[str] = set()
    reviews: list[Review] = []
    while len(reviews) < total:
        review = generate_review(rng, n_fillers=rng.randint(*spec.fillers))
        if review.text not in seen:
            seen.add(review.text)
            reviews.append(review)

    features = Features({"text": Value("string"), "label": ClassLabel(names=list(spec.labels))})
    splits, start = {}, 0
    for split, size in zip(("train", "validation", "test"), spec.sizes):
        chunk = reviews[start : start + size]
        start += size
        labels = [spec.labels.index(spec.label_of(r)) for r in chunk]
        if split == "train" and label_noise > 0:
            labels = [rng.randrange(len(spec.labels)) if rng.random() < label_noise else y for y in labels]
        splits[split] = Dataset.from_dict({"text": [r.text for r in chunk], "label": labels}, features=features)
    return DatasetDict(splits)


def load_suite(seed: int = 0, names: tuple[str, ...] | None = None) -> dict[str, DatasetDict]:
    """Several course tasks at once: ``{name: DatasetDict}``."""
    return {name: load_task(name, seed) for name in (names or tuple(TASKS))}


def label_names(dataset: Dataset | DatasetDict) -> list[str]:
    if isinstance(dataset, DatasetDict):
        dataset = next(iter(dataset.values()))
    return list(dataset.features["label"].names)


# ---------------------------------------------------------------------------
# Real datasets from the Hugging Face Hub (opt-in, needs internet once).

# GLUE task -> (first text column, second text column or None)
GLUE_COLUMNS = {"sst2": ("sentence", None), "rte": ("sentence1", "sentence2"),
                "mrpc": ("sentence1", "sentence2"), "cola": ("sentence", None)}


def load_glue(name: str, path: str | None = None, seed: int = 0) -> DatasetDict:
    """A GLUE task in the course format (``text``, optional ``text_pair``, ``label``).

    GLUE hides its test labels, so the course's validation and test splits are
    the two halves of GLUE's validation split (shuffled with ``seed``).
    ``path`` loads a copy saved with ``DatasetDict.save_to_disk`` instead of
    downloading, which is how the tests check this code offline.
    """
    if name not in GLUE_COLUMNS:
        raise KeyError(f"Unknown GLUE task {name!r}. Supported: {sorted(GLUE_COLUMNS)}")
    raw = _load_saved(path) if path is not None else _download_glue(name)
    first, second = GLUE_COLUMNS[name]
    features = raw["train"].features["label"]

    def convert(split: Dataset) -> Dataset:
        columns = {"text": split[first], "label": split["label"]}
        if second is not None:
            columns["text_pair"] = split[second]
        schema = {"text": Value("string"), "label": ClassLabel(names=features.names)}
        if second is not None:
            schema["text_pair"] = Value("string")
        return Dataset.from_dict(columns, features=Features(schema))

    held_out = convert(raw["validation"]).shuffle(seed=seed)
    half = len(held_out) // 2
    return DatasetDict({
        "train": convert(raw["train"]),
        "validation": held_out.select(range(half)),
        "test": held_out.select(range(half, len(held_out))),
    })


# A real-data sample that ships with the package (see peft_teach/sst2/README.md): 3,000 / 500 / 1,000
# phrases from GLUE SST-2's training file, so the real-data columns can be reproduced offline.
SST2_SAMPLE = Path(__file__).parent / "sst2"


def load_sst2_sample() -> DatasetDict:
    """The packaged SST-2 sample (real movie-review phrases, labels negative/positive), no download needed."""
    return load_tsv_task(SST2_SAMPLE)


def load_tsv_task(folder: str | Path, labels: tuple[str, ...] = ("negative", "positive")) -> DatasetDict:
    """A task stored as ``train.tsv`` / ``validation.tsv`` / ``test.tsv`` (header ``label<TAB>sentence``).

    This is how ``scripts/precompute.py`` reads the SST-2 sample offline; the result has
    the same columns as :func:`load_glue`, so a learner online gets the same format. A label
    is a number (0 = ``labels[0]``, ...) or one of the ``labels`` themselves; every file is
    checked line by line, and a bad line is named with its fix.
    """
    folder = Path(folder)
    splits = {}
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(labels))})
    for split in ("train", "validation", "test"):
        file = folder / f"{split}.tsv"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the folder must hold train.tsv, validation.tsv and test.tsv.")
        texts, label_ids = _read_tsv(file, labels)
        splits[split] = Dataset.from_dict({"text": texts, "label": label_ids}, features=features)
    return DatasetDict(splits)


TSV_HEADER = "label\tsentence"


def _read_tsv(file: Path, labels: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """The sentences and label ids of one TSV file, each line checked; errors name the file, line and fix."""
    lines = file.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != TSV_HEADER:
        found = lines[0][:60] if lines else "an empty file"
        raise ValueError(f"{file}, line 1: expected the header {TSV_HEADER!r} (label, a tab, sentence), found "
                         f"{found!r}. Add that header line, with the columns in that order.")
    texts, label_ids = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{file}, line {number}: no tab between the label and the sentence ({line[:60]!r}). "
                             "Separate the two columns with one tab character.")
        label, text = line.split("\t", 1)
        label = label.strip()
        if label in labels:
            label_ids.append(labels.index(label))
        elif label.isdigit() and int(label) < len(labels):
            label_ids.append(int(label))
        else:
            raise ValueError(f"{file}, line {number}: the label {label[:40]!r} is not one of 0-{len(labels) - 1} "
                             f"or {list(labels)}. Put the label first and the sentence second, or pass "
                             "labels=(...) naming this task's labels in order.")
        if not text.strip():
            raise ValueError(f"{file}, line {number}: the sentence is empty. Remove the line or add its text.")
        texts.append(text)
    if not texts:
        raise ValueError(f"{file} holds a header but no examples: add at least one line 'label<TAB>sentence'.")
    return texts, label_ids


def _load_saved(path: str) -> DatasetDict:
    from datasets import load_from_disk

    return load_from_disk(path)


def _download_glue(name: str) -> DatasetDict:
    from datasets import load_dataset

    from .models import HubUnavailableError, hub_reachable

    if not hub_reachable():
        raise HubUnavailableError(
            f"Cannot download GLUE/{name}: the Hugging Face Hub is not reachable (offline?). "
            "The course's own tasks need no internet: use load_task('sentiment') and friends, "
            "or load a saved copy with load_glue(name, path=...)."
        )
    return load_dataset("nyu-mll/glue", name)
