"""Write notebooks/07_peft_on_a_language_model.ipynb (unexecuted) from the cells below.

``python scripts/build_lesson_07.py``, then ``python scripts/execute_notebooks.py
notebooks/07_peft_on_a_language_model.ipynb`` stores it executed; ``--markdown-only`` copies changed prose
into the executed notebook (its code cells must be unchanged).
"""

from __future__ import annotations

import notebook_builder
from course_meta import LLM_COLAB_NOTE, colab_badge

LESSON = "notebooks/07_peft_on_a_language_model.ipynb"

CELLS: list[tuple[str, str]] = [
("md", f"""# Lesson 07 — PEFT on a language model that writes

{colab_badge(LESSON)}

**You will learn to**
- load a real instruct language model offline (SmolLM2-135M-Instruct) and read what it reads: the chat template;
- turn a task into *generation* — a support ticket in, a JSON answer out — and score it exactly: parse rate and
  exact match per field;
- measure what a practitioner tries first, zero-shot and few-shot prompting, before any fine-tuning;
- build a training batch for a causal LM: loss on the answer tokens only, left padding;
- write LoRA into the LLM's attention yourself and check it against the package on logits *and* gradients;
- train it live, score it against prompting, merge it for serving, and check it against `peft` on the same weights;
- read the stored comparison, on the tickets and on real SST-2 phrases beside lesson 06's encoder, with an interval
  for every difference;
- attach the course's other methods to the LLM (soft prompt, prefix, adapters);
- count what training an LLM costs in memory (the activations dominate) and what serving costs: time per token
  and key/value cache, per method, with a control beside every timing.

**Prerequisites:** lesson 05 (LoRA); lessons 01 and 03 for the other methods in section 9.

**Runtime (measured):** see the README syllabus.

The comparisons of sections 7 and 8 (up to five methods, each at a learning rate chosen on validation, three seeds, and
prompting) are precomputed (`make precompute`, jobs `llm_tickets` and `llm_sst2`; the sections print how long they
took on a 2-core CPU); this lesson re-trains one stored configuration live.

{LLM_COLAB_NOTE}"""),
("code", """import copy
import warnings

import matplotlib.pyplot as plt
import torch
from torch import nn

from peft_teach import llm, llm_experiments, llm_speed, precomputed, protocol, tickets
from peft_teach.checks import compare, expect_close
from peft_teach.measure import beyond_control, control_note, count_parameters, format_mb, training_memory
from peft_teach.methods import adapters, lora, prefix, prompts
from peft_teach.methods.inject import find_modules, replace_module
from peft_teach.train import enable_determinism, set_seed

set_seed(0)
enable_determinism()
tokenizer = llm.load_llm_tokenizer()  # the packaged SmolLM2: no download, sha256 checked
model = llm.load_llm()                # its 4-bit weights, dequantized to float32
config = model.config
print(f"{type(model).__name__}: {count_parameters(model):,} parameters")
print(f"{config.num_hidden_layers} layers, hidden size d = {config.hidden_size}, "
      f"{config.num_attention_heads} query heads and {config.num_key_value_heads} key/value heads of size {config.head_dim}, "
      f"vocabulary {config.vocab_size:,}, tied input/output embeddings: {config.tie_word_embeddings}")"""),
("md", """## 1. What an instruct model reads

SmolLM2-135M-Instruct is a Llama-architecture decoder (Allal et al., 2025), 30 times smaller than the smallest
Llama 3. It was trained on *conversations*, written in a fixed text format, the **chat template**: each turn opens
with `<|im_start|>` and a role, and closes with `<|im_end|>`. To ask it something we write our question in that
format and end with an open assistant turn; the model continues from there, and stops when it writes `<|im_end|>`.
The tokenizer stores the template, so `llm.chat_text` builds it for us. Without a system message the template adds
its own default one."""),
("code", """question = "What is the capital of France?"
print(llm.chat_text(tokenizer, question))
answer = llm.generate(model, tokenizer, [question], max_new_tokens=20)[0]
print("answer:", answer)
assert "Paris" in answer"""),
("md", """Three details of the tokenizer matter for everything below:

- **`<|im_end|>` is the end-of-sequence token.** Generation stops on it, so a fine-tuned answer must end with it.
- **Padding uses the same token** (the model has no separate pad token). That is harmless: padded positions are
  masked out of attention and out of the loss.
- **Padding goes on the left.** A decoder writes at the end of a row. If a batch of prompts of different lengths is
  padded on the left, every prompt ends in the same column and all rows continue from there."""),
("code", """print(f"eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), pad {tokenizer.pad_token!r}, "
      f"padding side {tokenizer.padding_side!r}")
batch = tokenizer([llm.chat_text(tokenizer, "Hi!"), llm.chat_text(tokenizer, question)], padding=True,
                  add_special_tokens=False, return_tensors="pt")
print("attention mask of a batch of two prompts:")
print(batch["attention_mask"][:, :12], "...")
assert tokenizer.padding_side == "left" and batch["attention_mask"][:, -1].all()"""),
("md", """## 2. A task scored exactly: support tickets to JSON

A customer writes to support; the answer routes the ticket. The model must reply with one JSON object naming the
**team** (billing, technical, shipping, account), the **product** (one of six) and the customer's **sentiment**.
`peft_teach.tickets` generates the tickets from a seed, as the course's reviews are generated. Two things make
the task worth fine-tuning:

- the team follows from the *problem* ("charged twice" → billing), never from the team's name;
- about half the tickets name the product only by a model code ("my NX-40"), and which code belongs to which
  product can only be learned from examples.

Generation makes scoring stricter than classification: an answer counts only if it **parses** as JSON and each
field matches exactly."""),
("code", """data = tickets.load_tickets()
print({split: len(rows) for split, rows in data.items()})
for row in data["test"].select(range(3)):
    print(f"- {row['text']}\\n  -> {row['answer']}")
print()
print("the user message of the first test ticket:")
print(data["test"][0]["prompt"])"""),
("code", """examples = ['{"team": "billing", "product": "router", "sentiment": "negative"}',    # all right
            'Sure! {"team": "billing", "product": "camera", "sentiment": "negative"}',  # product wrong
            '{"team": billing}']                                                       # does not parse
references = [{"team": "billing", "product": "router", "sentiment": "negative"}] * 3
print({name: round(value, 3) for name, value in tickets.score_answers(examples, references).items()})"""),
("md", """## 3. Prompting first: zero-shot and few-shot

Before training anything, a practitioner asks the model. **Zero-shot**: the instruction and the ticket, nothing
else. **Few-shot** (in-context learning, Brown et al., 2020): the same conversation preceded by solved tickets
from the training split, as earlier user/assistant turns. We score zero-shot live on the first 32 test tickets;
the full test split (200 tickets) and few-shot were run by the precompute job with the same code."""),
("code", """N_LIVE = llm_experiments.LIVE["test_examples"]
live_test = data["test"].select(range(N_LIVE))
zero_live = llm_experiments.answer_and_score(model, tokenizer, live_test)
stored = precomputed.load("llm_tickets")["runs"]
zero_stored = stored["zero_shot"]["test"]
for answer in zero_live["answers"][:3]:
    print(repr(answer))"""),
("code", """# NBVAL_IGNORE_OUTPUT
def score_line(name, scores):
    fields = "  ".join(f"{field} {scores[field]:.3f}" for field in ("parse_rate", *tickets.FIELDS, "all_fields"))
    return f"{name:<34} {fields}"


print(score_line(f"zero-shot, live ({N_LIVE} tickets)", zero_live["scores"]))
same = sum(a == b for a, b in zip(zero_live["answers"], zero_stored["answers"][:N_LIVE]))
print(f"live zero-shot answers identical to the stored run's: {same} of {N_LIVE}")"""),
("code", """expect_close("zero-shot parse rate, live vs stored", zero_live["scores"]["parse_rate"],
             tickets.score_answers(zero_stored["answers"][:N_LIVE], live_test)["parse_rate"], tol=0.07)"""),
("code", """few_shot = stored[f"few_shot_k{llm_experiments.FEW_SHOT}"]["test"]
print(score_line("zero-shot (stored, 200 tickets)", zero_stored["scores"]))
print(score_line(f"{llm_experiments.FEW_SHOT}-shot (stored, 200 tickets)", few_shot["scores"]))
shots = tickets.few_shot_examples(data, llm_experiments.FEW_SHOT)
lengths = {k: len(tokenizer(llm.chat_text(tokenizer, data["test"][0]["prompt"], shots[:k]))["input_ids"])
           for k in (0, llm_experiments.FEW_SHOT)}
print(f"prompt length in tokens: zero-shot {lengths[0]}, {llm_experiments.FEW_SHOT}-shot {lengths[llm_experiments.FEW_SHOT]}")
print("a few-shot answer:", repr(few_shot["answers"][0]))"""),
("md", """**Reading.** Zero-shot, the 135M-parameter model mostly does not even produce the format: it chats, or echoes
the key names. Three solved examples teach it the format (every answer parses) but hardly the content: the
fields sit near chance (1/4 for the team, 1/6 for the product, 1/3 for the sentiment). The few-shot prompt is
also about four times longer, which every request pays for. A larger model would do better with prompting alone;
a small model that must run cheaply is exactly where PEFT earns its place."""),
("md", """## 4. The training batch: loss on the answer only

A causal LM is trained to predict each next token. For a task we want it to learn to **write the answer**, not to
reproduce the ticket or the template. So the labels copy the input ids on the answer tokens (and the closing
`<|im_end|>`), and are `-100` everywhere else: PyTorch's cross-entropy ignores that value. `llm.collate_lm` builds
such a batch, padded on the left like a generation batch."""),
("code", """batch = llm.collate_lm(tokenizer, [data["train"][0], data["train"][1]])
print({key: tuple(value.shape) for key, value in batch.items()})
row = 1 if (batch["attention_mask"][1] == 0).any() else 0
print(f"row {row}: {int((batch['attention_mask'][row] == 0).sum())} padding tokens on the left, "
      f"{int((batch['labels'][row] != -100).sum())} tokens with a label")
print("what the loss sees:", repr(tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])))
assert tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100]) == data["train"][0]["answer"] + "<|im_end|>\""""),
("md", """The logits at position *t* predict the token at *t* + 1, so the loss compares logits `[:, :-1]` with labels
`[:, 1:]`. Because left padding puts every answer at the end of its row, only the last few positions carry a
label: `llm.answer_loss` asks the model for those positions' logits alone (`logits_to_keep`). The 49,152-way output
layer is the single largest matrix product of this model, so skipping it for the prompt roughly halves a training
step on a CPU. The result must equal the plain loss over all positions:"""),
("code", """with torch.no_grad():  # positions skip the left padding, as generate numbers them (llm.position_ids)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=llm.position_ids(batch["attention_mask"])).logits
    full_loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                            ignore_index=-100)
    fast_loss = llm.answer_loss(model, batch)
compare("loss: answer positions only", fast_loss, full_loss, atol=1e-5, report_exact=False)  # two orders of sums
print(f"loss of the untrained model on these answers: {full_loss.item():.2f}")"""),
("md", """## 5. Write LoRA into the LLM yourself

The layer is lesson 05's, h = W0 x + (α/r) B A x, with B = 0 at the start. What changes on an LLM is where it
goes and what it costs. SmolLM2 uses **grouped-query attention**: 9 query heads share 3 key/value heads, so `q_proj`
maps 576 → 576 but `v_proj` maps 576 → 192. LoRA's r (d_in + d_out) per matrix follows the shapes.

Write the layer and the function that puts it into every chosen projection of the model."""),
("code", """class MyLoRALinear(nn.Module):
    \"\"\"A frozen linear layer plus (alpha / r) * B @ A, with B = 0 at the start.\"\"\"

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


def add_my_lora(model: nn.Module, targets: tuple[str, ...], r: int = 8, alpha: float = 16, seed: int = 0) -> dict:
    \"\"\"Freeze the model; wrap every linear layer named in ``targets``; return the new layers by name.\"\"\"
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    added = {}
    for name, layer in find_modules(model, targets, module_type=nn.Linear).items():  # model order
        added[name] = MyLoRALinear(layer, r, alpha, generator)
        replace_module(model, name, added[name])
    return added"""),
("code", """base_model = copy.deepcopy(model)  # untouched, for the checks below and for peft in section 6
with torch.no_grad():
    base_logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits

mine = add_my_lora(model, ("q_proj", "v_proj"))
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
q, v = model.model.layers[0].self_attn.q_proj, model.model.layers[0].self_attn.v_proj
per_layer = 8 * (q.base_layer.in_features + q.base_layer.out_features) + 8 * (v.base_layer.in_features + v.base_layer.out_features)
print(f"LoRA layers: {len(mine)}; trainable parameters {trainable:,} = 30 layers x {per_layer:,} "
      f"({100 * trainable / count_parameters(base_model):.2f} % of the model)")
assert trainable == 30 * per_layer == lora.lora_parameter_count(base_model, ("q_proj", "v_proj"), r=8)
with torch.no_grad():
    compare("B = 0: LoRA model vs base", model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
            base_logits, atol=0)"""),
("md", """B = 0 makes the model exactly the base model, which proves little about the update itself. So give B random
values, build the *package's* LoRA on a copy of the base model with the same A and B, and compare the two on a
real batch: the logits, and the gradients of the loss with respect to every A and B. Gradients catch what outputs
cannot, such as a `.detach()` that would keep the layer from ever training."""),
("code", """reference = copy.deepcopy(base_model)
theirs = lora.add_lora(reference, ("q_proj", "v_proj"), r=8, alpha=16)
generator = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, layer in mine.items():
        layer.lora_B.copy_(0.01 * torch.randn(layer.lora_B.shape, generator=generator))
        theirs[name].lora_A.copy_(layer.lora_A)
        theirs[name].lora_B.copy_(layer.lora_B)

losses = {}
for label, candidate in (("mine", model), ("package", reference)):
    candidate.zero_grad()
    losses[label] = llm.answer_loss(candidate, batch)
    losses[label].backward()
compare("loss", losses["mine"].detach(), losses["package"].detach(), atol=1e-5)
for matrix in ("lora_A", "lora_B"):
    compare(f"gradients of every {matrix}", torch.cat([getattr(m, matrix).grad.flatten() for m in mine.values()]),
            torch.cat([getattr(theirs[n], matrix).grad.flatten() for n in mine]), atol=1e-6)"""),
("md", """## 6. Train it, score it, merge it, check it against `peft`

From here on we use the package's `add_lora`, which is what you just wrote plus the verbs (save, load, merge,
remove). The live run trains LoRA (r = 8 on q and v) for only 6 steps of 8 tickets (the comparison trains
100), at the rate its grid chose for LoRA (section 7). It uses `llm.train_lm`: the course's loop (AdamW, linear
warm-up and decay, seeded order) around `answer_loss`. The precompute job ran exactly this configuration; we check
that the live run reproduces it."""),
("code", """model = copy.deepcopy(base_model)
del reference
live = llm_experiments.LIVE
lora.add_lora(model, ("q_proj", "v_proj"), r=8, alpha=16, seed=live["seed"])
history = llm.train_lm(model, tokenizer, data["train"], steps=live["steps"], lr=live["lr"],
                       batch_size=live["batch_size"], seed=live["seed"])
after = llm_experiments.answer_and_score(model, tokenizer, live_test)
stored_live = stored["live"]
print(f"trained {live['steps']} steps at lr {live['lr']:g}; {history.trainable_parameters:,} trainable parameters")"""),
("code", """# NBVAL_IGNORE_OUTPUT
print(f"one step: {history.seconds_per_step:.1f} s on this machine")
print(score_line(f"zero-shot, live ({N_LIVE} tickets)", zero_live["scores"]))
print(score_line(f"LoRA {live['steps']} steps, live", after["scores"]))
print(score_line(f"LoRA {live['steps']} steps, stored run", stored_live["test"]["scores"]))"""),
("code", """fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(1, len(history.train_loss) + 1), history.train_loss, label="live run")
ax.plot(range(1, len(stored_live["train_loss"]) + 1), stored_live["train_loss"], linestyle="--", label="stored run")
ax.set_xlabel("step (8 tickets)")
ax.set_ylabel("loss on the answer tokens")
ax.set_title("LoRA on SmolLM2, live")
ax.legend()
plt.show()
for field in ("all_fields", "team", "product", "sentiment"):
    expect_close(f"live LoRA, {field}", after["scores"][field], stored_live["test"]["scores"][field], tol=0.07)
expect_close("live LoRA, last loss", history.train_loss[-1], stored_live["train_loss"][-1], tol=0.05)"""),
("md", """**Merging for serving.** `merge_lora` folds (α/r) BA into the frozen weights: the served model has the base
model's shape and speed. Greedy decoding must then write the same tokens. The logits are not bit-identical:
W0 x + (α/r) BAx and (W0 + (α/r) BA) x round differently, and 30 layers compound it, so we compare them at a
tolerance of 10⁻³ on logits whose size is in the tens."""),
("code", """some = data["test"].select(range(8))["prompt"]
inputs = tokenizer([llm.chat_text(tokenizer, p) for p in some], padding=True, add_special_tokens=False,
                   return_tensors="pt")
with torch.no_grad():
    unmerged_logits = model(**inputs).logits
unmerged = llm.generate(model, tokenizer, some, max_new_tokens=llm_experiments.MAX_NEW_TOKENS)
lora.merge_lora(model)
with torch.no_grad():
    compare("merged vs unmerged logits", model(**inputs).logits, unmerged_logits, atol=1e-3)
merged = llm.generate(model, tokenizer, some, max_new_tokens=llm_experiments.MAX_NEW_TOKENS)
print(f"identical greedy answers: {sum(a == b for a, b in zip(merged, unmerged))} of {len(some)}")
assert merged == unmerged
_ = lora.unmerge_lora(model)"""),
("md", """**The same weights in `peft`.** `peft` is what you would use in production. Give its LoRA our trained A and B
(on an untouched copy of the base model) and it must compute the same function: the same logits, the same answers."""),
("code", """from peft import LoraConfig, get_peft_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # peft's notes about transformers 5 attributes; harmless here
    peft_model = get_peft_model(copy.deepcopy(base_model), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                      target_modules=["q_proj", "v_proj"]))
with torch.no_grad():
    for name, layer in lora.lora_layers(model).items():
        peft_layer = peft_model.base_model.model.get_submodule(name)
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    compare("peft vs ours: logits", peft_model(**inputs).logits, unmerged_logits, atol=1e-5)
peft_answers = llm.generate(peft_model, tokenizer, some, max_new_tokens=llm_experiments.MAX_NEW_TOKENS)
print(f"identical greedy answers, peft vs ours: {sum(a == b for a, b in zip(peft_answers, unmerged))} of {len(some)}")
assert peft_answers == unmerged
del peft_model"""),
("md", """## 7. The comparison under one recipe (stored)

Twenty steps are a demonstration, not a budget. The precompute job trained each method under one recipe: the same
600 training tickets, batch 8, 100 steps, greedy decoding, and the full test split of 200 tickets. Each method's
learning rate was picked on the validation split (seed 0, all fields right) from a grid that starts with two rates
and grows past an edge winner, as the encoder lessons' protocol does; then seeds 1 and
2 ran at that rate. The soft prompt starts from the embeddings of the instruction's tokens (Lester et al.'s "text"
initialisation); the prefix has 10 slots per layer; the adapter is section 9's Pfeiffer adapter (m = 36 after every
feed-forward block); Prefix-Tuning+ is lesson 04's, on the decoder. The table reads the stored runs; a method whose runs are not
all stored says so."""),
("code", """summary = llm_experiments.summarize(stored)  # each method's rate chosen on validation, its 3 seeds at that rate
columns = ("parse", *tickets.FIELDS, "all fields", "final loss")
print(f"{'method':<20} {'params':>9} {'lr':>6}  " + "  ".join(f"{c:>13}" for c in columns))
for label, result in (("zero-shot", zero_stored), (f"{llm_experiments.FEW_SHOT}-shot", few_shot)):
    print(f"{label:<20} {0:>9} {'-':>6}  " + "  ".join(f"{result['scores'][f]:>13.3f}" for f in llm_experiments.SCORE_FIELDS))
for method, row in summary.items():
    if row is None:
        print(f"{llm_experiments.METHODS[method].label:<20} not yet stored (python scripts/precompute.py llm_tickets)")
        continue
    cells = [f"{mean:.3f} ± {std:.3f}" for mean, std in (*row["test"].values(), row["final_loss"])]
    print(f"{row['label']:<20} {row['trainable']:>9,} {row['lr']:>6g}  " + "  ".join(f"{c:>13}" for c in cells))
trained = [row["trainable"] for row in summary.values() if row is not None]
print(f"trainable parameters, largest / smallest: {max(trained) / min(trained):.0f}x")
print("validation, all fields right, per rate tried (seed 0):")
for row in summary.values():
    if row is not None:
        print(f"  {row['label']:<20} " + "   ".join(f"lr {lr:g}: {score:.3f}" for lr, score in row["grid"].items()))"""),
("code", """fig, ax = plt.subplots(figsize=(6, 3))
for row in summary.values():
    if row is not None:
        ax.plot(range(1, len(row["loss_curve"]) + 1), row["loss_curve"], label=row["label"])
ax.set(xlabel="step", ylabel="training loss (answer tokens)", yscale="log",
       title="Stored training loss, mean over 3 seeds at each method's rate")
ax.legend()
plt.show()"""),
("md", """Every number above is a mean over three seeds with its sample standard deviation, except prompting, which has
no seed. A difference between two rows is only worth reading with its uncertainty, which here has two sources: the
seeds, and the 200 test tickets, a sample of all the tickets we could have drawn. `llm_experiments.difference_interval`
resamples both (a seed of each side, and the same tickets for both sides, drawn with replacement) and reports a 95 %
interval for the difference of all-fields scores. An interval that contains 0 means "not separable here"."""),
("code", """print("all three fields right, first minus second: 95 % interval over seeds and test tickets")
for pair, difference, lower, upper, verdict in llm_experiments.differences(
        summary, (f"{llm_experiments.FEW_SHOT}-shot", few_shot["answers"]), data["test"], "all_fields"):
    print(f"  {pair:<38} {difference:+.3f}  [{lower:+.3f}, {upper:+.3f}]  {verdict}")"""),
("md", """**Reading.** Under one recipe, every trained method beats prompting; the intervals above say so, not only
the means. The bottleneck adapter (1,262,520 parameters) gets all three fields right on 0.998 ± 0.003 of the test
tickets and LoRA on q and v (460,800 parameters, 0.34 % of the model) on 0.980 ± 0.018. Their difference, −0.018
with an interval from −0.060 to +0.005, contains 0: the adapter and LoRA are not separable here. Prefix tuning
(115,200 parameters) reaches 0.655 ± 0.079, the soft prompt (11,520 parameters) 0.240 ± 0.023, and 3-shot prompting
0.020. Prefix-Tuning+ (1,105,920 parameters, one 64 × 64 memory per head and layer) reaches 0.643 ± 0.416: its
three seeds disagree, so its intervals are wide; it is behind LoRA and the adapter, and not separable here from
the prefix or the soft prompt. Every other pair is separable. Every trained answer parses. The fields tell the story of the task: the
team and the sentiment follow from the wording, while the product needs the model codes, which only the training
tickets teach. The adapter and LoRA learn the codes (product right on 1.000 ± 0.000 and 0.997 ± 0.003); for the
prefix (0.718 ± 0.078) and the soft prompt (0.550 ± 0.013) the product is the field they miss most.

Each chosen rate sits inside its grid: the grid started with two rates and grew by a half-decade step while the
best one was at an edge (LoRA tried 1e-3 to 3e-2 and collapsed at 3e-2; the prefix tried 1e-2 to 3e-1; the soft
prompt 3e-3 to 1e-1; the adapter 1e-3 to 1e-2, tied at 3e-3 and 1e-2, and the tie goes to the smaller rate;
Prefix-Tuning+ 3e-4 to 1e-2, collapsing at 1e-2). Read
the table as a comparison at one budget (100 steps), not a final verdict on the methods. The parameter budgets
differ by a factor of 110, and the methods that sit in front of the input or in the attention fit the training
tickets less well: their losses end higher (final training loss 0.041 ± 0.020 for the prefix, 0.157 ± 0.022 for
the soft prompt, 0.054 ± 0.079 for Prefix-Tuning+, 0.002 ± 0.001 for LoRA, 0.001 ± 0.001 for the adapter; the
curves above). On the ticket task a
prefix and a prompt are cheap to store (lesson 06 counted the disk per task), but at this budget they are not
enough."""),
("md", """## 8. Real phrases: SST-2 as generation (stored)

The tickets are generated. Does the picture hold on real text? Lesson 06 trained every method on the encoder with
real SST-2 movie-review phrases; here the LLM gets the same phrases as a generation task. The user message is an
instruction and the phrase, the answer one word: "positive" or "negative". An answer counts as parsed when it holds
exactly one of the two words, and as right when that word is the label, so "The review is positive." is right too.
The data are lesson 06's: its 1,200 training phrases, 500 validation and 1,000 test phrases. The recipe is the
tickets': 100 steps of 8 phrases, three seeds, and each method's learning rate chosen on validation from a grid that
grows by a half-decade step while the best rate sits at an edge (the grids are printed below the table).

Besides zero-shot and 3-shot prompting, one baseline needs neither training nor parsing: which of the two words the
base model finds likelier as the first token of its answer (`llm.label_word_scores`). It asks what the model knows
about the phrase once its phrasing is out of the way."""),
("code", """from peft_teach import sst2_generation

sst2_stored = precomputed.load("llm_sst2")
sst2_runs, SST2 = sst2_stored["runs"], llm_experiments.SST2
sst2_test = SST2.load()["test"]
sst2_summary = llm_experiments.summarize(sst2_runs, SST2)
print(f"stored: {sst2_stored['seconds'] / 3600:.1f} hours on {sst2_stored['machine']['threads']} threads")
print(f"{'SST-2, 1,000 test phrases':<26} {'params':>9} {'lr':>6}  {'parse':>13}  {'accuracy':>13}")
shots = f"few_shot_k{llm_experiments.FEW_SHOT}"
for label, key in (("zero-shot", "zero_shot"), (f"{llm_experiments.FEW_SHOT}-shot", shots)):
    scores = sst2_runs[key]["test"]["scores"]
    print(f"{label:<26} {0:>9} {'-':>6}  {scores['parse_rate']:>13.3f}  {scores['accuracy']:>13.3f}")
print(f"{'zero-shot, likelier word':<26} {0:>9} {'-':>6}  {'-':>13}  "
      f"{sst2_runs['zero_shot_label_words']['accuracy']:>13.3f}")
for method, row in sst2_summary.items():
    if row is None:
        print(f"{SST2.methods[method].label:<26} not yet stored (python scripts/precompute.py llm_sst2)")
        continue
    cells = [f"{mean:.3f} ± {std:.3f}" for mean, std in row["test"].values()]
    print(f"{row['label']:<26} {row['trainable']:>9,} {row['lr']:>6g}  " + "  ".join(f"{c:>13}" for c in cells))
positive = sum(sst2_test["label"]) / len(sst2_test)
print(f"always answering 'positive' scores {positive:.3f}")
for method, row in sst2_summary.items():  # validation accuracy per rate: the chosen one must not sit at an edge
    if row is not None:
        print(f"{row['label']:<18} validation by lr: " + ", ".join(f"{lr:g} {acc:.3f}" for lr, acc in row["grid"].items()))
for label, key in (("zero-shot", "zero_shot"), (f"{llm_experiments.FEW_SHOT}-shot", shots)):
    said = [sst2_generation.answer_label(answer) for answer in sst2_runs[key]["test"]["answers"]]
    print(f"{label} answers 'positive' to {said.count('positive')} of {len(said)} phrases")"""),
("code", """print("accuracy, first minus second: 95 % interval over seeds and test phrases")
for pair, difference, lower, upper, verdict in llm_experiments.differences(
        sst2_summary, (f"{llm_experiments.FEW_SHOT}-shot", sst2_runs[shots]["test"]["answers"]), sst2_test,
        "accuracy", SST2):
    print(f"  {pair:<38} {difference:+.3f}  [{lower:+.3f}, {upper:+.3f}]  {verdict}")
encoder = protocol.summarize(precomputed.load("protocol_sst2"))
print("lesson 06, the encoder (MiniLM, 22.7M parameters), on the same 1,000 test phrases:")
for method in ("full_ft", "lora", "prefix", "soft_prompt", "head_only"):
    print(f"  {encoder[method]['label']:<24} {encoder[method]['mean']:.3f} ± {encoder[method]['std']:.3f}")
if sst2_summary["lora"] is not None:  # across the two models: seeds and test phrases, unpaired (lesson 06)
    llm_lora = [run["test"]["scores"]["accuracy"] for run in sst2_summary["lora"]["runs"]]
    for method in ("full_ft", "lora"):
        difference, lower, upper = protocol.difference_interval(llm_lora, encoder[method]["test"], len(sst2_test))
        print(f"SmolLM2 LoRA - MiniLM {encoder[method]['label']:<17} {difference:+.3f}  [{lower:+.3f}, {upper:+.3f}]  "
              f"{protocol.verdict(lower, upper)}")"""),
("md", """**Reading.** Untrained, the model hardly reads the phrase. Zero-shot it answers "positive" to 982 of 1000
phrases, with three examples to 998, so its accuracy (0.564 and 0.563) is the share of positive phrases (0.561).
Even the likelier first word scores only 0.569: the lean towards "positive" is in the model's probabilities, not
only in how it phrases an answer.

One hundred steps change that. Every method beats 3-shot prompting by a separable margin, from +0.263 (soft
prompt) to +0.313 (LoRA). LoRA (0.876 ± 0.012) beats the prefix (+0.038 [+0.010, +0.064]) and the soft prompt
(+0.050 [+0.019, +0.083]); the prefix and the soft prompt are not separable here. The order is the tickets' order,
but the gaps are far smaller: a label that is one of two words is an easier target than three fields with codes,
and a prompt in front of the input can steer a model towards one of two words it already knows. Every chosen rate
sits inside its grid, and the highest rates (0.03 for LoRA, 0.3 for the prefix) collapse to the always-positive
0.528 on validation.

Across the two models, SmolLM2 with LoRA and MiniLM fully fine-tuned are not separable here (+0.031 [-0.007,
+0.067]); SmolLM2 with LoRA beats MiniLM with LoRA (+0.052 [+0.012, +0.090]). Read that as how far each model gets
on the same phrases under its own recipe, not as a verdict on a method: the models differ in size (134,515,008
parameters against 22.7M), in pretraining and in the head (a generated word against a trained classifier), and
the stored LLM runs took 2.0 hours on two CPU threads."""),
("md", """## 9. Every method of the course on the LLM

The methods of lessons 01–05 attach to the LLM with the same verbs they use on the encoder. What changes:

- **Soft prompt** (Lester et al., 2021): l vectors in front of the embedded input, l · d parameters. Inside
  `generate` the prompt enters once, in the first forward; every later step sees it through the key/value cache.
- **Prefix tuning** (Li & Liang, 2021): l keys and values in every layer's attention. With grouped-query
  attention there is one prefix per *key/value head*: 2 · L · l · n_kv · d_head = 2 · 30 · l · 3 · 64, a third of
  the 2 · L · l · d a model without grouped queries would need.
- **Bottleneck adapters** (Houlsby et al., 2019): a small MLP after the feed-forward block of each layer (Pfeiffer
  placement), 2md + m + d per layer. Several adapters sit on one frozen model and are switched per request.

Each one starts as a function of the base model (the adapter and LoRA *exactly*), generates through the usual
`generate`, and leaves the base model bit for bit when removed."""),
("code", """probe = {k: inputs[k] for k in ("input_ids", "attention_mask")}
with torch.no_grad():
    base_probe = base_model(**probe).logits
L, n_kv, d_head, d = config.num_hidden_layers, config.num_key_value_heads, config.head_dim, config.hidden_size

candidate = copy.deepcopy(base_model)
prompts.add_soft_prompt(candidate, length=20, init="text", text=tickets.INSTRUCTION, tokenizer=tokenizer)
print(f"soft prompt l=20: {prompts.soft_prompt_parameters(candidate):,} parameters = 20 x {d}")
assert prompts.soft_prompt_parameters(candidate) == 20 * d
assert isinstance(llm.generate(candidate, tokenizer, some[:1], max_new_tokens=12)[0], str)
print("  generate runs with it (the prompt enters once, then the cache holds it)")
prompts.remove_soft_prompt(candidate)
with torch.no_grad():
    compare("  removed: vs base model", candidate(**probe).logits, base_probe, atol=0)

prefix.add_prefix(candidate, length=10)
print(f"prefix l=10: {prefix.prefix_parameters(candidate):,} parameters = 2 x {L} x 10 x {n_kv} x {d_head} "
      f"(without grouped queries: {2 * L * 10 * d:,})")
assert prefix.prefix_parameters(candidate) == 2 * L * 10 * n_kv * d_head
assert isinstance(llm.generate(candidate, tokenizer, some[:1], max_new_tokens=12)[0], str)
print("  generate runs with it (the prefix joins every attention call, cached or not)")
prefix.remove_prefix(candidate)
with torch.no_grad():
    compare("  removed: vs base model", candidate(**probe).logits, base_probe, atol=0)"""),
("code", """for task in ("tickets", "summaries"):
    adapters.add_adapter(candidate, task, adapters.AdapterConfig(placement="pfeiffer", reduction_factor=16))
m = d // 16
print(f"two Pfeiffer adapters (m = {m}): {adapters.adapter_parameters(candidate, 'tickets'):,} parameters each = "
      f"{L} x (2 x {m} x {d} + {m} + {d})")
assert adapters.adapter_parameters(candidate, "tickets") == L * (2 * m * d + m + d)
for task in ("tickets", "summaries", None):  # switched per request; None runs the base model
    adapters.set_active(candidate, task)
    with torch.no_grad():
        compare(f"  active {task!s:<9} vs base (init)", candidate(**probe).logits, base_probe, atol=0)
for task in ("tickets", "summaries"):
    adapters.remove_adapter(candidate, task)
del candidate"""),
("md", """## 10. What training an LLM costs in memory

Lesson 06 counted the bytes of one training step on the encoder. On the LLM the same count shows where the memory
goes: the frozen weights are fixed, LoRA's gradients and AdamW state are tiny, and the **activations** that
autograd keeps for the backward pass grow with batch size × sequence length × layers. Counted exactly for the
LoRA model on one batch of 8 tickets:"""),
("code", """train_batch = next(iter(llm.make_lm_loader(data["train"], tokenizer, batch_size=8)))
counted = training_memory(model, {k: train_batch[k] for k in ("input_ids", "attention_mask")})
full_ft_states = 3 * counted["weights"]  # a gradient and AdamW's two moments for every parameter
print(f"one batch: 8 tickets x {train_batch['input_ids'].shape[1]} tokens")
for part, nbytes in counted.items():
    print(f"  {part:<16} {format_mb(nbytes)}")
print(f"  full fine-tuning would need gradients and AdamW state for every weight instead: {format_mb(full_ft_states)}")
share = counted["activations"] / sum(counted.values())
print(f"activations are {'more' if share > 0.5 else 'less'} than half of LoRA's training memory here")
assert counted["activations"] > 50 * (counted["gradients"] + counted["optimizer_state"])"""),
("md", """LoRA removes almost all the gradient and optimizer memory of full fine-tuning, but it leaves the activations
untouched: the backward pass still runs through every layer, since the LoRA matrices sit in all 30 of them. That is
why "I used LoRA and still ran out of memory" is a common question: the fixes are a smaller batch or shorter
sequences, activation checkpointing (recompute instead of store), or a method whose trainable parameters sit only
near the top of the model."""),
("md", """The weights are the other large part, and LoRA leaves them in float32. QLoRA stores the frozen base in 4 bits
(lesson 05, section 10: blocks of 64 values, one float32 absmax each, NF4 code values) and trains LoRA on top. On
SmolLM2 the linear layers hold most of the parameters, so most of the model shrinks by 32 / 4.5. Does the model
still answer?"""),
("code", """from peft_teach import quantize

four_bit = copy.deepcopy(base_model)
quantized = quantize.quantize_linear_layers(four_bit, "nf4")
linear_values = sum(layer.in_features * layer.out_features for layer in quantized.values())
print(f"{len(quantized)} linear layers, {linear_values:,} of {count_parameters(base_model):,} parameters "
      f"({linear_values / count_parameters(base_model):.0%})")
for label, candidate in (("float32", base_model), ("NF4 linear layers", four_bit)):
    print(f"  {label:<18} weights {quantize.stored_bytes(candidate):>13,} bytes")
bits = 8 * sum(layer.quantized().nbytes() for layer in quantized.values()) / linear_values
print(f"{bits} bits per weight in the linear layers (float32: 32)")
errors = [quantize.relative_error(base_model.get_submodule(name).weight, "nf4") for name in quantized]
print(f"NF4 rounding, ||W - Q(W)|| / ||W||: mean {sum(errors) / len(errors):.3f} over the {len(errors)} matrices")
answer = llm.generate(four_bit, tokenizer, [question], max_new_tokens=12)[0]
print("NF4 base:", answer)
assert "Paris" in answer
lora.add_lora(four_bit, ("q_proj", "v_proj"), r=8, alpha=16)
assert count_parameters(four_bit, trainable_only=True) == history.trainable_parameters  # the same LoRA as section 6
del four_bit"""),
("md", """The 210 linear layers, 79 % of the parameters, take 4.5 bits per weight instead of 32; the embeddings (tied with
the output layer) stay in float32, as in QLoRA, so the weights shrink to about a third. The rounding moves each
matrix by about a tenth of its norm, and the model still answers the question. The last lines of the cell put
section 6's LoRA on the 4-bit base: the same trainable parameters on a much smaller base. We do not train it here,
and we have not timed it: plain PyTorch rebuilds every linear layer's weight in every forward and backward pass,
where bitsandbytes does that inside its GPU kernels."""),
("md", """## 11. What serving costs: time per token and the key/value cache

A served model writes one token at a time, and each request keeps a **key/value cache**: for every token read or
written, one key and one value per layer and key/value head, 2 · L · n_kv · d_head numbers. What each method adds
to that:

- **LoRA, unmerged**: two thin matrix products beside each adapted projection, for every token. **Merged**: nothing.
- **Adapter**: a small MLP after every feed-forward block, for every token.
- **Prefix** (and Prefix-Tuning+): l more keys and values for every query to attend to, in every layer.
- **Soft prompt**: l more positions to read once; they then sit in the cache of every request.

First the cache, counted tensor by tensor after reading one ticket (`llm_speed.cache_bytes`, stored with the timings
below). Ours keeps the prefix inside the attention function, one copy for the whole batch; `peft` writes it into
every sequence's cache."""),
("code", """speed = precomputed.load("llm_speed")
cache = speed["results"]["cache_bytes"]
per_token = 2 * L * n_kv * d_head * 4  # bytes: a key and a value, every layer and key/value head, float32
ticket_tokens = speed["recipe"]["generation_shapes"]["batch 1"][1]
print(f"one ticket: {ticket_tokens} tokens x {per_token:,} bytes = {ticket_tokens * per_token:,} bytes of cache")
for name, nbytes in cache.items():
    print(f"  {name:<14} {nbytes:>10,}  (+{nbytes - cache['base']:,})")
assert cache["base"] == ticket_tokens * per_token
assert cache["soft_prompt"] - cache["base"] == speed["recipe"]["prompt_length"] * per_token
assert cache["prefix (peft)"] - cache["base"] == llm_speed.prefix_cache_formula(config, speed["recipe"]["prefix_length"])
assert all(cache[m] == cache["base"] for m in ("lora", "lora_merged", "adapter", "prefix", "prefix_plus"))"""),
("md", """Every count equals its formula: the soft prompt's 20 positions cost 20 tokens of cache per request, peft's 10-token
prefix 10 tokens, and the other methods nothing. For a 142-token ticket that is small; for a service holding
thousands of short requests at once it is memory that the base model would not need.

**Time per token.** `scripts/benchmark_llm.py` timed `generate` writing 16 tokens for every model, as a ratio to the
base model measured in the same run: the models take turns, in an order shuffled every round, and the base model
is timed twice. That second base timing is the **control**: two identical runs that land away from 1.00 show the
noise of the run, and a method closer to 1.00 than the control is not told apart from the base model."""),
("code", """machine = speed["machine"]
print(f"stored: {machine['threads']} threads, torch {machine['torch']}, {speed['recipe']['rounds']} shuffled rounds, "
      f"{speed['recipe']['new_tokens']} new tokens per request")
generation = {label: {k: v for k, v in row.items() if k != "base tokens/s"}
              for label, row in speed["results"]["generation"].items()}
print(f"{'time / base':<14}" + "".join(f"{label:>10}" for label in generation))
for name in generation["batch 1"]:
    print(f"{name:<14}" + "".join(f"{row[name]:>10.2f}" for row in generation.values()))
for label, row in generation.items():
    slower = beyond_control(row, "base")
    print(f"{label}: control {row['control']:.2f}; beyond it: {', '.join(sorted(slower)) or 'none'}")"""),
("code", """fig, ax = plt.subplots(figsize=(7, 3))
names = [n for n in generation["batch 1"] if n != "base"]
for offset, (label, row) in zip((-0.2, 0.2), generation.items()):
    ax.bar([i + offset for i in range(len(names))], [row[n] for n in names], 0.4, label=label)
ax.axhline(1.0, color="grey", lw=0.8)
ax.set_ylim(0.9, 1.15)
ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
ax.set_ylabel("time / base model")
ax.set_title("writing 16 tokens (stored run, CPU)")
ax.legend(fontsize=8)
plt.show()"""),
("md", """Merged LoRA writes at the base model's speed, as its shape promises: it is the one method the control cannot
separate from the base model. On this CPU every other method takes 1.02 to 1.07 times the base model's time, beyond
the control's distance at both batch sizes. These are a few percent of one stored run; they are no reason to pick a
method, since the accuracies of section 7 differ far more than the serving times. On a GPU, small extra layers cost launch
time more than arithmetic: Hu et al. (2022, Table 1) report adapter layers adding 20–30 % to a GPT-2 medium forward
pass at batch 1, the motivation for LoRA's merge. Merge LoRA before serving a single task.

The training step tells the other half: is our code as fast as `peft`'s on the same weights? Stored, per method,
with its own control (ours timed twice):"""),
("code", """for method, row in speed["results"]["train_step"].items():
    verdict = "within" if row["ratio"] <= 1.05 else "ABOVE"
    print(f"{method:<12} ours / peft {row['ratio']:.2f}   control {row['control_ratio']:.2f}   "
          f"({verdict} the 1.05 target)")"""),
("md", """Your machine, now: the trained LoRA of section 6, unmerged and merged, against the base model (2 shuffled rounds,
one ticket, 8 tokens). Not checked by the tests: timings differ per machine."""),
("code", """# NBVAL_IGNORE_OUTPUT
served = copy.deepcopy(model)
lora.merge_lora(served)
one_ticket = llm_speed.prompt_batches(tokenizer, data["test"]["prompt"], sizes=(1,))
live_speed = llm_speed.generation_ratios({"base": base_model, "lora": model, "lora_merged": served}, one_ticket,
                                         new_tokens=8, rounds=2)
for name, ratio in live_speed["batch 1"].items():
    print(f"{name:<14} {ratio:.2f}")
print(control_note({k: v for k, v in live_speed["batch 1"].items() if k != "base tokens/s"}))
del served"""),
("md", """## Summary

- SmolLM2-135M-Instruct (134,515,008 parameters) loads offline from a 4-bit GGUF file in a pip wheel and is
  dequantized to float32. It reads a chat template; `<|im_end|>` closes an answer; prompts are padded on the left.
- Prompting a model this small does not do the job: zero-shot, 0.215 of the answers parse and none has all three
  fields right; three solved examples make every answer parse but leave all fields right on 0.020 of the tickets,
  at four times the prompt length.
- Training a causal LM on a task: labels -100 on the prompt, logits at t predict the token at t + 1, and only the
  answer positions' logits are needed.
- Your LoRA inside the LLM matches the package exactly on loss and gradients; the package matches `peft` exactly on
  the same weights (same logits, same greedy answers); merged LoRA writes the same answers.
- Trained under one recipe (100 steps, 3 seeds), the adapter gets all fields right on 0.998 ± 0.003 of the tickets
  and LoRA on 0.980 ± 0.018 (not separable here), prefix tuning on 0.655 ± 0.079, the soft prompt on
  0.240 ± 0.023, Prefix-Tuning+ on 0.643 ± 0.416 (its seeds disagree; not separable here from the prefix or the
  soft prompt); every other difference is separable. The product field, which needs the model codes, is where the
  prefix and the soft prompt fall short.
- On real SST-2 phrases as generation, prompting stays at the always-positive share (zero-shot 0.564, 3-shot
  0.563); after 100 steps LoRA reaches 0.876 ± 0.012, ahead of the prefix and the soft prompt, which are not
  separable here. SmolLM2 with LoRA and MiniLM fully fine-tuned (lesson 06) are not separable here.
- Soft prompt, prefix and adapters attach to the LLM with the same verbs and generate through the key/value cache.
  With grouped-query attention a prefix needs a third of the 2 L l d parameters.
- With LoRA, the activations of one batch dwarf the gradients and optimizer state; LoRA saves optimizer memory,
  not activation memory.
- Serving: merged LoRA writes at the base model's speed and adds no cache; the other methods cost a few percent per
  token on a CPU; a soft prompt adds its l positions to every request's cache, and so does `peft`'s prefix (ours
  keeps it in the attention function). Our training steps match `peft`'s within the 1.05 target."""),
("md", """## Check your understanding

1. Why are the labels -100 on the prompt tokens? What would the model learn if they were not?
2. A batch for generation is padded on the left. What goes wrong if you pad on the right and call `generate`?
3. `v_proj` of SmolLM2 maps 576 → 192. Why, and how many LoRA parameters does r = 8 add to it in one layer?
4. Few-shot prompting made every answer parse but left the fields near chance. What did the examples teach, and
   what could they not teach?
5. Merged and unmerged LoRA give logits that differ in the last bits, yet the same greedy answers. When could
   greedy answers differ after merging?
6. Your LoRA training runs out of memory at batch 32. Which of the four counted parts would you attack first, and how?
7. Our prefix adds nothing to the key/value cache and `peft`'s adds 10 tokens per request. What does ours pay instead,
   and which would you choose for a service that holds thousands of requests at once?
8. On SST-2 the base model's likelier first word scores barely above always answering "positive". What would you
   change in the prompt or in the scoring to test whether the model knows the sentiment but prefers one word?"""),
("md", """## Further reading

- L. B. Allal et al., *SmolLM2: When Smol Goes Big — Data-Centric Training of a Small Language Model*, 2025 (arXiv 2502.02737).
- E. Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, ICLR 2022 (arXiv 2106.09685).
- T. Brown et al., *Language Models are Few-Shot Learners*, NeurIPS 2020 (in-context learning).
- J. Ainslie et al., *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*, EMNLP 2023.
- The `peft` documentation on causal language modeling with LoRA and prompt-based methods.

**Practice:** [exercises/07_peft_on_a_language_model.ipynb](../exercises/07_peft_on_a_language_model.ipynb), graded tasks on this lesson (solved twin: [solutions/07_peft_on_a_language_model.ipynb](../solutions/07_peft_on_a_language_model.ipynb))."""),
]


if __name__ == "__main__":
    notebook_builder.main(CELLS, LESSON)
