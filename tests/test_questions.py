"""The real-model graders of the practice notebooks reject typical mistakes.

The solved notebooks show that each grader accepts a right answer, and the untouched
exercises that it reports a stub as not attempted; these tests cover the third outcome where a
right answer sits beside the wrong ones or the message matters (the table of wrong answers for every
task is test_wrong_answers.py).
"""

import torch
from torch import nn

from peft_teach.checks import CORRECT, INCORRECT
from peft_teach.methods import lora
from peft_teach.methods.inject import replace_module
from peft_teach.models import mean_pool
from peft_teach.questions import lesson_00, lesson_03, lesson_04, lesson_05


def test_merging_must_unwrap_and_keep_the_update():
    def unwrap_without_merging(model):
        for name, layer in list(lora.lora_layers(model).items()):
            replace_module(model, name, layer.base_layer)

    def merge_and_unwrap(model):
        lora.merge_lora(model)  # the package's merge does the task's work: refused while grading
        unwrap_without_merging(model)

    def own_merge(model):
        for name, layer in list(lora.lora_layers(model).items()):
            frozen = layer.base_layer
            plain = nn.Linear(frozen.in_features, frozen.out_features)
            with torch.no_grad():
                plain.weight.copy_(frozen.weight + layer.alpha / layer.r * layer.lora_B @ layer.lora_A)
                plain.bias.copy_(frozen.bias)
            replace_module(model, name, plain)

    assert lesson_05.q6.check(lora.merge_lora) == INCORRECT
    assert lesson_05.q6.check(unwrap_without_merging) == INCORRECT
    assert lesson_05.q6.check(merge_and_unwrap) == INCORRECT
    assert lesson_05.q6.check(own_merge) == CORRECT
    assert lora.merge_lora.__name__ == "merge_lora"  # restored after grading


def test_capacity_needs_both_baselines_and_the_clip():
    from peft_teach.questions import lesson_06

    def fraction_of_full_ft(summary, method):  # forgets that head-only is the scale's zero
        return summary[method]["mean"] / summary["full_ft"]["mean"]

    def right(summary, method):
        head, full = summary["head_only"]["mean"], summary["full_ft"]["mean"]
        return min(max((summary[method]["mean"] - head) / (full - head), 0.0), 1.0)

    assert lesson_06.q6.check(fraction_of_full_ft) == INCORRECT
    assert lesson_06.q6.check(right) == CORRECT


def _scores(query, keys):
    return torch.einsum("btd,btnd->btn", query, keys).softmax(dim=-1)


def test_the_fusion_in_the_real_model_needs_its_keys_values_and_softmax():
    from peft_teach.questions import lesson_02

    def right(layer, hidden, deltas):
        weights = _scores(layer.query(hidden), layer.key(deltas))
        return torch.einsum("btn,btnd->btd", weights, layer.value(deltas))

    def forgets_the_value_map(layer, hidden, deltas):
        return torch.einsum("btn,btnd->btd", _scores(layer.query(hidden), layer.key(deltas)), deltas)

    def plain_average(layer, hidden, deltas):
        return layer.value(deltas).mean(dim=2)

    def keys_from_the_hidden_state(layer, hidden, deltas):
        keys = layer.key(hidden).unsqueeze(2).expand_as(deltas)
        return torch.einsum("btn,btnd->btd", _scores(layer.query(hidden), keys), layer.value(deltas))

    for wrong in (forgets_the_value_map, plain_average, keys_from_the_hidden_state):
        assert lesson_02.q6.check(wrong) == INCORRECT, wrong.__name__
    assert lesson_02.q6.check(right) == CORRECT


def test_the_heatmap_answer_comes_from_the_stored_fusion_and_only_one_adapter_is_right():
    from peft_teach.questions import lesson_02

    weights, labels, adapter_names, classes = lesson_02.stored_fusion_weights()
    assert weights.shape == (len(labels), 6, len(adapter_names))
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-3)  # a softmax per layer (rounded)
    assert set(labels.tolist()) == set(range(len(classes)))
    verdicts = [lesson_02.q5.check(name) for name in adapter_names]
    assert verdicts.count(CORRECT) == 1 and verdicts.count(INCORRECT) == len(adapter_names) - 1


