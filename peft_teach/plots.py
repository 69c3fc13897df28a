"""The few plots several lessons share."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .train import History


def plot_histories(histories: dict[str, History], title: str = "") -> plt.Figure:
    """Training loss (per step, drawn against epochs) and validation accuracy per epoch."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.2))
    for name, history in histories.items():
        steps_per_epoch = len(history.train_loss) / max(1, len(history.eval_accuracy))
        epochs = [(step + 1) / steps_per_epoch for step in range(len(history.train_loss))]
        loss_ax.plot(epochs, history.train_loss, label=name, alpha=0.8)
        acc_ax.plot(range(1, len(history.eval_accuracy) + 1), history.eval_accuracy, marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_parameters(points: dict[str, tuple[int, float]], title: str = "") -> plt.Figure:
    """One dot per method: trainable parameters (log scale) against accuracy."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (parameters, accuracy) in points.items():
        ax.scatter(parameters, accuracy, s=40)
        ax.annotate(name, (parameters, accuracy), textcoords="offset points", xytext=(5, 4))
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel="accuracy", title=title)
    fig.tight_layout()
    return fig


def plot_seed_curves(ax: plt.Axes, summary: dict[str, dict], steps_per_epoch: int | None = None,
                     colors: dict[str, str] | None = None) -> None:
    """Validation accuracy after each epoch for every method of a protocol summary: seed mean, min-max band.

    ``summary`` is ``protocol.summarize``'s (or ``transfer.summarize``'s ``"methods"``); with
    ``steps_per_epoch`` the x axis counts training steps instead of epochs.
    """
    for method, row in summary.items():
        curves = np.array(row["curves"])  # (seeds, epochs)
        x = np.arange(1, curves.shape[1] + 1) * (steps_per_epoch or 1)
        (line,) = ax.plot(x, curves.mean(0), marker="o", markersize=3, color=(colors or {}).get(method),
                          label=row["label"])
        ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
    ax.set(xlabel="training steps" if steps_per_epoch else "epoch", ylabel="validation accuracy")
