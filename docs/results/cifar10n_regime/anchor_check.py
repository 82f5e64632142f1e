"""Why the plain anchor-point estimate of T sees a tenth of CIFAR-10N worse_label's noise (docs/estimate-t.md).

Runs the CE checkpoint of cifar10n_regime (seed 0, best noisy-validation epoch) over the 46,000 CIFAR-10
training images outside the run's 4,000, which it never saw, and prints: the data's T on them against the
anchor estimates without and with a temperature (fitted to 400 of those images' noisy labels, as
`lsl estimate-t --temperature val` fits one to the val split), and, per decile of the model's confidence among
the images predicted as class i, the human noise rate, the share truly of class i, the model's p(i | x) and the
share labelled i. From the project root, after the run:

    python docs/results/cifar10n_regime/anchor_check.py "logs/cifar10n_regime/seed_everything=0__loss=ce"
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser

from lsl.data import NoisyLabelDataModule
from lsl.estimate import estimate_transition_matrix
from lsl.estimate.command import load_data_module, load_model
from lsl.inference import predict_logits
from lsl.noise import realised_transition_matrix
from lsl.temperature import fit_temperature_noisy, scaled_probabilities

run = Path(sys.argv[1])
subset, config = load_data_module(run / "config.yaml")
subset.augment = False
subset.setup("fit")
seen = set(subset.train_set.indices.tolist()) | set(subset.val_set.indices.tolist())

data = copy.deepcopy(config["data"])
data["init_args"].update(train_subset=None, balanced_subset=False, val_fraction=0.0)
parser = ArgumentParser(exit_on_error=False)
parser.add_subclass_arguments(NoisyLabelDataModule, "data", required=True)
full = parser.instantiate_classes(parser.parse_object({"data": data})).data
full.augment = False
full.setup("fit")
unseen = torch.tensor([index not in seen for index in full.train_set.indices.tolist()])

model = load_model(run / "checkpoints" / "best.ckpt", config, torch.device("cpu"))
logits = predict_logits(model, full, full.train_set)[unseen]
noisy, clean = full.train_set.noisy[unseen].numpy(), full.train_set.clean[unseen].numpy()
K = full.num_classes
np.set_printoptions(precision=2, suppress=True, linewidth=150)

T = realised_transition_matrix(clean, noisy, K)
p = logits.softmax(dim=1).numpy()
t = fit_temperature_noisy(logits[:400], noisy[:400])
print(f"{len(clean)} unseen images, human noise rate {np.mean(noisy != clean):.3f}, "
      f"accuracy on the clean labels {np.mean(p.argmax(1) == clean):.3f}")
print("data's T, diagonal          ", T.diagonal(), f"mean {T.diagonal().mean():.3f}")
for name, probabilities in (("estimate, t = 1", p), (f"estimate, t = {t:.2f}", scaled_probabilities(logits, t))):
    estimate, _ = estimate_transition_matrix(probabilities)
    print(f"{name:<28}", estimate.diagonal(), f"mean {estimate.diagonal().mean():.3f}, "
          f"mean |T_est - T| {np.abs(estimate - T).mean():.4f}, max row L1 {np.abs(estimate - T).sum(1).max():.3f}")

print("decile of p(i | x) among images predicted as i (0: least sure), mean over classes:")
print("  decile | human noise rate | truly i | p(i | x) | labelled i")
predicted = p.argmax(1)
for decile in range(10):
    rows = []
    for i in range(K):
        mine = np.where(predicted == i)[0]
        low, high = np.percentile(p[mine, i], [10 * decile, 10 * (decile + 1)])
        chosen = mine[(p[mine, i] >= low) & (p[mine, i] <= high)]
        rows.append([np.mean(noisy[chosen] != clean[chosen]), np.mean(clean[chosen] == i), p[chosen, i].mean(),
                     np.mean(noisy[chosen] == i)])
    print(f"  {decile:6d} | " + " | ".join(f"{value:.3f}" for value in np.mean(rows, axis=0)))
top, every = [], []
for i in range(K):
    mine = np.where(clean == i)[0]
    surest = mine[p[mine, i] >= np.percentile(p[mine, i], 90)]
    top.append(np.mean(noisy[surest] != i))
    every.append(np.mean(noisy[mine] != i))
print(f"images truly of class i: human noise rate {np.mean(every):.3f}; on the tenth the model is surest of "
      f"{np.mean(top):.3f}")
