import pytest

import torch
from torch import nn

from peft_teach import measure


def test_counts_and_summary():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    assert measure.count_parameters(model) == 4 * 3 + 3 + 3 * 2 + 2
    assert measure.count_parameters(model, trainable_only=True) == 3 + 3 * 2 + 2
    assert measure.trainable_summary(model) == "trainable parameters: 11 of 23 (47.83%)"


def test_shared_parameters_count_once():
    shared = nn.Linear(2, 2)
    assert measure.count_parameters(nn.Sequential(shared, shared)) == 6


def test_trainable_by_module_merges_layers(tiny_bert):
    import copy

    model = copy.deepcopy(tiny_bert)
    for name, p in model.named_parameters():
        p.requires_grad_("attention.self.query" in name)
    assert measure.trainable_by_module(model, depth=3) == {"encoder.layer.*.attention": 2 * (32 * 32 + 32)}
    assert measure.trainable_by_module(model, depth=1) == {"encoder": 2 * (32 * 32 + 32)}


def test_timing_helpers_run_and_do_not_change_weights(tiny_bert):
    import copy

    model = copy.deepcopy(tiny_bert)
    classifier = nn.Sequential()
    batch = {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = model, nn.Linear(32, 2)

        def forward(self, input_ids, attention_mask):
            return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])

    del classifier
    net = Head()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert measure.latency(net, batch, repeats=2, warmup=1) > 0
    assert measure.train_step_time(net, {**batch, "labels": torch.tensor([0, 1])}, repeats=2) > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert set(measure.compare_latency({"a": net, "b": net}, batch, rounds=1, repeats=1)) == {"a", "b"}


def test_cuda_peak_memory_refuses_the_cpu_and_points_to_the_exact_count():
    with pytest.raises(ValueError, match="training_memory"):
        measure.cuda_peak_memory(lambda: None, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_memory_sees_a_large_allocation():
    device = torch.device("cuda")
    assert measure.cuda_peak_memory(lambda: torch.ones(2**24, device=device).sum(), device) >= 2**26


def test_formats():
    assert measure.format_ms(0.01234) == "12.3 ms"
    assert measure.format_mb(3 * 2**20) == "3.0 MB"


def test_compare_times_interleaves_shuffles_and_times_the_control_separately():
    calls = []

    def task(name):
        def run():
            calls.append(name)
            return {"a": 1.0, "b": 2.0, "c": 3.0}[name]
        return run

    times = measure.compare_times({n: task(n) for n in "abc"}, rounds=6, control="a", seed=0)
    assert times == {"a": 1.0, "b": 2.0, "c": 3.0, measure.CONTROL: 1.0}
    rounds = [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)]
    assert all(sorted(r) == ["a", "a", "b", "c"] for r in rounds)  # every task (and the control) once per round
    assert len(set(rounds)) > 1  # the order changes between rounds


def test_compare_times_refuses_a_control_that_is_not_timed():
    with pytest.raises(ValueError, match="control='base' is not one of the timed tasks"):
        measure.compare_times({"a": lambda: 1.0}, control="base")


def test_beyond_control_keeps_only_ratios_farther_from_one_than_the_control():
    relative = {"base": 1.0, "slow": 1.10, "same": 1.01, "fast": 0.90, measure.CONTROL: 0.97}
    assert measure.beyond_control(relative, "base") == {"slow": 1.10, "fast": 0.90}
    with pytest.raises(ValueError, match="time the reference twice"):
        measure.beyond_control({"base": 1.0, "slow": 1.1}, "base")


def test_fastest_within_control_names_every_method_the_noise_cannot_split():
    relative = {"base": 1.0, "a": 1.02, "b": 1.04, "c": 1.10, measure.CONTROL: 1.03}
    assert measure.fastest_within_control(relative, ["a", "b", "c"]) == ["a", "b"]
    assert measure.fastest_within_control(relative, ["c"]) == ["c"]
    with pytest.raises(ValueError, match="time the reference twice"):
        measure.fastest_within_control({"a": 1.0}, ["a"])


def test_control_note_warns_when_two_identical_runs_disagree():
    assert measure.control_note({"base": 1.0, measure.CONTROL: 1.02}).startswith("control 1.02")
    assert measure.control_note({"base": 1.0, measure.CONTROL: 0.70}).startswith("WARNING: control 0.70")
    with pytest.raises(ValueError, match="time the reference twice"):
        measure.control_note({"base": 1.0})
