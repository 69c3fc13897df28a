"""One comparison protocol for every method: the rules a fair comparison follows.

Lesson 06 (and the corrected lessons 02-04) compare methods only under these rules:

* **Same everything but the method.** Same task and data, batch size, number of steps,
  evaluation and seeds for every method (:data:`BUDGET`, :data:`SEEDS`).
* **Each method gets its own learning rate**, chosen on the *validation* split from a
  small grid (:attr:`MethodSpec.lr_grid`) with seed 0; the grid's scores are stored and
  shown. When the best rate sits at the edge of the grid, the grid grows one step that
  way (:func:`rate_beyond_edge`, at most :data:`GRID_EXTENSIONS` times). The head, a fresh linear layer in every method, always trains at
  :data:`HEAD_LR` (head-only training has no other parameters: its grid *is* the head's).
* **Converged budgets.** Validation accuracy is recorded after every epoch, so the
  learning curves show whether a method is still climbing when the budget ends; a
  method still climbing (:func:`still_climbing`) gets a probe (seed 0): the same run,
  continued for 3x the budget's epochs more from the weights it ended with (:func:`probe`).
  It is stored beside the method's runs, so we know what the budget cost it.
* **Reported on test**, at the chosen learning rate, as mean ± sample standard
  deviation (ddof = 1) over the seeds. Selecting on validation and reporting on test
  keeps the selection from flattering the number.

Methods are keyed by identifiers (``"lora"``); :attr:`MethodSpec.label` is for display.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from datasets import DatasetDict
from torch import nn

from peft_teach.methods import adapters, ia3, lora, prefix, prefix_plus, prompts
from peft_teach.methods.inject import train_only
from peft_teach.models import build_classifier
from peft_teach.quantize import quantize_linear_layers
from peft_teach.train import evaluate, train

SEEDS = (0, 1, 2)
BUDGET = dict(epochs=4, batch_size=16)  # 300 steps on 1,200 training examples
HEAD_LR = 3e-3
# A method still climbing at the end of the budget gets one probe (seed 0): the budget, then this many epochs more.
PROBE_EXTRA_EPOCHS = 3 * BUDGET["epochs"]
PROBE_EPOCHS = BUDGET["epochs"] + PROBE_EXTRA_EPOCHS  # the probe's whole curve
CONTINUATION_SEED_OFFSET = 100  # the extra epochs shuffle and drop out with seed + 100: no replay of the budget's batches


@dataclass(frozen=True)
class MethodSpec:
    label: str
    add: Callable[[nn.Module, int], object]  # (classifier, seed): make exactly the method's parameters trainable
    lr_grid: tuple[float, ...]
    train_head_apart: bool = True  # the head at HEAD_LR; False: one learning rate for everything
    lr_scale: Callable[[str, nn.Parameter], float] | None = None  # a multiple of the rate for some parameters (LoRA+)


def _full_fine_tuning(model: nn.Module, seed: int) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(True)


METHODS: dict[str, MethodSpec] = {
    "head_only": MethodSpec("head only", lambda m, s: train_only(m, []), (1e-3, 3e-3, 1e-2), False),
    "full_ft": MethodSpec("full fine-tuning", _full_fine_tuning, (3e-5, 1e-4, 3e-4)),
    "pfeiffer": MethodSpec("adapter (Pfeiffer)",
                           lambda m, s: adapters.add_adapter(m, "task", adapters.AdapterConfig("pfeiffer"), seed=s),
                           (1e-3, 3e-3, 1e-2)),
    "houlsby": MethodSpec("adapter (Houlsby)",
                          lambda m, s: adapters.add_adapter(m, "task", adapters.AdapterConfig("houlsby"), seed=s),
                          (1e-3, 3e-3, 1e-2)),
    "soft_prompt": MethodSpec("soft prompt (l=20)",
                              lambda m, s: prompts.add_soft_prompt(m, length=20, init="vocab", seed=s),
                              (0.03, 0.1, 0.3)),
    "prefix": MethodSpec("prefix (l=10)", lambda m, s: prefix.add_prefix(m, length=10, seed=s), (0.01, 0.03, 0.1)),
    "prefix_mlp": MethodSpec("prefix + MLP (l=10)",
                             lambda m, s: prefix.add_prefix(m, length=10, reparameterize=True, mlp_hidden=128, seed=s),
                             (3e-4, 1e-3, 3e-3)),
    "prefix_plus": MethodSpec("Prefix-Tuning+", lambda m, s: prefix_plus.add_prefix_plus(m, seed=s),
                              (1e-3, 3e-3, 1e-2)),
    "lora": MethodSpec("LoRA (r=8, q+v)", lambda m, s: lora.add_lora(m, ("query", "value"), r=8, seed=s),
                       (1e-3, 3e-3, 1e-2)),
}


def _lora_on_nf4(model: nn.Module, seed: int) -> None:
    """QLoRA's recipe on the encoder: every linear layer of the backbone in NF4, then LoRA as in "lora"."""
    quantize_linear_layers(model, "nf4")
    lora.add_lora(model, ("query", "value"), r=8, seed=seed)


