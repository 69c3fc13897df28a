import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from peft_teach import data


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_task_shapes_labels_and_no_leaks(name):
    spec = data.TASKS[name]
    suite = data.load_task(name)
    assert [len(suite[s]) for s in ("train", "validation", "test")] == list(spec.sizes)
    assert suite["train"].features["label"].names == list(spec.labels)
    texts = [set(suite[s]["text"]) for s in suite]
    assert sum(len(t) for t in texts) == len(set.union(*texts)), "a text repeats across splits"
    counts = [suite["train"]["label"].count(i) for i in range(len(spec.labels))]
    assert min(counts) > 0, f"a class is missing from training: {counts}"


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = data.load_task("sentiment", seed=3), data.load_task("sentiment", seed=3), data.load_task("sentiment", seed=4)
    assert a["train"]["text"] == b["train"]["text"] and a["test"]["label"] == b["test"]["label"]
    assert a["train"]["text"] != c["train"]["text"]


def test_tasks_draw_different_reviews():
    assert data.load_task("sentiment")["train"]["text"][:50] != data.load_task("aspect")["train"]["text"][:50]


def test_target_task_is_low_resource_and_composes_sources():
    routing = data.load_task("routing")
    assert len(routing["train"]) <= 256
    # The routing label is a function of sentiment and aspect of the same review.
    import random

    rng = random.Random(0)
    for _ in range(200):
        review = data.generate_review(rng)
        label = data.TASKS["routing"].label_of(review)
        expected = "no_action" if review.positive else data.ROUTING_TEAMS[review.aspect]
        assert label == expected


def test_negation_flips_the_adjective():
    import random

    rng = random.Random(1)
    for _ in range(300):
        clause, negated = data._clause(rng, "hotel", "service", positive=True)
        used = [a for a in data.ADJECTIVES["service"][not negated] if clause.endswith(a)]
        assert used, f"{clause!r} (negated={negated}) should use a {'negative' if negated else 'positive'} adjective"


def test_long_variant_is_long(tokenizer):
    lengths = [len(ids) for ids in tokenizer(list(data.load_task("sentiment_long")["test"]["text"]))["input_ids"]]
    assert min(lengths) >= 128


def test_label_noise_only_touches_training_labels():
    clean, noisy = data.load_task("topic"), data.load_task("topic", label_noise=0.2)
    changed = sum(a != b for a, b in zip(clean["train"]["label"], noisy["train"]["label"]))
    assert 0.05 * len(clean["train"]) < changed < 0.3 * len(clean["train"])
    assert clean["test"]["label"] == noisy["test"]["label"]


def test_unknown_task_lists_the_tasks():
    with pytest.raises(KeyError, match="sentiment"):
        data.load_task("sentimnet")


def test_glue_conversion_on_a_saved_fixture(tmp_path):
    """The Hub path, checked offline: a GLUE-shaped DatasetDict saved to disk."""
    label = ClassLabel(names=["entailment", "not_entailment"])
    rows = {"sentence1": [f"premise {i}" for i in range(10)], "sentence2": [f"hypothesis {i}" for i in range(10)],
            "label": [i % 2 for i in range(10)], "idx": list(range(10))}
    raw = DatasetDict({split: Dataset.from_dict(rows).cast_column("label", label) for split in ("train", "validation")})
    raw.save_to_disk(tmp_path / "rte")
    converted = data.load_glue("rte", path=str(tmp_path / "rte"))
    assert set(converted) == {"train", "validation", "test"}
    assert len(converted["validation"]) + len(converted["test"]) == 10
    assert converted["train"][0] == {"text": "premise 0", "label": 0, "text_pair": "hypothesis 0"}
    assert converted["train"].features["label"].names == ["entailment", "not_entailment"]


def test_glue_offline_fails_fast(monkeypatch):
    from peft_teach.models import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="load_task"):
        data.load_glue("sst2")


def _tsv_folder(tmp_path, train: str):
    good = "label\tsentence\n1\ta fine film\n0\ta dull one\n"
    for split, text in (("train", train), ("validation", good), ("test", good)):
        (tmp_path / f"{split}.tsv").write_text(text)
    return tmp_path


@pytest.mark.parametrize("train, fix", [
    ("label\tsentence\npositive\ta fine film\n", None),  # a label name is accepted
    ("sentence\tlabel\na fine film\t1\n", "line 1: expected the header"),
    ("label\tsentence\n1 a fine film\n", "line 2: no tab"),
    ("label\tsentence\n1\tgood\na fine film\t1\n", "line 3: the label 'a fine film' is not one of 0-1"),
    ("label\tsentence\n7\ta fine film\n", "line 2: the label '7'"),
    ("label\tsentence\n1\t \n", "line 2: the sentence is empty"),
    ("label\tsentence\n", "holds a header but no examples"),
    ("", "found 'an empty file'"),
])
def test_a_tsv_task_is_checked_line_by_line(tmp_path, train, fix):
    folder = _tsv_folder(tmp_path, train)
    if fix is None:
        assert data.load_tsv_task(folder)["train"]["label"] == [1]
        return
    with pytest.raises(ValueError, match=fix) as caught:
        data.load_tsv_task(folder)
    assert "train.tsv" in str(caught.value)
