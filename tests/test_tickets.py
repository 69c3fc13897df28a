"""The ticket-to-JSON task: generated data, prompt, target and exact scoring (no model needed)."""

import json
import random
from collections import Counter

import pytest

from peft_teach import tickets
from peft_teach.tickets import FIELDS, INSTRUCTION, MODEL_CODES, PRODUCT_WORDS, TEAMS

ALL_CODES = [code for codes in MODEL_CODES.values() for code in codes]


@pytest.fixture(scope="module")
def data():
    return tickets.load_tickets()


def _codes_in(text):
    return [code for code in ALL_CODES if code in text]


def _product_words_in(text):
    lowered = text.lower()
    return [word for words in PRODUCT_WORDS.values() for word in words if word.lower() in lowered]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = tickets.load_tickets(seed=3), tickets.load_tickets(seed=3), tickets.load_tickets(seed=4)
    for split in ("train", "validation", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert a["train"]["text"] != c["train"]["text"]


def test_sizes_columns_and_no_text_repeats_within_or_across_splits(data):
    assert {split: len(data[split]) for split in data} == {"train": 600, "validation": 100, "test": 200}
    assert set(data["train"].column_names) == {"text", "prompt", "answer", "team", "product", "sentiment"}
    texts = {split: data[split]["text"] for split in data}
    for split, column in texts.items():
        assert len(set(column)) == len(column), f"a text repeats inside {split}"
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])


def test_custom_sizes_and_bad_sizes():
    small = tickets.load_tickets(n_train=10, n_validation=0, n_test=5)
    assert [len(small[s]) for s in ("train", "validation", "test")] == [10, 0, 5]
    with pytest.raises(ValueError, match="n_test"):
        tickets.load_tickets(n_test=-1)
    with pytest.raises(TypeError, match="seed"):
        tickets.load_tickets(seed="0")


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_fields_are_balanced(data, split):
    rows = data[split]
    bounds = {"team": (0.15, 0.50), "sentiment": (0.15, 0.50), "product": (0.10, 0.25)}
    allowed = {"team": tickets.TEAMS, "product": tickets.PRODUCTS, "sentiment": tickets.SENTIMENTS}
    for field, (low, high) in bounds.items():
        counts = Counter(rows[field])
        assert set(counts) == set(allowed[field]), f"{field}: {counts}"
        shares = {value: count / len(rows) for value, count in counts.items()}
        assert all(low <= share <= high for share in shares.values()), f"{field} shares: {shares}"


def test_about_half_the_tickets_name_the_product_only_by_a_model_code(data):
    texts = [text for split in data for text in data[split]["text"]]
    with_code = [text for text in texts if _codes_in(text)]
    assert 0.4 <= len(with_code) / len(texts) <= 0.6
    for split in data:
        for row in data[split]:
            codes = _codes_in(row["text"])
            if codes:  # the code is one of its product's, and no product word gives it away
                assert len(codes) == 1 and codes[0] in MODEL_CODES[row["product"]], row
                assert not _product_words_in(row["text"]), row
            else:  # a plain word names the product
                words = [w for w in PRODUCT_WORDS[row["product"]] if w.lower() in row["text"].lower()]
                assert words, row


def test_model_codes_are_unique_and_say_nothing_about_the_product():
    assert len(set(ALL_CODES)) == len(ALL_CODES) == 2 * len(tickets.PRODUCTS)
    for code in ALL_CODES:
        assert not _product_words_in(code), code


def test_team_names_never_appear_in_a_ticket(data):
    for split in data:
        for text in data[split]["text"]:
            assert not [team for team in TEAMS if team in text.lower()], text


def test_tickets_are_short_and_read_like_sentences(data):
    for split in data:
        for text in data[split]["text"]:
            assert 15 <= len(text.split()) <= 45, text
            assert text[0].isupper() and "{" not in text and "  " not in text, text


def test_the_tone_is_in_the_text(data):
    """Negative and positive tickets carry a sentence of their tone; neutral ones carry none."""
    def tone_sentences(sentiment):
        return [s.lower() for s in tickets.OPENERS[sentiment] + tickets.CLOSERS[sentiment]]

    for row in data["train"]:
        lowered = row["text"].lower()
        found = {s: any(piece in lowered for piece in tone_sentences(s)) for s in ("negative", "positive")}
        if row["sentiment"] == "neutral":
            assert not any(found.values()), row
        else:
            assert found[row["sentiment"]], row


def test_generate_ticket_keeps_given_fields_and_rejects_unknown_ones():
    rng = random.Random(0)
    for _ in range(50):
        ticket = tickets.generate_ticket(rng, team="shipping", product="tablet", sentiment="positive")
        assert (ticket.team, ticket.product, ticket.sentiment) == ("shipping", "tablet", "positive")
    with pytest.raises(ValueError, match="team"):
        tickets.generate_ticket(rng, team="sales")


