"""The shared plots draw what they are given."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from peft_teach.plots import plot_seed_curves  # noqa: E402


def test_seed_curves_draw_the_seed_mean_against_steps():
    summary = {"a": {"label": "method a", "curves": [[0.5, 0.7, 0.9], [0.3, 0.5, 0.7]]},
               "b": {"label": "method b", "curves": [[0.6, 0.6, 0.6], [0.6, 0.6, 0.6]]}}
    fig, ax = plt.subplots()
    plot_seed_curves(ax, summary, steps_per_epoch=16, colors={"a": "red"})
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"method a", "method b"}
    np.testing.assert_allclose(lines["method a"].get_xdata(), [16, 32, 48])
    np.testing.assert_allclose(lines["method a"].get_ydata(), [0.4, 0.6, 0.8])
    assert lines["method a"].get_color() == "red"
    assert ax.get_xlabel() == "training steps"
    plt.close(fig)