# Beside METHODS, not in it: the same LoRA on a 4-bit base, compared with "lora" in lesson 05 (job qlora_sst2).
QUANTIZED: dict[str, MethodSpec] = {
    "lora_nf4": MethodSpec("LoRA (r=8, q+v), NF4 base", _lora_on_nf4, (1e-3, 3e-3, 1e-2)),
}


# Beside METHODS too: the variants of LoRA that peft offers, and IA3, compared with "lora" in lesson 06
# (job variants_sst2). DoRA keeps LoRA's grid. rsLoRA's grid sits half a decade lower: at r = 8 its scale
# alpha/sqrt(r) is sqrt(8) ~ 2.8 times LoRA's alpha/r, so the same step moves the weights ~2.8 times further.
# LoRA+'s grid (the rate of A; every B trains LORAPLUS_RATIO times faster) sits half a decade lower too: its
# authors advise a rate for A somewhat below plain LoRA's. IA3 trains rescaling vectors that start at one, a few
# thousand numbers; its grid sits half a decade higher.
LORAPLUS_RATIO = 16  # lr_B / lr_A = 2^4, a common starting ratio; the best one depends on model and task (not tuned)
VARIANTS: dict[str, MethodSpec] = {
    "dora": MethodSpec("DoRA (r=8, q+v)", lambda m, s: lora.add_lora(m, ("query", "value"), r=8, seed=s, dora=True),
                       (1e-3, 3e-3, 1e-2)),
    "rslora": MethodSpec("rsLoRA (r=8, q+v)",
                         lambda m, s: lora.add_lora(m, ("query", "value"), r=8, seed=s, rslora=True),
                         (3e-4, 1e-3, 3e-3)),
    "loraplus": MethodSpec(f"LoRA+ (r=8, q+v, B x{LORAPLUS_RATIO})",
                           lambda m, s: lora.add_lora(m, ("query", "value"), r=8, seed=s), (3e-4, 1e-3, 3e-3),
                           lr_scale=lora.loraplus_lr_scale(LORAPLUS_RATIO)),
    "ia3": MethodSpec("IA3 (k, v, ff)", lambda m, s: ia3.add_ia3(m), (3e-3, 1e-2, 3e-2)),
}


def _other_table_hint(names) -> str:
    """Where methods missing from the table given do live, as a sentence naming the fix ('' if nowhere)."""
    tables = {"METHODS": METHODS, "QUANTIZED": QUANTIZED, "VARIANTS": VARIANTS}
    found = sorted({table for name in names for table, methods in tables.items() if name in methods})
    return f" {', '.join(map(repr, names))} is in protocol.{found[0]}: pass methods=protocol.{found[0]}." if found else ""


def build_method(method: str, num_labels: int, seed: int, methods: dict[str, MethodSpec] = METHODS) -> nn.Module:
    """A fresh classifier (head drawn from ``seed``) with ``method`` added."""
    if method not in methods:
        raise ValueError(f"Unknown method {method!r}; choose one of {list(methods)}.{_other_table_hint([method])}")
    model = build_classifier(num_labels, seed=seed)
    methods[method].add(model, seed)
    return model


def run(method: str, data: DatasetDict, lr: float, seed: int, tokenizer, budget: dict | None = None,
        head_lr: float = HEAD_LR, methods: dict[str, MethodSpec] = METHODS) -> dict:
    """Train ``method`` once under the protocol; the curve on validation and the final test accuracy."""
    model = build_method(method, len(data["train"].features["label"].names), seed, methods)
    return fit(model, data, lr, seed, tokenizer, budget=budget, head_lr=head_lr, **_training_options(methods[method]))


