"""The table of wrong answers: every graded task of practice notebooks 00-06 marks at least three wrong
answers incorrect (lesson 07's LLM tasks have theirs in test_questions_llm.py).

Three sources fill the table. Graders built by ``checks`` (numbers, named options, functions on
small tensors) carry what they grade against, so their wrong answers are derived here: a near
miss, a double count, a wrong type, each named mistake, a wrong shape, a crash. Multiple-choice
tasks get every wrong letter. The tasks with their own graders (the real model, in-place changes)
get wrong answers written out below. A task missing from the table fails the first test.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from peft_teach.checks import INCORRECT, Question
from peft_teach import quantize
from peft_teach.methods import ia3, lora
from peft_teach.methods.inject import replace_module

LESSONS = range(7)


def questions() -> dict[str, Question]:
    found = {}
    for number in LESSONS:
        module = importlib.import_module(f"peft_teach.questions.lesson_0{number}")
        for name, value in vars(module).items():
            if isinstance(value, Question):
                found[f"{number:02d} {name}"] = value
    return found


def crashes(*args, **kwargs):
    raise ValueError("a bug in the learner's code")


# ------------------------------------------------------------------ derived from the grader


def derived_wrong_answers(question: Question) -> list:
    grader = question.grader
    if question.choices:  # multiple choice: every wrong letter, and something that is not a letter
        right = question.shuffled_choices().index(question.choices[0])
        return [letter for i, letter in enumerate("abcdefgh"[: len(question.choices)]) if i != right] + ["z"]
    if hasattr(grader, "tol"):  # a number: each named mistake, a near miss, a double count, text
        expected = grader.expected
        return [*(grader.known_wrong or {}), expected + max(10 * grader.tol, 1e-3 * abs(expected), 1), 2 * expected,
                str(expected)]
    if hasattr(grader, "options"):  # a named option
        return [option for option in grader.options if option != grader.expected] + ["none of these"]
    if hasattr(grader, "reference"):  # a function on small tensors
        reference = grader.reference

        def off_by_a_little(*args):
            return reference(*args) + 1e-2

        def wrong_shape(*args):
            return reference(*args).reshape(-1)[:1]

        def not_a_tensor(*args):
            return reference(*args).tolist()

        return [*(grader.known_wrong or {}).values(), off_by_a_little, wrong_shape, not_a_tensor, crashes]
    return []


# ------------------------------------------------------------------ written out per task


def written_wrong_answers() -> dict[str, list]:
    from peft_teach.models import mean_pool
    from peft_teach.questions import lesson_01, lesson_02, lesson_03, lesson_04, lesson_05

    def freeze_nothing(model):
        pass

    def freeze_everything(model):
        model.requires_grad_(False)

    def freeze_the_encoder_layers_only(model):  # the embeddings still train
        model.backbone.encoder.requires_grad_(False)

    def pool_padding_too(model, batch):
        return model.head(model.backbone(**batch).last_hidden_state.mean(dim=1))

    def first_token(model, batch):
        return model.head(model.backbone(**batch).last_hidden_state[:, 0])

    def identity_by_doing_nothing(adapter):
        pass

    def zero_everything(adapter):
        with torch.no_grad():
            for parameter in adapter.parameters():
                parameter.zero_()

    def zero_up_weight_only(adapter):
        with torch.no_grad():
            adapter.up.weight.zero_()

    def trainable_names(model, batch):
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def no_names(model, batch):
        return []

    def made_up_names(model, batch):
        return ["adapter.weight"]

    def pool_the_prompt_too(backbone, prompt, head, batch):
        mask = batch["attention_mask"]
        embeds = backbone.get_input_embeddings()(batch["input_ids"])
        embeds = torch.cat([prompt.unsqueeze(0).expand(embeds.shape[0], -1, -1), embeds], dim=1)
        wide = torch.cat([torch.ones(mask.shape[0], prompt.shape[0], dtype=mask.dtype), mask], dim=1)
        return head(mean_pool(backbone(inputs_embeds=embeds, attention_mask=wide).last_hidden_state, wide))

    def prompt_not_trained(backbone, prompt, head, batch):
        return pool_the_prompt_too(backbone, prompt.detach(), head, batch)

    def no_prompt(backbone, prompt, head, batch):
        hidden = backbone(**batch).last_hidden_state
        return head(mean_pool(hidden, batch["attention_mask"]))

    def equal_logits_gate(model, input_ids, layer):
        tokens = input_ids.shape[1]
        return torch.full((12, tokens), lesson_04.PREFIX_LENGTH / (lesson_04.PREFIX_LENGTH + tokens))

    def first_layer_everywhere(model, input_ids, layer):
        attention = model.backbone.encoder.layer[0].attention.self
        hidden = model.backbone.embeddings(input_ids=input_ids)[0]
        queries = attention.query(hidden).view(-1, 12, 32).transpose(0, 1)
        keys = attention.key(hidden).view(-1, 12, 32).transpose(0, 1)
        prefix_keys, _ = model.prefix.layer_key_value(0)
        scores = torch.cat([queries @ prefix_keys.transpose(1, 2), queries @ keys.transpose(1, 2)], -1) / 32**0.5
        return scores.softmax(-1)[..., : prefix_keys.shape[1]].sum(-1)

    def recorded_gate(model, input_ids, layer):
        from peft_teach.methods.prefix import record_prefix_attention

        with record_prefix_attention() as recorded:
            model(input_ids=input_ids)
        return recorded[layer][0]

    def merge_in_place(weight, lora_a, lora_b, alpha, r):
        weight += alpha / r * lora_b @ lora_a
        return weight

    def merge_alpha_not_over_r(weight, lora_a, lora_b, alpha, r):
        return weight + alpha * lora_b @ lora_a

    def merge_transposed(weight, lora_a, lora_b, alpha, r):
        return weight + alpha / r * (lora_a.T @ lora_b.T).T.flip(0)

    def unwrap_without_merging(model):
        for name, layer in list(lora.lora_layers(model).items()):
            replace_module(model, name, layer.base_layer)

    def merge_and_unwrap(model):
        lora.merge_lora(model)  # refused while grading: the package's merge is the task
        unwrap_without_merging(model)

    class LeftUnfrozen(nn.Module):
        def __init__(self, base_layer, r, alpha):
            super().__init__()
            self.base_layer = base_layer
            self.lora_A = nn.Parameter(0.01 * torch.randn(r, base_layer.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))
            self.scaling = alpha / r

        def forward(self, x):
            return self.base_layer(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    class WithoutTheFrozenPath(LeftUnfrozen):
        def forward(self, x):
            return self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    class IA3LeftUnfrozen(nn.Module):
        def __init__(self, base_layer, feedforward=False):
            super().__init__()
            self.base_layer, self.feedforward = base_layer, feedforward
            self.ia3_scale = nn.Parameter(torch.ones(base_layer.in_features if feedforward else base_layer.out_features))

        def forward(self, x):
            return self.base_layer(x * self.ia3_scale) if self.feedforward else self.base_layer(x) * self.ia3_scale

    class IA3StartingAtZero(IA3LeftUnfrozen):
        def __init__(self, base_layer, feedforward=False):
            super().__init__(base_layer.requires_grad_(False), feedforward)
            nn.init.zeros_(self.ia3_scale)

    class IA3OutputScaleEverywhere(IA3LeftUnfrozen):  # W_2's scale on its 384 outputs, not its 1,536 inputs
        def __init__(self, base_layer, feedforward=False):
            super().__init__(base_layer.requires_grad_(False), False)

    def nf4_without_the_absmax(weight):
        code = torch.tensor(quantize.NF4_VALUES)
        return code[(weight[..., None] - code).abs().argmin(-1)]

    def fraction_of_full_ft(summary, method):
        return summary[method]["mean"] / summary["full_ft"]["mean"]

    def the_mean_itself(summary, method):
        return summary[method]["mean"]

    def against_head_only_alone(summary, method):
        return summary[method]["mean"] - summary["head_only"]["mean"]

    def adapters_detached(maps, a):
        return a + maps.scaling * maps.up(torch.relu(maps.down(a.detach())))

    _, _, adapter_names, _ = lesson_02.stored_fusion_weights()
    right_adapter = lesson_02._top_layer_favourite_for_no_action()

    return {
        "00 q4": [freeze_nothing, freeze_everything, freeze_the_encoder_layers_only, crashes],
        "00 q6": [pool_padding_too, first_token, lambda model, batch: model(**batch), crashes],
        "01 q4": [identity_by_doing_nothing, zero_everything, zero_up_weight_only, crashes],
        "01 q5": [trainable_names, no_names, made_up_names, crashes],
        "01 q7": [*lesson_01.Q7_MISTAKES.values(), adapters_detached, crashes],
        "02 q5": [name for name in adapter_names if name != right_adapter] + ["no_action"],
        "02 q6": [*lesson_02.Q6_MISTAKES.values(), crashes],
        "03 q2": [pool_the_prompt_too, prompt_not_trained, no_prompt, crashes],
        "03 q6": [*lesson_03.Q6_MISTAKES.values(), crashes],
        "04 q6": [equal_logits_gate, first_layer_everywhere, recorded_gate, crashes],
        "04 q7": [*lesson_04.Q7_MISTAKES.values(), crashes],
        "05 q3": [merge_in_place, merge_alpha_not_over_r, merge_transposed, crashes],
        "05 q6": [lora.merge_lora, unwrap_without_merging, merge_and_unwrap, crashes],
        "05 q7": [*lesson_05.Q7_MISTAKES.values(), LeftUnfrozen, WithoutTheFrozenPath, lora.LoRALinear],
        "05 q10": [*lesson_05.Q10_MISTAKES.values(), lambda weight: weight, nf4_without_the_absmax, crashes],
        "05 q11": [*lesson_05.Q11_MISTAKES.values(), IA3LeftUnfrozen, IA3StartingAtZero, IA3OutputScaleEverywhere,
                   ia3.IA3Linear],
        "06 q6": [fraction_of_full_ft, the_mean_itself, against_head_only_alone, crashes],
    }


@pytest.fixture(scope="module")
def table() -> dict[str, list]:
    written = written_wrong_answers()
    return {key: written.get(key) or derived_wrong_answers(question) for key, question in questions().items()}


def test_every_task_has_at_least_three_wrong_answers(table):
    thin = {key: len(answers) for key, answers in table.items() if len(answers) < 3}
    assert not thin, f"Tasks with fewer than three wrong answers in the table: {thin}"


@pytest.mark.parametrize("key", sorted(questions()))
def test_each_wrong_answer_is_marked_incorrect(key, table, capsys):
    question = questions()[key]
    for answer in table[key]:
        status, message = question._grade(answer)
        assert status == INCORRECT, f"{key}: {getattr(answer, '__name__', answer)!r} was marked {status}"
        assert message, f"{key}: an incorrect answer must say why"


def test_the_package_itself_never_passes():
    """Each task that a package function could answer refuses that function, handed in or called."""
    from peft_teach import measure, models
    from peft_teach.methods import adapters, prefix, prefix_plus
    from peft_teach.questions import lesson_00, lesson_01, lesson_03, lesson_04, lesson_05, lesson_06

    cases = [
        (lesson_00.q1, models.mean_pool),
        (lesson_01.q7, adapters.BottleneckAdapter.forward),
        (lesson_03.q6, prefix.prefix_attention),
        (lesson_04.q3, prefix_plus.memory_read),
        (lesson_04.q7, lambda query, output, memory, layer: output + prefix_plus.memory_read(
            query, memory[layer], "elu+1").transpose(1, 2)),
        (lesson_05.q6, lora.merge_lora),
        (lesson_05.q7, lora.LoRALinear),
        (lesson_05.q10, lambda weight: quantize.dequantize(quantize.quantize(weight, "nf4"))),
        (lesson_05.q11, ia3.IA3Linear),
        (lesson_06.q4, measure.saved_activation_bytes),
    ]
    for question, package in cases:
        assert question._grade(package)[0] == INCORRECT, question.title
