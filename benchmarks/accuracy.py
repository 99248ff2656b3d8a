"""Test accuracy per method and model on MNIST-1D, and LM loss per method, all through ``fit``.

Every run: ``models.<model>(plan)``, a LocalNet with Adam per stage, ``fit`` with a cosine
schedule, batch 128 (32 windows for the LM), one CPU thread, a fixed number of steps per model:
that step count is the stated CPU budget (the table prints the seconds each run took). The
output head's accuracy (or loss, in nats per character) is the method's result; every head's is
printed beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy.py            # full budget, minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy.py --quick    # about a minute
"""
import argparse
import time

import torch

from minilocal import LocalNet, Plan, models
from minilocal.data import mnist1d
from minilocal.text import CharTokenizer, lm_dataset, make_corpus
from minilocal.train import fit

N_BLOCKS = 4
METHODS = {"backprop": Plan.backprop, "greedy": Plan.greedy, "overlapping": Plan.overlapping,
           "chunked(2)": lambda n: Plan.chunked(n, 2)}
# model -> (builder, Adam lr, steps at full budget, steps with --quick)
VISION = {"mlp": (models.mlp, 3e-3, 1500, 300),
          "cnn1d": (models.cnn1d, 1e-2, 1000, 200),
          "resnet1d": (models.resnet1d, 3e-3, 500, 100)}
LM = (3e-3, 300, 100)


def run(builder, plan, data, lr, steps, batch_size, seed):
    """Train one model under one plan; returns (history, seconds)."""
    net = LocalNet(*builder(plan), plan, optimizer=lambda ps: torch.optim.Adam(ps, lr=lr))
    start = time.perf_counter()
    history = fit(net, data, steps=steps, batch_size=batch_size, lr_schedule="cosine",
                  eval_every=steps, seed=seed, progress=False)
    return history, time.perf_counter() - start


def lm_data(block_size=64):
    """The generated corpus as next-character windows, 90% train / 10% test."""
    text = make_corpus(n_lines=3000, seed=0)
    tokenizer = CharTokenizer(text)
    x, y = lm_dataset(tokenizer.encode(text), block_size)
    cut = int(0.9 * len(x))
    return {"x": x[:cut], "y": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}, tokenizer.vocab_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred steps per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pick = 3 if args.quick else 2
    data = mnist1d()
    print(f"MNIST-1D ({len(data['x'])} train / {len(data['x_test'])} test), {N_BLOCKS} blocks, "
          f"Adam + cosine, batch 128, seed {args.seed}, 1 CPU thread")
    print(f"{'model':<10}{'method':<13}{'steps':>6}{'output acc':>12}{'s/run':>8}   every head")
    for name, spec in VISION.items():
        builder, lr, steps = spec[0], spec[1], spec[pick]
        for method, make in METHODS.items():
            h, seconds = run(builder, make(N_BLOCKS), data, lr, steps, 128, args.seed)
            accs = h["test_acc"][-1]
            print(f"{name:<10}{method:<13}{steps:>6}{accs[-1]:>12.3f}{seconds:>8.1f}   "
                  + " ".join(f"{a:.3f}" for a in accs))

    data, vocab = lm_data()
    lr, steps = LM[0], LM[pick - 1]
    print(f"\ntiny_lm (d_model 64, {N_BLOCKS} blocks) on the generated corpus: {len(data['x'])} "
          f"train / {len(data['x_test'])} test windows of 64 characters, vocab {vocab}, batch 32")
    print(f"{'method':<13}{'steps':>6}{'test loss':>11}{'s/run':>8}   every head (nats/char)")
    builder = lambda plan: models.tiny_lm(plan, vocab)  # noqa: E731
    for method, make in METHODS.items():
        h, seconds = run(builder, make(N_BLOCKS), data, lr, steps, 32, args.seed)
        losses = h["test_loss"][-1]
        print(f"{method:<13}{steps:>6}{losses[-1]:>11.3f}{seconds:>8.1f}   "
              + " ".join(f"{v:.3f}" for v in losses))


if __name__ == "__main__":
    main()