def probe(method: str, data: DatasetDict, lr: float, tokenizer, methods: dict[str, MethodSpec] = METHODS) -> dict:
    """Seed 0's run of ``method`` at ``lr``, then :data:`PROBE_EXTRA_EPOCHS` more epochs from where it ended."""
    model = build_method(method, len(data["train"].features["label"].names), SEEDS[0], methods)
    return fit_then_continue(model, data, lr, tokenizer, **_training_options(methods[method]))


def _training_options(spec: MethodSpec) -> dict:
    return {"head_apart": spec.train_head_apart, "lr_scale": spec.lr_scale}


def fit(model: nn.Module, data: DatasetDict, lr: float, seed: int, tokenizer, budget: dict | None = None,
        head_apart: bool = True, extra_loss=None, head_lr: float = HEAD_LR, lr_scale=None) -> dict:
    """Train what ``model`` marks trainable (the head at ``head_lr`` if ``head_apart``); the numbers stored per run."""
    history = train(model, tokenizer, data, lr=lr, seed=seed, head_lr=head_lr if head_apart else None,
                    extra_loss=extra_loss, lr_scale=lr_scale, **(budget or BUDGET))
    return {"lr": lr, "seed": seed, "trainable": history.trainable_parameters,
            "validation_curve": history.eval_accuracy, "validation": history.final_accuracy,
            "test": evaluate(model, data["test"], tokenizer)}


def fit_then_continue(model: nn.Module, data: DatasetDict, lr: float, tokenizer, budget: dict | None = None,
                      measure=None, **fit_options) -> dict:
    """A probe of a ``model`` built with seed 0: :func:`fit` for the budget, then :data:`PROBE_EXTRA_EPOCHS` more.

    The budget's schedule has decayed the rate to zero, so going on needs a new one: a fresh
    AdamW with its own warm-up and linear decay over the extra epochs (a warm restart). The run
    the budget's curve describes is kept, not replaced; restarting from scratch with one long
    schedule would instead change how long the rate stays high, and so change the run itself.
    ``measure(model, numbers)`` may add numbers at both points (lesson 04 tests on another length).
    """
    measure = measure or (lambda model, numbers: numbers)
    budget = budget or BUDGET
    at_budget = measure(model, fit(model, data, lr, SEEDS[0], tokenizer, budget=budget, **fit_options))
    more = fit(model, data, lr, SEEDS[0] + CONTINUATION_SEED_OFFSET, tokenizer,
               budget={**budget, "epochs": PROBE_EXTRA_EPOCHS}, **fit_options)
    return continued(at_budget, measure(model, more))


def continued(at_budget: dict, more: dict) -> dict:
    """A probe's stored numbers: those after the extra epochs, ``at_budget`` kept, and one curve across both."""
    return {**more, "seed": at_budget["seed"], "at_budget": at_budget,
            "validation_curve": at_budget["validation_curve"] + more["validation_curve"]}


def choose_lr(grid_runs: list[dict]) -> float:
    """The learning rate with the best final validation accuracy (the smaller one on a tie)."""
    return max(sorted(grid_runs, key=lambda r: r["lr"]), key=lambda r: r["validation"])["lr"]


GRID_EXTENSIONS = 2  # how often a grid may grow past an edge winner, per method


def rate_beyond_edge(tried: list[float], chosen: float) -> float | None:
    """If ``chosen`` is the smallest or largest rate tried, the next one out; else None.

    A best rate at the edge of its grid says the optimum may lie outside it, so the
    grid grows by one half-decade step that way (rates follow 1, 3, 10, 30, ...).
    """
    if chosen not in (min(tried), max(tried)) or len(tried) < 2:
        return None
    exponent = math.floor(math.log10(chosen) + 1e-9)
    first_digit_is_one = chosen / 10**exponent < 2
    if chosen == min(tried):
        return float(f"{(3 * 10**(exponent - 1) if first_digit_is_one else 10**exponent):.0e}")
    return float(f"{(3 * 10**exponent if first_digit_is_one else 10**(exponent + 1)):.0e}")


