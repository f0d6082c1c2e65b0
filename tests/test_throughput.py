"""The throughput benchmark counts the FLOP of the training loop's own step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import throughput  # noqa: E402


def test_throughput_counts_the_flop_of_a_training_step():
    row = throughput.measure("classifier", "mnist", False, 1, "cpu")
    # classifier default on 28x28: conv FLOP of forward and backward; a hand count of the forward's convolutions
    from siamdiff.nets.classifier import ClassifierTrainer
    from siamdiff.training.options import TrainOptions

    cfg = ClassifierTrainer().recipe(TrainOptions(model="default"), throughput.synthetic("mnist", 20, "train", 0), None).model
    chans, size, forward = [cfg.in_channels, min(cfg.widths[0], 64)], 28, 0
    forward += 2 * 9 * chans[0] * chans[1] * size * size
    cin = chans[1]
    for i, w in enumerate(cfg.widths):
        for c in [cin] + [w] * (cfg.depth - 1):  # before the pooling
            forward += 2 * 9 * c * w * size * size
        cin = w
        if i < len(cfg.widths) - 1 or cfg.after_pool:
            size //= 2
        forward += cfg.after_pool * 2 * 9 * w * w * size * size  # after it (a conv-pool-conv stage)
    per_image = row["gflop_per_step"] * 1e9 / row["batch_size"]
    # backward costs about twice the forward (input and weight gradients; the first layer has no input gradient)
    assert 2.5 * forward < per_image < 3.2 * forward
    assert row["s_per_step"] > 0 and row["tflop_per_s"] > 0
