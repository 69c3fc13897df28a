"""Data parallel (peft_teach.distributed): 2 processes under `accelerate launch` take the steps of one process.

The 2-process run is the learner's command, launched for real on the CPU (gloo backend); the
one-process run is the course's own training loop, peft_teach.train.train, with the same global batch.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from peft_teach import distributed
from peft_teach.methods import lora
from peft_teach.models import build_classifier
from peft_teach.train import train

EXAMPLES = 48  # 3 steps of 16 per epoch, each split 8 + 8
# Two processes average two means over 8 examples where one process takes one mean over 16: the same
# number up to float rounding. The losses agree to LOSS_TOLERANCE. Single weights agree less closely:
# AdamW divides each gradient by its own running size, so where a gradient is tiny (A's, while B is near
# zero) a rounding difference becomes a visible difference in that weight's step. So each trained tensor
# is compared as a whole: the two runs' weights may differ by UPDATE_TOLERANCE of what training changed
# (measured: 4e-4 at worst).
LOSS_TOLERANCE = 1e-5
UPDATE_TOLERANCE = 1e-2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("data_parallel") / "two"
    record = distributed.launch_on_cpu(out, processes=2, examples=EXAMPLES, dropout=0.0, port=free_port())
    return out, record


@pytest.fixture(scope="module")
def one_process():
    model, tokenizer, data = distributed.demo_run(EXAMPLES, dropout=0.0)
    history = train(model, tokenizer, data, **distributed.DEMO_RECIPE, eval_split=None)
    return model, history


def trained_tensors(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def test_two_processes_take_the_steps_of_one(two_processes, one_process):
    _, record = two_processes
    assert record["processes"] == 2 and record["backend"].endswith("MULTI_CPU")
    model, history = one_process
    assert len(record["train_loss"]) == len(history.train_loss) == distributed.DEMO_RECIPE["epochs"] * EXAMPLES // 16
    assert torch.allclose(torch.tensor(record["train_loss"]), torch.tensor(history.train_loss), atol=LOSS_TOLERANCE,
                          rtol=0)
    assert history.train_loss[-1] < history.train_loss[0]  # it trained: equal curves of an idle model prove nothing


def test_the_checkpoint_of_process_0_is_the_one_process_weights(two_processes, one_process, tmp_path):
    model, _ = one_process
    folder, _ = two_processes
    restored = build_classifier(2, seed=distributed.DEMO_RECIPE["seed"])
    lora.load_lora(restored, folder / "lora")
    ours, theirs = trained_tensors(restored), trained_tensors(model)
    assert ours.keys() == theirs.keys() and any("lora_B" in name for name in ours)
    start = trained_tensors(distributed.demo_run(EXAMPLES, dropout=0.0)[0])
    for name in ours:
        update = (theirs[name] - start[name]).norm()
        assert update > 0 and (ours[name] - theirs[name]).norm() <= UPDATE_TOLERANCE * update, name
    lora.save_lora(model, tmp_path / "one")
    files = sorted(p.name for p in (folder / "lora").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one").iterdir())  # process 1 wrote nothing extra


def test_only_the_trainable_gradients_are_all_reduced(two_processes):
    _, record = two_processes
    model, _, _ = distributed.demo_run(EXAMPLES, dropout=0.0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert record["all_reduce_bytes_per_step"] == distributed.gradient_bytes_per_step(model) == 4 * trainable
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    assert record["all_reduce_bytes_per_step"] < everything / 50  # full fine-tuning would send every weight


def test_a_batch_that_does_not_split_evenly_is_refused():
    distributed.check_even_split(48, 16, 2)
    with pytest.raises(ValueError, match="multiples of 2"):
        distributed.check_even_split(48, 15, 2)
    with pytest.raises(ValueError, match="the last batch has 7"):
        distributed.check_even_split(39, 16, 2)


def test_a_finished_run_is_never_written_over(tmp_path, monkeypatch):
    (tmp_path / "history.json").write_text("a finished run")
    monkeypatch.setattr("sys.argv", ["peft_teach.distributed", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="choose a new --out"):
        distributed.main()
    assert (tmp_path / "history.json").read_text() == "a finished run"