def still_climbing(curves: list[list[float]], threshold: float = 0.01) -> bool:
    """True when validation accuracy still rose by more than ``threshold`` in the last epoch (mean over seeds)."""
    return statistics.mean(curve[-1] - curve[-2] for curve in curves) > threshold


def probe_key(method: str, lr: float) -> str:
    """The stored key of ``method``'s probe at rate ``lr``: seed 0, continued :data:`PROBE_EXTRA_EPOCHS` epochs."""
    return f"{method}|lr={lr:g}|seed={SEEDS[0]}|continued={PROBE_EXTRA_EPOCHS}"


def grid_runs(runs: dict, method: str) -> dict[float, dict]:
    """Every stored seed-0 run of ``method`` without a changed budget: its learning-rate grid, extensions included."""
    found = {}
    for key, run in runs.items():
        name, lr, seed = (key.split("|") + ["", ""])[:3]
        if name == method and seed == f"seed={SEEDS[0]}" and key.count("|") == 2:
            found[run["lr"]] = run
    return dict(sorted(found.items()))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof = 1)."""
    return statistics.mean(values), statistics.stdev(values)


def verdict(lower: float, upper: float) -> str:
    """What an interval for a difference allows us to say: a rank only when it excludes 0."""
    return "separable" if lower > 0 or upper < 0 else "not separable here"


def difference_interval(tests_a: list[float], tests_b: list[float], test_examples: int, resamples: int = 4000,
                        level: float = 0.95, seed: int = 0, min_seeds: int = 2) -> tuple[float, float, float]:
    """Mean test accuracy of A minus B, with an interval covering the seeds *and* the test set's sampling.

    ``tests_a`` / ``tests_b`` hold one test accuracy per seed (what the protocol stores).
    Each bootstrap round draws a seed of each side, then redraws each side's accuracy as
    the share right in ``test_examples`` fresh test examples (binomial). The stored runs
    keep no per-example predictions, so the two test draws are independent: the interval
    is wider than a paired one would be. A "separable" here is safe; a "not separable
    here" may be the test set's size speaking. Returns ``(difference, lower, upper)``.
    """
    if len(tests_a) < min_seeds or len(tests_b) < min_seeds:
        raise ValueError(f"Each side needs the test accuracies of at least {min_seeds} seeds to show the seed spread; "
                         f"got {len(tests_a)} and {len(tests_b)}. For one run a side, use single_run_interval.")
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for tests in (tests_a, tests_b):
        accuracy = torch.tensor(tests, dtype=torch.float64)[torch.randint(0, len(tests), (resamples,),
                                                                           generator=generator)]
        count = torch.full((resamples,), float(test_examples), dtype=torch.float64)
        draws.append(torch.binomial(count, accuracy, generator=generator) / test_examples)
    differences = draws[0] - draws[1]
    tail = (1 - level) / 2
    lower, upper = torch.quantile(differences, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return statistics.mean(tests_a) - statistics.mean(tests_b), lower, upper


def single_run_interval(accuracy_a: float, accuracy_b: float, examples: int) -> tuple[float, float, float]:
    """A minus B for one run a side: an interval over the evaluation examples' sampling only.

    One seed a side shows no seed spread, so this interval is narrower than
    :func:`difference_interval`'s: its "not separable here" is safe, its "separable" is
    not yet a rank (more seeds could still erase it).
    """
    return difference_interval([accuracy_a], [accuracy_b], examples, min_seeds=1)


def compare(summary: dict[str, dict], first: str, second: str, test_examples: int) -> tuple[float, float, float, str]:
    """``first`` minus ``second`` in a :func:`summarize` table: difference, interval and :func:`verdict`."""
    difference, lower, upper = difference_interval(summary[first]["test"], summary[second]["test"], test_examples)
    return difference, lower, upper, verdict(lower, upper)


def tiers(summary: dict[str, dict], test_examples: int) -> list[list[str]]:
    """The methods in tiers from the best down, instead of ranks.

    The first tier is the best method and every method not separable from it
    (:func:`compare`); the next tier starts at the best of the rest, and so on. Within a
    tier, the order of the means is noise as far as this comparison can tell.
    """
    left = sorted(summary, key=lambda method: -summary[method]["mean"])
    found = []
    while left:
        best = left[0]
        tier = [best] + [m for m in left[1:] if compare(summary, best, m, test_examples)[3] != "separable"]
        found.append(tier)
        left = [m for m in left if m not in tier]
    return found


def tier_of(tiers_found: list[list[str]], method: str) -> int:
    """1 for the top tier, 2 for the next, ..."""
    return next(i for i, tier in enumerate(tiers_found, start=1) if method in tier)


HEAD_RATE_CHECK = 1e-2  # the other head rate tried, on SST-2 (precompute job head_rate_sst2)


def head_rate_check(summary: dict[str, dict], head_runs: dict[str, dict], validation_examples: int) -> dict[str, dict]:
    """Does the head's rate matter? Per method of ``summary``: its seed-0 run at the chosen rate with the head at
    :data:`HEAD_LR`, against the same run with the head at :data:`HEAD_RATE_CHECK` (``head_runs``, keyed like the
    protocol's runs). The difference is in *validation* accuracy, where a rate is chosen."""
    rows = {}
    for method, row in summary.items():
        other = head_runs.get(f"{method}|lr={row['lr']:g}|seed={SEEDS[0]}")
        if other is None:
            continue  # not stored (yet), or a method without a separate head
        mine = row["runs"][0]
        difference, lower, upper = single_run_interval(other["validation"], mine["validation"], validation_examples)
        rows[method] = {"validation": (mine["validation"], other["validation"]), "test": (mine["test"], other["test"]),
                        "difference": difference, "interval": (lower, upper), "verdict": verdict(lower, upper)}
    return rows


def head_rate_choice(rows: dict[str, dict]) -> float:
    """The protocol keeps :data:`HEAD_LR` unless the other rate is separably better on validation for some method."""
    better = [m for m, row in rows.items() if row["verdict"] == "separable" and row["difference"] > 0]
    return HEAD_RATE_CHECK if better else HEAD_LR


def save_for_task(method: str, model: nn.Module, folder) -> int:
    """Write what one more task costs on disk with ``method``; return the bytes written.

    PEFT methods save only their own tensors and the head (their ``save_*`` verb);
    head-only training saves the head; full fine-tuning must save the whole model.
    The prefix with an MLP is folded first: the MLP is needed for training only.
    """
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if method in ("pfeiffer", "houlsby"):
        adapters.save_adapter(model, "task", folder)
    elif method == "soft_prompt":
        prompts.save_soft_prompt(model, folder)
    elif method in ("prefix", "prefix_mlp"):
        model.prefix.fold()
        prefix.save_prefix(model, folder)
    elif method == "prefix_plus":
        prefix_plus.save_prefix_plus(model, folder)
    elif method in ("lora", "dora", "rslora", "loraplus"):
        lora.save_lora(model, folder)
    elif method == "ia3":
        ia3.save_ia3(model, folder)
    else:  # head_only keeps the shared backbone; full_ft changed all of it
        tensors = model.head.state_dict() if method == "head_only" else model.state_dict()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "weights.safetensors"))
    return sum(file.stat().st_size for file in folder.iterdir())