def test_a_right_answer_in_float32_passes_a_float64_reference_and_a_wrong_one_names_the_gap():
    from peft_teach.questions import lesson_06

    def mean_and_std(accuracies):
        accuracies = accuracies.float()  # the learner computes in float32
        return torch.stack([accuracies.mean(dim=1), accuracies.std(dim=1)], dim=1)

    assert lesson_06.q1.check(mean_and_std) == CORRECT
    assert lesson_06.q3.check(lambda scores: (scores / scores.sum(1, keepdim=True)).float() @ lesson_06.CORNERS.float()) == CORRECT

    def population_std(accuracies):
        return torch.stack([accuracies.mean(dim=1), accuracies.std(dim=1, correction=0)], dim=1)

    status, message = lesson_06.q1._grade(population_std)
    assert status == INCORRECT and "largest difference" in message
    # a coarse dtype gets no extra tolerance: the right formula in bfloat16 is not precise enough here
    assert lesson_06.q1.check(lambda accuracies: mean_and_std(accuracies).bfloat16()) == INCORRECT


def test_the_package_functions_a_task_is_about_refuse_to_answer_it(capsys):
    from peft_teach import measure, models
    from peft_teach.methods import prefix
    from peft_teach.questions import lesson_06

    def recorded_gate(model, input_ids, layer):
        with prefix.record_prefix_attention() as recorded:
            model(input_ids=input_ids)
        return recorded[layer][0]

    assert lesson_00.q1.check(mean_pool) == INCORRECT  # imported by name, as a notebook would
    assert lesson_00.q1.check(lambda hidden, mask: models.mean_pool(hidden, mask)) == INCORRECT
    assert lesson_00.q6.check(lambda model, batch: model.head(model.features(**batch))) == INCORRECT
    assert lesson_04.q6.check(recorded_gate) == INCORRECT
    assert lesson_06.q4.check(measure.saved_activation_bytes) == INCORRECT
    out = capsys.readouterr().out
    assert out.count("the package's own version of what this task asks you to write") == 5
    # restored afterwards: the package works again outside the grader
    assert mean_pool(torch.ones(1, 2, 3), torch.ones(1, 2)).shape == (1, 3)
    assert models.mean_pool is mean_pool and lesson_00.mean_pool is mean_pool


def test_hints_come_in_tiers_and_the_solution_is_the_solved_notebooks_code(capsys):
    question = lesson_05.q1
    question.hints_given = 0
    for _ in range(3):
        question.hint()
    first, second, last = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("Hint 1 of 2") and question.nudge in first
    assert second.startswith("Hint 2 of 2") and question.recipe in second
    assert "q1.solution()" in last
    question.solution()
    code = capsys.readouterr().out
    assert code.startswith("def lora_forward(") and "### BEGIN" not in code and "check(" not in code
    namespace = {"torch": torch}
    exec(code, namespace)  # the printed solution is runnable and passes its own check
    assert question.check(namespace["lora_forward"]) == CORRECT


def test_real_model_graders_backpropagate_and_reject_code_that_cuts_the_graph(capsys):
    """Right logits are not enough: code that detaches what trains could never learn, and is marked so."""
    from peft_teach.questions import lesson_02

    def classify(model, batch, cut=False):
        mask = batch["attention_mask"]
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        return model.head(lesson_00_pool(hidden.detach() if cut else hidden, mask))

    def prompt_logits(backbone, prompt, head, batch, cut=False):
        prompt = prompt.detach() if cut else prompt
        mask = batch["attention_mask"]
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        embeds = torch.cat([prompt.unsqueeze(0).expand(embeds.shape[0], -1, -1), embeds], dim=1)
        wide = torch.cat([torch.ones(mask.shape[0], prompt.shape[0], dtype=mask.dtype), mask], dim=1)
        hidden = backbone(inputs_embeds=embeds, attention_mask=wide).last_hidden_state[:, prompt.shape[0]:]
        return head(lesson_00_pool(hidden, mask))

    def fusion(layer, hidden, deltas, cut=False):
        keys = layer.key(deltas)
        weights = _scores(layer.query(hidden), keys.detach() if cut else keys)
        return torch.einsum("btn,btnd->btd", weights, layer.value(deltas))

    for question, right in ((lesson_00.q6, classify), (lesson_03.q2, prompt_logits), (lesson_02.q6, fusion)):
        assert question.check(right) == CORRECT, question.title
        capsys.readouterr()
        assert question.check(lambda *args, right=right: right(*args, cut=True)) == INCORRECT, question.title
        assert "gradient" in capsys.readouterr().out  # named: no gradient, or a different one


def lesson_00_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
