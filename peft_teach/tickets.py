"""Support tickets to JSON: a generated text-generation task for a small instruct LLM.

Every example is a short customer message to the support desk of a fictional
electronics shop. The model must answer with one compact JSON object::

    {"team": "billing", "product": "router", "sentiment": "negative"}

=========  =====================================================================
field      what decides it
=========  =====================================================================
team       what the problem is: a double charge, refund or invoice -> billing;
           a device that will not turn on, crashes or shows an error -> technical;
           a late, lost or damaged parcel -> shipping; a password, login or email
           change -> account. The team's own name never appears in the text.
product    one of six products. About half the tickets name it with a plain word
           ("my wireless headphones", "the earbuds"), the other half only with a
           fictional *model code* ("my QM-9", "the Arc 7"). Which product a code
           stands for is fixed, but nothing in the text or the instruction says it.
sentiment  the writer's tone: angry or fed up (negative), matter-of-fact
           (neutral), or friendly and thankful despite the problem (positive).
=========  =====================================================================

Why this task: an instruct model follows the instruction out of the box, so it
gets the team and the sentiment of many tickets right zero-shot and the product
of the plainly named ones. The model codes it cannot know: the mapping from
"Arc 7" to headphones exists only in the training examples. So prompting alone
falls short of fine-tuning, and the gap is exactly the knowledge the training
data carries. The answer is scored exactly, field by field, with no judge model.

Tickets are short (15-45 words) so that a 135M-parameter model trains on a CPU.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, Features, Value

TEAMS = ("billing", "technical", "shipping", "account")
PRODUCTS = ("router", "camera", "headphones", "smartwatch", "speaker", "tablet")
SENTIMENTS = ("negative", "neutral", "positive")
FIELDS = ("team", "product", "sentiment")

# Two fictional model codes per product. They were chosen to give nothing away:
# no code contains a product word or hints at one, so only training examples
# can teach which product a code means.
MODEL_CODES = {
    "router": ("NX-40", "Kestrel 5"),
    "camera": ("TR-12", "Volta 3"),
    "headphones": ("QM-9", "Arc 7"),
    "smartwatch": ("KV-15", "Juno 2"),
    "speaker": ("RZ-11", "Ember 4"),
    "tablet": ("PX-8", "Nova 10"),
}
# The plain words and synonyms a customer uses instead of a code.
PRODUCT_WORDS = {
    "router": ("router", "Wi-Fi router", "mesh router", "wireless router"),
    "camera": ("camera", "digital camera", "action camera", "mirrorless camera"),
    "headphones": ("headphones", "wireless headphones", "earbuds", "headset"),
    "smartwatch": ("smartwatch", "smart watch", "fitness watch", "sports watch"),
    "speaker": ("speaker", "Bluetooth speaker", "portable speaker", "smart speaker"),
    "tablet": ("tablet", "Android tablet", "10-inch tablet", "kids' tablet"),
}
P_MODEL_CODE = 0.5  # share of tickets that name the product only by its code
DETERMINERS = ("my", "the", "my new", "the new")

MIN_WORDS, MAX_WORDS = 15, 45

# What goes wrong, per team. ``{item}`` is the product ("my NX-40", "the earbuds").
# The verbs are in the past tense or use "won't"/"can't", so they read right for
# singular ("my tablet") and plural ("my earbuds") products alike. The problems
# fit every product, so the problem never gives away which product a code means.
PROBLEMS = {
    "billing": (  # charged twice, refund missing, invoice wrong or missing
        "I was charged twice for {item}.",
        "my card shows two payments of {amount} for {item}, order {order}.",
        "you charged my card two times for {item}.",
        "I sent {item} back {when} and I'm still waiting for my refund.",
        "the refund for {item} never reached my bank.",
        "I returned {item} weeks ago but haven't seen the money yet.",
        "you promised to refund {amount} for {item} and nothing happened.",
        "the invoice for {item} says {amount}, which is not the price I paid.",
        "I never received an invoice for {item}, order {order}.",
        "I need a proper invoice with my company's VAT number for {item}.",
        "I was charged {amount} for {item} although the website showed a lower price.",
    ),
    "technical": (  # won't turn on, crashes, error codes
        "{item} won't turn on anymore.",
        "{item} stopped working after the last update.",
        "{item} froze {when} and won't respond to anything.",
        "{item} showed error {error} and then switched itself off.",
        "{item} crashed twice this morning and lost all my settings.",
        "since the firmware update, {item} won't connect to the app.",
        "I get error {error} every time I try to set up {item}.",
        "{item} died after two days of use.",
        "{item} overheated and shut down after a few minutes.",
        "I can't get {item} to connect to my phone; the app shows error {error}.",
    ),
    "shipping": (  # late, lost, damaged parcel
        "I ordered {item} {when} and nothing has arrived yet.",
        "the parcel with {item} is now more than a week late.",
        "tracking for order {order} ({item}) hasn't changed in five days.",
        "I was promised delivery of {item} by Friday and nothing has shown up.",
        "the tracking page says the parcel with {item} was delivered, but I never got it.",
        "the package with {item} seems to have been lost by {courier}.",
        "I think {courier} lost the box with {item}, order {order}.",
        "{item} arrived damaged, the box was completely crushed.",
        "{item} arrived with a cracked case and scratches all over.",
        "the parcel came soaking wet and {item} inside was ruined.",
    ),
    "account": (  # password, login, email change
        "I can't log in to register {item} because the password reset link never arrives.",
        "I forgot my password, so I can't reach the warranty page for {item}.",
        "my login stopped working {when} and I need it to activate {item}.",
        "the app for {item} says my password is wrong, but I just reset it.",
        "I need to change the email address linked to {item} to a different one.",
        "my profile still has my old email address, so the receipts for {item} go nowhere.",
        "I'm locked out after too many sign-in attempts and can't set up {item}.",
        "the two-factor codes never arrive, so I can't sign in to manage {item}.",
        "I changed my email {when} and now I can't sign in to use {item}.",
    ),
}

# An optional second sentence that adds a detail, like real tickets do.
DETAILS = {
    "billing": ("I have the bank statement if you need it.", "I paid by card {when}.",
                "The order number is {order}.", "I can send a screenshot of the payment."),
    "technical": ("I already tried a factory reset.", "I already restarted everything several times.",
                  "The firmware is up to date.", "I followed every step in the manual."),
    "shipping": ("The tracking number is {tracking}.", "The order number is {order}.",
                 "This was meant to be a birthday present.", "I paid for express delivery."),
    "account": ("I already tried the app and the website.", "I already reinstalled the app.",
                "My username is {user}.", "I tried two different browsers."),
}

# Tone. Negative and positive tickets carry at least one of these sentences;
# none of them hints at a team or a product.
OPENERS = {
    "negative": ("I'm really fed up.", "This is ridiculous.", "I am extremely disappointed.",
                 "Honestly, I'm furious.", "Unbelievable.", "I can't believe I have to write this.",
                 "What a mess."),
    "neutral": ("I'm writing about a recent purchase.", "Quick question.",
                "I have an issue with an order.", "Reaching out about the following."),
    "positive": ("Hope you're having a great day!", "First of all, I love your products!",
                 "Big fan of your shop here.", "I've been a happy customer for years.",
                 "Thanks for always being so helpful!"),
}
CLOSERS = {
    "negative": ("This is completely unacceptable.", "Sort it out today or I'm done with your shop.",
                 "I've wasted hours on this already.", "Worst experience I've ever had with an online shop.",
                 "Frankly, I expected much better.", "I want an answer today, not another template email.",
                 "Fix this. Now."),
    "neutral": ("Please let me know the next steps.", "Could you look into this?",
                "Let me know if you need anything else from me.", "Please advise.",
                "What should I do now?", "Waiting for your reply."),
    "positive": ("Thanks so much in advance!", "No rush at all, I really appreciate your help!",
                 "You've always been great, so I'm sure we'll sort it out. :)", "Have a lovely day!",
                 "Many thanks, you folks are the best!", "Otherwise I'm really happy, keep up the good work!"),
}

GREETINGS = ("Hi,", "Hello,", "Hi there,", "Good morning,", "Hey,", "Dear support,")
NAMES = ("Maria", "Tom", "Priya", "Jonas", "Aiko", "Daniel", "Fatima", "Luca", "Grace", "Omar")
SIGN_OFFS = ("- {name}", "Regards, {name}", "Best, {name}", "Thanks, {name}", "{name}")
WHEN = ("on Monday", "last Friday", "on March 3", "two weeks ago", "yesterday", "on the 12th")
ERRORS = ("E17", "E-204", "0x80F1", "43", "C-9")
COURIERS = ("the courier", "QuickPost", "the delivery company", "ParcelLine")
CURRENCIES = ("$", "€", "£")


@dataclass(frozen=True)
class Ticket:
    """One generated ticket and the three fields its answer is made of."""

    text: str
    team: str
    product: str
    sentiment: str


# ---------------------------------------------------------------------------
# Generating a ticket.


def _mention(rng: random.Random, product: str) -> str:
    """How the customer names the product: a model code half the time, else a plain word."""
    names = MODEL_CODES[product] if rng.random() < P_MODEL_CODE else PRODUCT_WORDS[product]
    return f"{rng.choice(DETERMINERS)} {rng.choice(names)}"


def _fill(template: str, rng: random.Random, item: str) -> str:
    """Fill a template's blanks. Unused values are drawn anyway, which keeps it simple."""
    return template.format(
        item=item,
        order=f"#{rng.randint(10000, 99999)}",
        tracking=f"QP{rng.randint(100000000, 999999999)}",
        amount=f"{rng.choice(CURRENCIES)}{rng.randint(19, 349)}.99",
        when=rng.choice(WHEN),
        error=rng.choice(ERRORS),
        courier=rng.choice(COURIERS),
        user=f"{rng.choice(NAMES).lower()}{rng.randint(1, 99)}",
    )


