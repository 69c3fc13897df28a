"""From-scratch reference implementations of the PEFT methods taught in the course.

Every method has the same verbs (as AdapterHub and peft do for theirs). ``model`` is a
:class:`~peft_teach.models.SequenceClassifier` (its transformer is ``model.backbone``,
reached by every method through :func:`~peft_teach.models.get_backbone`), a bare
transformers model, or a causal language model (``LlamaForCausalLM``, ``GPT2LMHeadModel``,
...), whose ``generate`` then runs the method at every step, key/value cache included.

| method          | add (returns the new modules) | save / load                                | remove                 | formula count                   | measured count             | module                  |
|-----------------|-------------------------------|--------------------------------------------|------------------------|---------------------------------|----------------------------|-------------------------|
| adapter         | `add_adapter`                 | `save_adapter` / `load_adapter`            | `remove_adapter`       | `adapter_parameter_count`       | `adapter_parameters`       | `methods.adapters`      |
| AdapterFusion   | `add_fusion`                  | `save_fusion` / `load_fusion`              | `remove_fusion`        | `fusion_parameter_count`        | `fusion_parameters`        | `methods.fusion`        |
| soft prompt     | `add_soft_prompt`             | `save_soft_prompt` / `load_soft_prompt`    | `remove_soft_prompt`   | `soft_prompt_parameter_count`   | `soft_prompt_parameters`   | `methods.prompts`       |
| prefix tuning   | `add_prefix`                  | `save_prefix` / `load_prefix`              | `remove_prefix`        | `prefix_parameter_count`        | `prefix_parameters`        | `methods.prefix`        |
| Prefix-Tuning+  | `add_prefix_plus`             | `save_prefix_plus` / `load_prefix_plus`    | `remove_prefix_plus`   | `prefix_plus_parameter_count`   | `prefix_plus_parameters`   | `methods.prefix_plus`   |
| LoRA            | `add_lora`                    | `save_lora` / `load_lora`                  | `remove_lora`          | `lora_parameter_count`          | `lora_parameters`          | `methods.lora`          |
| IA3             | `add_ia3`                     | `save_ia3` / `load_ia3`                    | `remove_ia3`           | `ia3_parameter_count`           | `ia3_parameters`           | `methods.ia3`           |

The same rules hold for all of them:

* ``add_*(model, ..., seed=0)`` is seeded, returns ``{name in model: new module}`` and
  leaves exactly the method's new parameters and the classifier ``head`` trainable
  (one shared helper, :func:`~peft_teach.methods.inject.train_only`); a language model's
  ``lm_head`` is not a new task head and stays frozen. Adapters and
  fusions are named and each gets its own head; ``train_adapter`` / ``train_fusion``
  switch which one is active and trainable.
* ``save_*(model, [name,] folder, overwrite=False)`` writes ``weights.safetensors`` (the
  method's tensors and the head) and ``config.json`` (the settings and the base model's
  fingerprint), each replaced atomically, see :mod:`~peft_teach.methods.checkpoint`. It
  never destroys a file it did not write: a folder holding other files, or another
  method's checkpoint, is refused with the names found unless ``overwrite=True``. ``load_*(model, folder)`` adds the method
  and loads the tensors; a checkpoint of another base model raises
  :class:`~peft_teach.models.IncompatibleBaseModelError` naming the fields that differ;
  a missing or damaged folder raises :class:`~peft_teach.methods.checkpoint.CheckpointError`.
  ``load_fusion`` refuses to load when the fused adapters are not on the model.
* ``remove_*(model, [name])`` takes the method's modules away: the backbone is the base
  model again, bit for bit (adapters and fusions also give the original head back).
* ``*_parameter_count(model, settings)`` is the paper's formula, computed from the
  config before anything is added; ``*_parameters(model, [name])`` counts what is on the
  model. Tests check that the two agree for every method and architecture.

LoRA's variants (rsLoRA, DoRA) are arguments of ``add_lora``, saved and loaded with the rest;
LoRA+ is an optimizer setting, :func:`~peft_teach.methods.lora.loraplus_parameter_groups`.

Architectures: BERT, RoBERTa (post-LN) and GPT-2, Llama, Mistral, Qwen2/3 (pre-LN); where
each method attaches is in :mod:`~peft_teach.methods.architectures`.
"""