def summarize(stored: dict, methods: dict | None = None) -> dict[str, dict]:
    """Per method, from a stored protocol run: the grid, the chosen lr, the curves, test mean ± sample std.

    ``methods`` (default :data:`METHODS`) maps identifiers to anything with a ``label``
    and an ``lr_grid``, e.g. ``peft_teach.transfer.TARGET_METHODS``.
    """
    runs = stored["runs"]
    methods = methods or METHODS
    stored_methods = sorted({key.split("|")[0] for key in runs})
    if runs and not set(stored_methods) & set(methods):
        raise ValueError(f"None of the stored methods {stored_methods} is in the table given "
                         f"({list(methods)}).{_other_table_hint(stored_methods[:1])}")
    summary = {}
    for method, spec in methods.items():
        grid = grid_runs(runs, method)
        if not set(spec.lr_grid) <= set(grid):
            continue  # not precomputed (yet)
        lr = choose_lr(list(grid.values()))
        seeds = [runs.get(f"{method}|lr={lr:g}|seed={seed}") for seed in SEEDS]
        if any(run is None for run in seeds):
            continue
        tests = [run["test"] for run in seeds]
        mean, std = mean_std(tests)
        summary[method] = {"label": spec.label, "lr": lr, "trainable": seeds[0]["trainable"],
                           "grid": {g: run["validation"] for g, run in grid.items()},
                           "curves": [run["validation_curve"] for run in seeds],
                           "test": tests, "mean": mean, "std": std, "runs": seeds,
                           "probe": runs.get(probe_key(method, lr))}  # None unless it was still climbing
    return summary


