"""Write solutions/06_design_space.ipynb (unexecuted); exercises/ is then generated from it."""

from __future__ import annotations

import notebook_builder
from course_meta import COLAB_NOTE, colab_badge

CELLS = [
("md", f"""# Practice 06 — The PEFT design space

{colab_badge('exercises/06_design_space.ipynb')}

Six short tasks on lesson 06. Write your code where it says `# TODO`, then run the check cell
below it: it says **[not attempted]**, **[incorrect]** with a hint, or **[correct]**.

**Prerequisites:** lesson 06 (`notebooks/06_design_space.ipynb`). **Runtime:** under a minute on a 2-core CPU
(task 4 runs MiniLM once).

{COLAB_NOTE}"""),
("code", """import math

import torch

from peft_teach.questions.lesson_06 import q1, q2, q3, q4, q5, q6"""),
("md", """## Task 1 — mean ± sample standard deviation

`accuracies` is a (methods, seeds) tensor of test accuracies. Return a (methods, 2) tensor: for each method
its mean and its **sample** standard deviation (the one lesson 06 reports), computed from the formula."""),
("code", """def mean_and_std(accuracies):
    ### BEGIN SOLUTION
    n = accuracies.shape[1]
    mean = accuracies.mean(dim=1)
    std = (((accuracies - mean[:, None]) ** 2).sum(dim=1) / (n - 1)).sqrt()
    return torch.stack([mean, std], dim=1)
    ### END SOLUTION"""),
("code", """_ = q1.check(mean_and_std)"""),
("md", """## Task 2 — optimizer state, predicted

LoRA with r = 8 on the query and value projections of MiniLM (6 layers, d = 384), plus the 2-label head,
trained with AdamW in float32. How many bytes does AdamW's state take? (Lesson 06, section 3.)"""),
("code", """### BEGIN SOLUTION
# A and B per adapted matrix (6 layers x 2 matrices), plus the head; two float32 moments per value
answer_q2 = (6 * 2 * 8 * (384 + 384) + (384 * 2 + 2)) * 2 * 4
### END SOLUTION"""),
("code", """_ = q2.check(answer_q2)"""),
("md", """## Task 3 — the triangle

`scores` is an (N, 3) tensor of (capacity, memory, speed) scores, all positive. Return the (N, 2) points of
the triangle with corners Capacity (0.5, √3/2), Memory (0, 0) and Speed (1, 0), as lesson 06 draws them."""),
("code", """def to_triangle(scores):
    ### BEGIN SOLUTION
    corners = torch.tensor([[0.5, math.sqrt(3) / 2], [0.0, 0.0], [1.0, 0.0]], dtype=scores.dtype)
    weights = scores / scores.sum(dim=1, keepdim=True)
    return weights @ corners
    ### END SOLUTION"""),
("code", """_ = q3.check(to_triangle)"""),
("md", """## Task 4 — count the activations yourself, on the real model

Write `count_saved_bytes(model, batch)`: run one **training-mode** forward of `model` on `batch` and return
(as a float tensor) the bytes of the tensors autograd saves for the backward pass, each storage counted once,
the model's parameters and buffers left out. The check runs it on MiniLM with LoRA and compares with the
package's `saved_activation_bytes`."""),
("code", """def count_saved_bytes(model, batch):
    ### BEGIN SOLUTION
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch)
    model.eval()
    return torch.tensor(float(sum(seen.values())))
    ### END SOLUTION"""),
("code", """_ = q4.check(count_saved_bytes)"""),
("md", """## Task 5 — read the memory bars

Which of these methods keeps almost no activations for the backward pass: `"head only"`, `"LoRA"`,
`"soft prompt"`, `"prefix"` or `"adapter"`?"""),
("code", """### BEGIN SOLUTION
answer_q5 = "head only"
### END SOLUTION"""),
("code", """_ = q5.check(answer_q5)"""),
("md", """## Task 6 — capacity on real sentences, from the stored runs

Lesson 06's triangle scores capacity on a scale from head-only (0) to full fine-tuning (1). Write
`capacity_score(summary, method)`: `summary` is what `protocol.summarize` returns for a stored protocol run
(test accuracy at each method's chosen learning rate, mean over the seeds under `"mean"`); clip the score to
[0, 1] as the lesson does. The check runs it
on the SST-2 sample's stored runs for several methods. Then look at LoRA's score on both tasks: is it closer
to full fine-tuning on real sentences or on the generated task?"""),
("code", """def capacity_score(summary, method):
    ### BEGIN SOLUTION
    head, full = summary["head_only"]["mean"], summary["full_ft"]["mean"]
    return min(max((summary[method]["mean"] - head) / (full - head), 0.0), 1.0)
    ### END SOLUTION"""),
("code", """_ = q6.check(capacity_score)"""),
]


if __name__ == "__main__":
    notebook_builder.main(CELLS, "solutions/06_design_space.ipynb")
