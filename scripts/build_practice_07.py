"""Write solutions/07_peft_on_a_language_model.ipynb (unexecuted); exercises/ is then generated from it."""

from __future__ import annotations

import notebook_builder
from course_meta import LLM_COLAB_NOTE, colab_badge

CELLS = [
("md", f"""# Practice 07 — PEFT on a language model that writes

{colab_badge('exercises/07_peft_on_a_language_model.ipynb')}

Six tasks on lesson 07 (`notebooks/07_peft_on_a_language_model.ipynb`). Write your code where it says `# TODO`,
then run the check cell below it: it says **[not attempted]**, **[incorrect]** with a hint, or **[correct]**.
Stuck? The solved twin is `solutions/07_peft_on_a_language_model.ipynb`.

Q1, Q2, Q5 and Q6 run the packaged SmolLM2 (or its tokenizer) on real tickets. While your code runs, the package
functions a task is about refuse to answer, so write them yourself.

**Runtime:** under a minute on a 2-core CPU (the model loads once; no training).

{LLM_COLAB_NOTE}"""),
("code", """import torch
from torch import nn

from peft_teach import llm, tickets
from peft_teach.methods.inject import find_modules, replace_module
from peft_teach.questions.lesson_07 import q1, q2, q3, q4, q5, q6

tokenizer = llm.load_llm_tokenizer()
data = tickets.load_tickets()"""),
("md", """## Q1 — one training example

Turn one (prompt, answer) pair into `input_ids` and `labels` (two lists of ints of the same length): the chat
text of the prompt with its generation prompt (`llm.chat_text`), then the answer followed by the token that ends
an answer (`tokenizer.eos_token`). Tokenize without adding special tokens: the template already has its own.
The labels are -100 on the prompt and equal to the ids on the answer."""),
("code", """def build_example(tokenizer, prompt, answer):
    ### BEGIN SOLUTION
    prompt_ids = tokenizer(llm.chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids
    ### END SOLUTION"""),
("code", """_ = q1.check(build_example)"""),
("md", """## Q2 — a left-padded batch

Given a list of `(input_ids, labels)` pairs (your Q1 output) and the pad token id, return a dict of three
tensors of shape (rows, longest): `input_ids`, `attention_mask` and `labels`, **padded on the left**; padded
positions have mask 0 and label -100."""),
("code", """def left_pad(pairs, pad_id):
    ### BEGIN SOLUTION
    longest = max(len(ids) for ids, _ in pairs)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in pairs:
        pad = longest - len(ids)
        batch["input_ids"].append([pad_id] * pad + list(ids))
        batch["attention_mask"].append([0] * pad + [1] * len(ids))
        batch["labels"].append([-100] * pad + list(labels))
    return {key: torch.tensor(rows) for key, rows in batch.items()}
    ### END SOLUTION"""),
("code", """_ = q2.check(left_pad)"""),
("md", """## Q3 — LoRA on the feed-forward layers

Lesson 07 put LoRA on `q_proj` and `v_proj`. How many parameters does **r = 4** add on `gate_proj`, `up_proj`
and `down_proj` in all 30 layers of SmolLM2? Print `llm_model.model.layers[0].mlp` if you want the shapes (or
reason from d = 576 and the feed-forward width 1536). Write the arithmetic."""),
("code", """### BEGIN SOLUTION
answer_q3 = 30 * (4 * (576 + 1536) + 4 * (576 + 1536) + 4 * (1536 + 576))  # gate, up: 576 -> 1536; down: back
### END SOLUTION"""),
("code", """_ = q3.check(answer_q3)"""),
("md", """## Q4 — a prefix on a grouped-query model

How many parameters does a prefix of length **l = 16** have on SmolLM2 (30 layers, 9 query heads, 3 key/value
heads of size 64)?"""),
("code", """### BEGIN SOLUTION
answer_q4 = 2 * 30 * 16 * 3 * 64  # keys and values, per layer, per key/value head
### END SOLUTION"""),
("code", """_ = q4.check(answer_q4)"""),
("md", """## Q5 — LoRA inside the real LLM, on the feed-forward layers

Write `add_my_lora(model, targets, r, alpha)`: freeze the model, then replace every `nn.Linear` whose name ends
in one of `targets` with your own LoRA layer (attributes `lora_A` of shape (r, d_in), `lora_B` of shape
(d_out, r), B = 0 at the start, update scaled by alpha / r), and return the new layers as `{module name: layer}`.
The grader calls it with `("gate_proj", "up_proj")`, r = 4, alpha = 8 on a fresh SmolLM2, gives your layers the
same A and B as the package's, and compares the loss on two real tickets and the gradients of every A and B."""),
("code", """def add_my_lora(model, targets, r, alpha):
    ### BEGIN SOLUTION
    class MyLoRA(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base.requires_grad_(False)
            self.scaling = alpha / r
            self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features**0.5)
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    model.requires_grad_(False)
    added = {}
    for name, layer in find_modules(model, targets, module_type=nn.Linear).items():
        added[name] = MyLoRA(layer, r, alpha)
        replace_module(model, name, added[name])
    return added
    ### END SOLUTION"""),
("code", """_ = q5.check(add_my_lora)"""),
("md", """## Q6 — the loss on the answer tokens

Given the model's `logits` (batch, T, vocabulary) and the batch's `labels` (batch, T; -100 where there is no
label), return the mean cross-entropy over the answer tokens as a scalar tensor. Remember which position
predicts which token."""),
("code", """def answer_token_loss(logits, labels):
    ### BEGIN SOLUTION
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    ### END SOLUTION"""),
("code", """_ = q6.check(answer_token_loss)"""),
]


if __name__ == "__main__":
    notebook_builder.main(CELLS, "solutions/07_peft_on_a_language_model.ipynb")