def _label_width(summary: dict[str, dict]) -> int:
    """The longest label (at least 22 characters): the tables' columns line up whatever the methods."""
    return max([22, *(len(row["label"]) for row in summary.values())])


def format_grid(summary: dict[str, dict]) -> str:
    """One line per method: final validation accuracy (seed 0) at each grid rate; ``*`` marks the chosen one."""
    width = _label_width(summary)
    lines = []
    for row in summary.values():
        cells = [f"{lr:g}: {accuracy:.3f}{'*' if lr == row['lr'] else ' '}" for lr, accuracy in row["grid"].items()]
        lines.append(f"{row['label']:<{width}} " + "   ".join(cells))
    return "\n".join(lines)


def format_probes(summary: dict[str, dict]) -> str:
    """One line per method with a probe: seed 0 after the budget, then after the extra epochs that continue it.

    The probe is reported, never swapped in: it is one seed, and a longer budget for one
    method only would break the same-budget rule. It says what the budget cost the method.
    """
    width = _label_width(summary)
    lines = []
    for row in summary.values():
        probe = row["probe"]
        if probe is None:
            continue
        budget, curve = probe["at_budget"], probe["validation_curve"]
        best_epoch = max(range(len(curve)), key=curve.__getitem__) + 1
        lines.append(f"{row['label']:<{width}} {len(budget['validation_curve'])} epochs: validation {budget['validation']:.3f}, "
                     f"test {budget['test']:.3f}  |  +{len(curve) - len(budget['validation_curve'])} epochs: "
                     f"validation {probe['validation']:.3f}, test {probe['test']:.3f} "
                     f"(best validation {max(curve):.3f} at epoch {best_epoch} of {len(curve)})")
    if not lines:
        return "no method was still climbing"
    return "\n".join([f"probes: seed 0 after the budget | then {PROBE_EXTRA_EPOCHS} more epochs from its weights "
                      "(a new warm-up and decay)", *lines])


def format_probe_curve(probe: dict, digits: int = 3) -> str:
    """A probe's validation accuracy after each epoch, ``|`` where the extra epochs begin their new schedule."""
    cut = len(probe["at_budget"]["validation_curve"])
    values = [f"{accuracy:.{digits}f}" for accuracy in probe["validation_curve"]]
    return " ".join(values[:cut]) + " | " + " ".join(values[cut:])


def format_convergence(summary: dict[str, dict], window: int | None = None) -> str:
    """One line per method: the still-climbing test, and the slower trend (mean gain over the last ``window`` epochs).

    ``window`` defaults to 4 epochs, or to every epoch after the first when the curves are shorter.
    """
    shortest = min(len(curve) for row in summary.values() for curve in row["curves"])
    window = min(4, shortest - 1) if window is None else window
    if not 1 <= window < shortest:
        raise ValueError(f"window must be 1 to {shortest - 1} epochs: the shortest curve has {shortest} points, "
                         f"and a gain needs the epoch before the window. Got {window!r}.")
    width = _label_width(summary)
    lines = []
    for row in summary.values():
        gain = statistics.mean(curve[-1] - curve[-1 - window] for curve in row["curves"])
        lines.append(f"{row['label']:<{width}} still climbing: {'yes' if still_climbing(row['curves']) else 'no':<4}"
                     f"gain over the last {window} epochs {gain:+.3f}")
    return "\n".join(lines)


def format_results(summary: dict[str, dict]) -> str:
    """One line per method: trainable parameters, chosen rate, test mean ± sample std over the seeds."""
    width = _label_width(summary)
    lines = [f"{'method':<{width}} {'trainable':>10} {'lr':>7}   test accuracy (mean ± sample std, {len(SEEDS)} seeds)"]
    for row in summary.values():
        lines.append(f"{row['label']:<{width}} {row['trainable']:>10,} {row['lr']:>7g}   {row['mean']:.3f} ± {row['std']:.3f}")
    return "\n".join(lines)