def _sentence_case(text: str) -> str:
    return text[0].upper() + text[1:]


def _after_greeting(sentence: str) -> str:
    """'Hi, my router ...': lower-case the first letter, except for the pronoun 'I'."""
    if sentence.startswith(("I ", "I'")):
        return sentence
    return sentence[0].lower() + sentence[1:]


def _tone(rng: random.Random, sentiment: str) -> tuple[str, str]:
    """An opening and a closing sentence (either may be empty) that set the tone.

    A negative or positive ticket always gets at least one, so its label can be
    read off the text; a neutral ticket gets only matter-of-fact ones, or none.
    """
    if sentiment == "neutral":
        opener = rng.choice(OPENERS["neutral"]) if rng.random() < 0.4 else ""
        closer = rng.choice(CLOSERS["neutral"]) if rng.random() < 0.6 else ""
        return opener, closer
    where = rng.choice(("opener", "closer", "both"))
    opener = rng.choice(OPENERS[sentiment]) if where in ("opener", "both") else ""
    closer = rng.choice(CLOSERS[sentiment]) if where in ("closer", "both") else ""
    return opener, closer


def _compose(rng: random.Random, team: str, product: str, sentiment: str) -> str:
    """One wording of a ticket with the given fields: [greeting] [opener] problem [detail] [closer] [name]."""
    item = _mention(rng, product)
    problem = _fill(rng.choice(PROBLEMS[team]), rng, item)
    detail = _fill(rng.choice(DETAILS[team]), rng, item) if rng.random() < 0.35 else ""
    opener, closer = _tone(rng, sentiment)
    sentences = [_sentence_case(s) for s in (opener, problem, detail, closer) if s]
    if rng.random() < 0.5:
        sentences[0] = f"{rng.choice(GREETINGS)} {_after_greeting(sentences[0])}"
    if rng.random() < 0.3:
        sentences.append(rng.choice(SIGN_OFFS).format(name=rng.choice(NAMES)))
    return " ".join(sentences)