def test_answer_is_compact_json_in_fixed_key_order(data):
    ticket = tickets.Ticket("text", "billing", "router", "negative")
    assert tickets.answer_json(ticket) == '{"team": "billing", "product": "router", "sentiment": "negative"}'
    for row in data["test"]:
        parsed = tickets.parse_answer(row["answer"])
        assert parsed == {field: row[field] for field in FIELDS}
        assert list(parsed) == list(FIELDS)


def test_prompt_is_instruction_then_ticket(data):
    row = data["test"][0]
    assert row["prompt"] == tickets.ticket_prompt(row["text"])
    assert row["prompt"].startswith(INSTRUCTION) and row["prompt"].endswith(row["text"])
    with pytest.raises(ValueError):
        tickets.ticket_prompt("")


def test_instruction_names_every_allowed_value_but_no_model_code():
    for values in (tickets.TEAMS, tickets.PRODUCTS, tickets.SENTIMENTS):
        for value in values:
            assert f"{value}" in INSTRUCTION
    for field in FIELDS:
        assert f'"{field}"' in INSTRUCTION
    assert "JSON" in INSTRUCTION
    assert not _codes_in(INSTRUCTION)
    assert not any(code.split()[0].split("-")[0] in INSTRUCTION for code in ALL_CODES)


@pytest.mark.parametrize("junk", ["", "no json here", "{team: billing}", '{"team": "billing"', "[1, 2", "}{"])
def test_parse_answer_gives_none_on_junk(junk):
    assert tickets.parse_answer(junk) is None


def test_parse_answer_skips_text_around_the_object_and_takes_the_first():
    text = 'Sure! Here it is: {"team": "account", "note": "a {brace}"} and {"team": "billing"} Done.'
    assert tickets.parse_answer(text) == {"team": "account", "note": "a {brace}"}
    assert tickets.parse_answer('{oops} {"team": "shipping"}') == {"team": "shipping"}


def test_parse_answer_rejects_a_list():
    assert tickets.parse_answer('[{"team": "billing", "product": "router", "sentiment": "neutral"}]') is None
    assert tickets.parse_answer('["billing"] {"team": "billing"}') is None


REFERENCES = [
    {"team": "billing", "product": "router", "sentiment": "negative"},
    {"team": "technical", "product": "camera", "sentiment": "neutral"},
    {"team": "shipping", "product": "tablet", "sentiment": "positive"},
    {"team": "account", "product": "speaker", "sentiment": "neutral"},
]
PREDICTIONS = [
    '{"team": "billing", "product": "router", "sentiment": "negative"}',  # all right
    'Sure! {"team": "technical", "product": "camera", "sentiment": "positive"} Hope it helps.',  # sentiment wrong
    "The team is shipping and the product is a tablet.",  # no JSON: wrong everywhere
    '{"team": "Account", "product": "speaker"}',  # team not exact, sentiment missing
]


def test_score_answers_on_a_hand_made_example():
    scores = tickets.score_answers(PREDICTIONS, REFERENCES)
    assert scores == pytest.approx({"parse_rate": 0.75, "team": 0.5, "product": 0.75, "sentiment": 0.25,
                                    "all_fields": 0.25})


def test_score_answers_reads_a_dataset_and_gives_one_for_the_true_answers(data):
    scores = tickets.score_answers(data["test"]["answer"], data["test"])
    assert scores == {"parse_rate": 1.0, "team": 1.0, "product": 1.0, "sentiment": 1.0, "all_fields": 1.0}
    shifted = tickets.score_answers(data["test"]["answer"][1:] + data["test"]["answer"][:1], data["test"])
    assert shifted["all_fields"] < 0.2


def test_score_answers_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match=r"3 predictions but 4 references.*one answer per"):
        tickets.score_answers(PREDICTIONS[:3], REFERENCES)
    with pytest.raises(TypeError, match="list"):
        tickets.score_answers(PREDICTIONS[0], REFERENCES[:1])
    with pytest.raises(KeyError, match="sentiment"):
        tickets.score_answers(PREDICTIONS[:1], [{"team": "billing", "product": "router"}])


def test_few_shot_examples_come_from_train_and_cover_the_teams(data):
    examples = tickets.few_shot_examples(data, k=4, seed=1)
    assert len(examples) == 4
    train_pairs = set(zip(data["train"]["prompt"], data["train"]["answer"]))
    assert all(pair in train_pairs for pair in examples)
    assert {json.loads(answer)["team"] for _, answer in examples} == set(TEAMS)
    assert tickets.few_shot_examples(data, k=4, seed=1) == examples
    assert tickets.few_shot_examples(data, k=4, seed=2) != examples
    assert len({prompt for prompt, _ in tickets.few_shot_examples(data, k=10)}) == 10
    assert tickets.few_shot_examples(data, k=0) == []
    with pytest.raises(ValueError, match="k"):
        tickets.few_shot_examples(data, k=len(data["train"]) + 1)
