"""The design-space timings (lesson 06): every method and every fusion size, as ratios to the base model.

Timings themselves are not tested (they depend on the machine); what each benchmark
returns is: the right models, the right reference, ratios and not seconds.
"""

from __future__ import annotations

import pytest

from peft_teach import protocol
from peft_teach.benchmark import design_space_batches, fusion_speed, method_speed, variant_speed
from peft_teach.measure import CONTROL


@pytest.fixture(scope="module")
def batches(tokenizer):
    found = design_space_batches(tokenizer)
    small = {key: value[:2] for key, value in found["train"].items()}  # 2 reviews: fast
    return found, small


def test_design_space_batches_have_the_lesson_sizes(batches):
    found, _ = batches
    assert [found[k]["input_ids"].shape[0] for k in ("batch 1", "batch 32", "train")] == [1, 32, 16]


def test_method_speed_times_every_method_against_the_base(batches):
    _, small = batches
    speed = method_speed({"tiny": small}, small, rounds=1, repeats=1)
    assert set(speed) == {"tiny", "train step"}
    # every method, the merged LoRA, and the control: the reference timed a second time
    assert set(speed["tiny"]) == set(protocol.METHODS) | {"lora_merged", CONTROL}
    assert set(speed["train step"]) == set(protocol.METHODS) | {CONTROL}  # a merged model is not trained
    assert speed["tiny"]["head_only"] == 1.0 and speed["train step"]["full_ft"] == 1.0  # the references
    assert all(ratio > 0 for ratios in speed.values() for ratio in ratios.values())


def test_fusion_speed_grows_a_fusion_per_adapter_count(batches):
    _, small = batches
    ratios = fusion_speed(small, max_adapters=2, rounds=1, repeats=1)
    assert list(ratios) == ["base", "1 adapter", "fusion N=1", "fusion N=2", CONTROL]
    assert ratios["base"] == 1.0 and all(ratio > 0 for ratio in ratios.values())


def test_variant_speed_times_each_variant_against_lora_and_the_base(batches):
    _, small = batches
    speed = variant_speed(small, small, rounds=1, repeats=1)
    assert set(speed["inference"]) == {"base", "lora", *protocol.VARIANTS, "lora_merged", "dora_merged",
                                       "ia3_merged", CONTROL}
    assert set(speed["train step"]) == {"lora", *protocol.VARIANTS, CONTROL}  # merged models are not trained
    assert speed["inference"]["base"] == 1.0 and speed["train step"]["lora"] == 1.0  # the references
    assert all(ratio > 0 for ratios in speed.values() for ratio in ratios.values())


def test_stored_design_space_memory_is_what_counting_gives_now():
    """Lesson 06 reads batch 128 from the store: the stored counts must be the ones this code counts."""
    from peft_teach import precomputed, protocol
    from peft_teach.benchmark import design_space_memory_batch
    from peft_teach.measure import training_memory
    from peft_teach.models import load_tokenizer

    stored = precomputed.load("design_space_memory")["results"]
    tokenizer = load_tokenizer()
    for size in ("16", "128"):
        assert set(stored[size]["bytes"]) == set(protocol.METHODS)
        assert stored[size]["shape"] == list(design_space_memory_batch(tokenizer, int(size))["input_ids"].shape)
    batch = design_space_memory_batch(tokenizer, 16)
    for method in ("head_only", "lora"):
        assert training_memory(protocol.build_method(method, 2, seed=0), batch) == stored["16"]["bytes"][method]
    # memory moves with the batch: every method's activations grow, its weights do not
    for method in protocol.METHODS:
        small, large = stored["16"]["bytes"][method], stored["128"]["bytes"][method]
        assert large["weights"] == small["weights"] and large["activations"] > 4 * small["activations"]