def generate_ticket(rng: random.Random, team: str | None = None, product: str | None = None,
                    sentiment: str | None = None) -> Ticket:
    """Draw one ticket. Fields not given are drawn uniformly; then comes a wording for them.

    The wording is redrawn until it has ``MIN_WORDS``-``MAX_WORDS`` words. The
    fields are fixed before that, so the length limit cannot skew them.
    """
    for name, value, allowed in (("team", team, TEAMS), ("product", product, PRODUCTS),
                                 ("sentiment", sentiment, SENTIMENTS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {allowed} (or None to draw one); got {value!r}.")
    team = team or rng.choice(TEAMS)
    product = product or rng.choice(PRODUCTS)
    sentiment = sentiment or rng.choice(SENTIMENTS)
    while True:
        text = _compose(rng, team, product, sentiment)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return Ticket(text, team, product, sentiment)


# ---------------------------------------------------------------------------
# Prompt and target.

INSTRUCTION = (
    "Read the customer support ticket below and classify it. Answer with a JSON object with "
    "exactly these keys: "
    f'"team" (one of {", ".join(TEAMS)}), '
    f'"product" (one of {", ".join(PRODUCTS)}), '
    f'"sentiment" (one of {", ".join(SENTIMENTS)}). '
    "Reply with the JSON only."
)


def ticket_prompt(text: str) -> str:
    """The user message for one ticket: the instruction, then the ticket."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"ticket_prompt needs the ticket text, a non-empty string; got {text!r}.")
    return f"{INSTRUCTION}\n\nTicket: {text}"


def answer_json(ticket: Ticket) -> str:
    """The exact target string: compact JSON, keys always in the order of ``FIELDS``."""
    return json.dumps({field: getattr(ticket, field) for field in FIELDS})


# ---------------------------------------------------------------------------
# The data set.


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is a number of tickets, a non-negative integer (e.g. 100); got {value!r}.")


def load_tickets(seed: int = 0, n_train: int = 600, n_validation: int = 100, n_test: int = 200) -> DatasetDict:
    """The ticket task as a ``DatasetDict`` with train/validation/test splits.

    Columns: ``text`` (the ticket), ``prompt`` (the user message, see
    :func:`ticket_prompt`), ``answer`` (the target JSON, see :func:`answer_json`)
    and the three fields ``team``, ``product``, ``sentiment`` as plain strings.
    The same ``seed`` always gives the same tickets, and no text occurs twice,
    neither inside a split nor across splits. Inside each split every team,
    product and sentiment occurs equally often (up to one).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer (e.g. 0), got {seed!r}.")
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    for split, size in sizes.items():
        _check_size(f"n_{split}", size)
    # A string seed is hashed the same way in every Python run, and "tickets/"
    # keeps these draws apart from the review tasks of data.py.
    rng = random.Random(f"tickets/{seed}")
    features = Features({name: Value("string") for name in ("text", "prompt", "answer", *FIELDS)})

    seen: set[str] = set()  # every text so far, in any split
    splits = {}
    for split, size in sizes.items():
        tickets = []
        for fields in zip(*(_balanced(rng, values, size) for values in (TEAMS, PRODUCTS, SENTIMENTS))):
            ticket = generate_ticket(rng, *fields)
            while ticket.text in seen:  # rare: redraw the wording, keep the fields
                ticket = generate_ticket(rng, *fields)
            seen.add(ticket.text)
            tickets.append(ticket)
        columns = {
            "text": [t.text for t in tickets],
            "prompt": [ticket_prompt(t.text) for t in tickets],
            "answer": [answer_json(t) for t in tickets],
            **{field: [getattr(t, field) for t in tickets] for field in FIELDS},
        }
        splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)


def _balanced(rng: random.Random, values: tuple[str, ...], n: int) -> list[str]:
    """``n`` values in random order, each one equally often (up to one more or less).

    Uniform draws can leave a 200-ticket split with twice as many tickets for
    one product as for another; a shuffled deck keeps every split balanced.
    Each field gets its own deck, so the fields stay independent of one another.
    """
    deck = [values[i % len(values)] for i in range(n)]
    rng.shuffle(deck)
    return deck


def few_shot_examples(data: DatasetDict, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` (prompt, answer) pairs from the *training* split, for a few-shot prompt.

    The examples take turns over the teams (one billing, one technical, ...), so
    that even a small ``k`` shows the model several kinds of problem. Only the
    training split is used: showing validation or test tickets would leak them.
    """
    if "train" not in data:
        raise KeyError(f"few_shot_examples draws from the 'train' split; this data has {list(data)}.")
    train = data["train"]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(train):
        raise ValueError(f"k is the number of examples, an integer from 0 to {len(train)} (the training size); "
                         f"got {k!r}.")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    teams = train["team"]
    by_team = {team: [i for i in order if teams[i] == team] for team in TEAMS}
    picked: list[int] = []
    while len(picked) < k:  # one per team in turn, while a team has examples left
        for team in TEAMS:
            if by_team[team] and len(picked) < k:
                picked.append(by_team[team].pop(0))
    return [(train[i]["prompt"], train[i]["answer"]) for i in picked]


# ---------------------------------------------------------------------------
# Scoring.


def parse_answer(text: str) -> dict | None:
    """The first JSON value in ``text`` that starts with ``{`` or ``[``, if it is an object.

    Models often wrap the answer ("Sure! Here it is: {...}"), so the text around
    it is skipped. A list, or text with no valid JSON at all, gives ``None``: the
    answer is not in the requested format.
    """
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _checked_references(predictions: Sequence[str], references: Sequence[dict] | Dataset) -> list[dict]:
    """The references as dicts of the fields, after checking they pair one-to-one with the predictions."""
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of generated strings, one per ticket, not a single string.")
    if isinstance(references, Dataset):
        references = [{field: row[field] for field in FIELDS} for row in references]
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references: "
                         "generate exactly one answer per reference ticket, in the same order.")
    if len(predictions) == 0:
        raise ValueError("Nothing to score: predictions and references are empty.")
    for reference in references:
        missing = [field for field in FIELDS if field not in reference]
        if missing:
            raise KeyError(f"A reference lacks the field(s) {missing}; each needs {list(FIELDS)}.")
    return list(references)


def correct_per_ticket(predictions: Sequence[str], references: Sequence[dict] | Dataset) -> dict[str, list[bool]]:
    """For every ticket: did the answer parse, is each field right, are all three right?

    An answer that does not parse counts as wrong for every field. Values must match
    exactly: "Billing" is not "billing".
    """
    references = _checked_references(predictions, references)
    parsed = [parse_answer(p) for p in predictions]
    right = {"parse_rate": [p is not None for p in parsed]}
    for field in FIELDS:
        right[field] = [p is not None and p.get(field) == r[field] for p, r in zip(parsed, references)]
    right["all_fields"] = [all(right[field][i] for field in FIELDS) for i in range(len(parsed))]
    return right


def score_answers(predictions: Sequence[str], references: Sequence[dict] | Dataset) -> dict[str, float]:
    """Exact-match scores of generated answers against the true fields.

    Returns ``parse_rate`` (share of answers holding a JSON object), one accuracy
    per field in ``FIELDS`` and ``all_fields`` (share with all three right), each the
    mean of :func:`correct_per_ticket`.
    """
    return {name: sum(flags) / len(flags) for name, flags in correct_per_ticket(predictions, references).items()}
