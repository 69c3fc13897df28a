import pytest
from torch import nn

from peft_teach.methods import inject


def test_find_modules_by_suffix_and_regex(tiny_bert):
    by_suffix = inject.find_modules(tiny_bert, ["query", "value"])
    assert list(by_suffix) == [
        "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value",
        "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value",
    ]
    by_regex = inject.find_modules(tiny_bert, r"encoder\.layer\.1\.attention\.self\.(query|key)")
    assert list(by_regex) == ["encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.key"]


def test_unknown_name_lists_available_names(tiny_bert):
    with pytest.raises(inject.UnknownModuleError) as error:
        inject.find_modules(tiny_bert, ["query", "q_proj"])
    message = str(error.value)
    assert "q_proj" in message and "'query'" in message and "'value'" in message


def test_type_filter(tiny_bert):
    assert all(isinstance(m, nn.Linear) for m in inject.find_modules(tiny_bert, "dense", nn.Linear).values())
    with pytest.raises(inject.UnknownModuleError, match="Embedding"):
        inject.find_modules(tiny_bert, "query", nn.Embedding)


def test_replace_and_freeze(tiny_bert):
    import copy

    model = copy.deepcopy(tiny_bert)
    old = inject.replace_module(model, "encoder.layer.0.attention.self.query", nn.Identity())
    assert isinstance(old, nn.Linear)
    assert isinstance(model.get_submodule("encoder.layer.0.attention.self.query"), nn.Identity)
    inject.freeze(model)
    assert inject.trainable_names(model) == []
    switched = inject.unfreeze_matching(model, "LayerNorm")
    assert switched and inject.trainable_names(model) == switched
    with pytest.raises(inject.UnknownModuleError):
        inject.unfreeze_matching(model, "no_such_parameter")
