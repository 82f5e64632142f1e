"""Training throughput: lsl's Trainer path against a minimal hand-written PyTorch loop.

Both paths train the same network on the same uint8 images with the same loss (cross-entropy), optimizer
(SGD, Nesterov 0.9, lr 0.1, weight decay 1e-4), batch size and augmentation (pad + random crop + flip on
whole batches, then normalisation), with the images kept on the device. lsl's path is what ``lsl fit``
runs: the Classifier with all its training metrics, the data module, TensorBoard logging every 50 steps
(validation and checkpoints off, as the loop has none). The runs alternate A/B in one process; each
reports images/s over the steps after a warm-up, and the table gives the median over rounds. The process
tunes glibc's allocator as ``lsl`` does (``lsl.cli.tune_host_allocator``), so both paths run with it;
``--malloc glibc-default`` measures both without it.

On an eager CPU run a second table splits each step into the network's forward + backward (timed by the
same hooks in both paths, see ``NetworkClock``) and the rest, and gives the ratio at equal network time:
the network's own speed varies by a few percent from run to run, more than the framework costs. The
``lightning`` path runs the hand loop's step as a bare LightningModule, which separates Lightning's loop
from what lsl adds on top of it.

    python benchmarks/throughput.py                          # CPU, or CUDA when present
    python benchmarks/throughput.py --precision bf16-mixed   # one knob at a time
    python benchmarks/throughput.py --channels-last --compile --models resnet32
    python benchmarks/throughput.py --malloc glibc-default
    python benchmarks/throughput.py --models smallcnn --paths lsl,hand,lightning   # Lightning's own share

The images are random (throughput does not depend on what they show): CIFAR-sized 3x32x32 with pad-4
crops and flips for ResNet-32, Fashion-MNIST-sized 1x28x28 with flips for the small CNN.
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

from lsl import Classifier, CrossEntropy, NoisyLabelDataModule
from lsl.cli import tune_host_allocator
from lsl.data import InMemorySource, NoisyDataset, random_crop_flip
from lsl.models import SmallCNN, resnet32

DEFAULT_STEPS = {"resnet32": {"cpu": 40, "cuda": 1000}, "smallcnn": {"cpu": 400, "cuda": 2000}}


class RandomImages(InMemorySource):
    """Random uint8 images and labels, decoded once, like CIFAR or Fashion-MNIST in memory."""

    def __init__(self, name: str, shape: tuple[int, int, int], crop_padding: int, size: int) -> None:
        self.name, self.shape, self.crop_padding, self.flip, self.size = name, shape, crop_padding, True, size
        self.mean, self.std = (0.5,) * shape[0], (0.25,) * shape[0]
        self.root = Path(tempfile.gettempdir())

    @property
    def num_classes(self) -> int:
        return 10

    def decode(self, train: bool) -> tuple[Tensor, np.ndarray]:
        generator = torch.Generator().manual_seed(int(train))
        images = torch.randint(0, 256, (self.size, *self.shape), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, 10, (self.size,), generator=generator).numpy()


WORKLOADS = {
    "resnet32": (resnet32, ("cifar-sized", (3, 32, 32), 4)),
    "smallcnn": (functools.partial(SmallCNN, width=32, hidden=128, pooled_size=7), ("fmnist-sized", (1, 28, 28), 0)),
}


def optimizer(parameters) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


class NetworkClock:
    """CPU time spent in the network's forward and backward, timed by the same hooks in both paths.

    Module hooks time the forward; the backward runs from the loss's gradient hook to the last parameter's
    gradient. The rest of a step is what each path does around the same network (fetching, augmentation,
    loss, metrics, the optimizer update and, for lsl, Lightning's loop), measured without the few percent by
    which the network's own speed varies from run to run. Only meaningful for eager CPU runs.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.seconds, self._mark = 0.0, 0.0
        network.register_forward_pre_hook(lambda *_: self._start())
        network.register_forward_hook(lambda *_: self._lap())
        for parameter in network.parameters():
            parameter.register_post_accumulate_grad_hook(lambda _: self._lap())

    def backward_starts(self, loss: Tensor) -> None:
        """Call with the loss before its backward."""
        loss.register_hook(lambda _: self._start())

    def _start(self) -> None:
        self._mark = time.perf_counter()

    def _lap(self) -> None:
        now = time.perf_counter()
        self.seconds += now - self._mark
        self._mark = now


@dataclass
class Run:
    """One timed run: images/s, and the network's forward + backward time per step when it was clocked."""

    images_per_second: float
    network_ms: float | None = None
    rest_ms: float | None = None

    @classmethod
    def timed(cls, seconds: float, args, clock: NetworkClock | None) -> Run:
        if clock is None:
            return cls(args.steps * args.batch_size / seconds)
        network_ms = 1000 * clock.seconds / args.steps
        return cls(args.steps * args.batch_size / seconds, network_ms, 1000 * seconds / args.steps - network_ms)


class StepTimer(pl.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step (and the clock over it)."""

    def __init__(self, warmup: int, device: torch.device, clock: NetworkClock | None) -> None:
        self.warmup, self.device, self.clock = warmup, device, clock
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _synchronize(self.device)
            self.start = time.perf_counter()
            if self.clock is not None:
                self.clock.seconds = 0.0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.clock is not None:
            self.clock.backward_starts(loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _synchronize(self.device)
        self.end = time.perf_counter()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clocked(args) -> bool:
    """Whether the network is clocked: host timestamps mean nothing for CUDA's queued kernels or compiled code."""
    return torch.device(args.device).type == "cpu" and not args.compile


def _clock(network: torch.nn.Module, args) -> NetworkClock | None:
    return NetworkClock(network) if _clocked(args) else None


def lsl_path(workload: str, source: RandomImages, args, device: torch.device) -> Run:
    backbone = WORKLOADS[workload][0]
    model = Classifier(backbone=backbone, loss=CrossEntropy(), optimizer=optimizer, scheduler=None,
                       channels_last=args.channels_last, compile=args.compile)
    data = NoisyLabelDataModule(dataset=source, val_fraction=0.0, batch_size=args.batch_size,
                                artifact_dir=str(args.workdir / "artifacts"))
    return _timed_fit(model, model.network, args, device, TensorBoardLogger(args.workdir / "logs", name=workload),
                      datamodule=data)


def _timed_fit(model: pl.LightningModule, network: torch.nn.Module, args, device: torch.device, logger,
               datamodule: pl.LightningDataModule | None = None) -> Run:
    clock = _clock(network, args)
    timer = StepTimer(args.warmup, device, clock)
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=args.precision,
                         max_steps=args.warmup + args.steps, limit_val_batches=0, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
                         logger=logger, callbacks=[timer])
    trainer.fit(model, datamodule=datamodule)
    return Run.timed(timer.end - timer.start, args, clock)


def _network(workload: str, args, device: torch.device) -> torch.nn.Module:
    network = WORKLOADS[workload][0](10).to(device)
    if args.channels_last:
        network.to(memory_format=torch.channels_last)
    if args.compile:
        network.compile()
    return network


def _augment_and_normalise(images: Tensor, source: RandomImages, mean: Tensor, std: Tensor, args) -> Tensor:
    """The hand-written loop's batch transform, as a researcher would write it."""
    x = random_crop_flip(images, source.crop_padding, source.flip)
    x = (x.float() / 255 - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def hand_path(workload: str, source: RandomImages, args, device: torch.device) -> Run:
    images, labels = source.load(train=True)
    images, labels = images.to(device), torch.as_tensor(labels).to(device)
    mean = torch.tensor(source.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(source.std, device=device).view(1, -1, 1, 1)
    network = _network(workload, args, device)
    clock = _clock(network, args)
    sgd = optimizer(network.parameters())
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed"
                else nullcontext())
    order, cursor = torch.randperm(len(labels), device=device), 0
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _synchronize(device)
            start = time.perf_counter()
            if clock is not None:
                clock.seconds = 0.0
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(labels), device=device), 0
        batch = order[cursor:cursor + args.batch_size]
        cursor += args.batch_size
        x = _augment_and_normalise(images[batch], source, mean, std, args)
        with autocast:
            logits = network(x)
        loss = F.cross_entropy(logits.float(), labels[batch])
        sgd.zero_grad(set_to_none=True)
        if clock is not None:
            clock.backward_starts(loss)
        loss.backward()
        sgd.step()
    _synchronize(device)
    return Run.timed(time.perf_counter() - start, args, clock)


class MinimalModule(pl.LightningModule):
    """The hand-written loop's step inside Lightning: no lsl module, data module, metrics or logger."""

    def __init__(self, workload: str, source: RandomImages, args) -> None:
        super().__init__()
        self.network, self.source, self.args = _network(workload, args, torch.device("cpu")), source, args
        self.register_buffer("mean", torch.tensor(source.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(source.std).view(1, -1, 1, 1))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = _augment_and_normalise(batch.input, self.source, self.mean, self.std, self.args)
        return F.cross_entropy(self.network(x).float(), batch.noisy_target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return optimizer(self.parameters())

    def train_dataloader(self) -> DataLoader:
        images, labels = self.source.load(train=True)
        samples = NoisyDataset(images, labels, labels, np.arange(len(labels))).to(self.device)
        return DataLoader(samples, batch_size=self.args.batch_size, shuffle=True, collate_fn=lambda batch: batch)


def minimal_lightning_path(workload: str, source: RandomImages, args, device: torch.device) -> Run:
    """Lightning's own cost: the hand loop's step as a minimal LightningModule, on lsl's in-memory dataset."""
    model = MinimalModule(workload, source, args)
    return _timed_fit(model, model.network, args, device, logger=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="resnet32,smallcnn", help="comma-separated: resnet32, smallcnn")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per run (default: about 10 s of work, see DEFAULT_STEPS)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CPU, 50 GPU)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs per model")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (the recipes use 128; "
                        "smaller only to keep a smoke run short)")
    parser.add_argument("--images", type=int, default=50_000, help="training images in memory")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--malloc", default="tuned", choices=["tuned", "glibc-default"],
                        help="the host allocator for both paths: as `lsl` tunes it, or glibc's defaults")
    parser.add_argument("--paths", default="lsl,hand", help="which paths to run: lsl, hand, lightning (the hand "
                        "loop's step as a minimal LightningModule); several copies of this script started at once "
                        "with --paths lsl measure runs sharing a device")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals, once per run
    tuned = args.malloc == "tuned" and tune_host_allocator()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    args.warmup = args.warmup or (50 if on_gpu else 5)
    if device.type == "cpu":
        print(f"CPU, {torch.get_num_threads()} threads")
    else:
        print(torch.cuda.get_device_name(device))
    print(f"torch {torch.__version__}, lightning {pl.__version__}, precision {args.precision}, "
          f"channels_last {args.channels_last}, compile {args.compile}, batch {args.batch_size}, "
          f"allocator {'tuned' if tuned else 'glibc defaults'}")

    paths = {name: run for name, run in PATHS.items() if name in args.paths.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        args.workdir = Path(folder)
        requested_steps = args.steps
        for workload in args.models.split(","):
            name, shape, padding = WORKLOADS[workload][1]
            args.steps = requested_steps or DEFAULT_STEPS[workload]["cuda" if on_gpu else "cpu"]
            source = RandomImages(name, shape, padding, args.images)
            runs: dict[str, list[Run]] = {name: [] for name in paths}
            for round_ in range(args.rounds):
                for name, run in paths.items():
                    torch.manual_seed(round_)
                    runs[name].append(run(workload, source, args, device))
            rows.append((f"{workload}, {args.steps} steps", runs))

    print("\n| model | lsl img/s | hand-written img/s | lsl / hand (median) | per-round ratios |")
    print("|---|---|---|---|---|")
    for workload, runs in rows:
        speeds = {name: [run.images_per_second for run in path_runs] for name, path_runs in runs.items()}
        print(f"| {workload} | {_median(speeds.get('lsl'))} | {_median(speeds.get('hand'))} | {_ratios(speeds)}")
    if {"lsl", "hand"} <= set(paths) and _clocked(args):
        print("\n| model | network forward + backward, lsl / hand, ms/step | rest of the step, lsl / hand, ms "
              "| lsl / hand at equal network time |")
        print("|---|---|---|---|")
        for workload, runs in rows:
            print(f"| {workload} | {_at_equal_network_time(runs)} |")
    if {"lsl", "hand", "lightning"} <= set(paths) and _clocked(args):
        print("\n| model | rest of the step: lsl / minimal LightningModule / hand, ms "
              "| Lightning's loop (minimal - hand), ms | lsl's own (lsl - minimal), ms |")
        print("|---|---|---|---|")
        for workload, runs in rows:
            lsl, lightning, hand = (statistics.median(run.rest_ms for run in runs[name])
                                    for name in ("lsl", "lightning", "hand"))
            print(f"| {workload} | {lsl:.2f} / {lightning:.2f} / {hand:.2f} | {lightning - hand:.2f} "
                  f"| {lsl - lightning:.2f} |")


def _median(values: list[float] | None) -> str:
    return f"{statistics.median(values):,.0f}" if values else "-"


def _ratios(speeds: dict[str, list[float]]) -> str:
    if not {"lsl", "hand"} <= set(speeds):
        return "- | - |"
    ratios = [a / b for a, b in zip(speeds["lsl"], speeds["hand"])]
    return (f"{statistics.median(speeds['lsl']) / statistics.median(speeds['hand']):.3f} | "
            f"{min(ratios):.3f} to {max(ratios):.3f} |")


def _at_equal_network_time(runs: dict[str, list[Run]]) -> str:
    """The ratio both paths would have if the network ran equally fast in each (its median over all runs)."""
    network = statistics.median(run.network_ms for path_runs in runs.values() for run in path_runs)
    lsl_network, hand_network = (statistics.median(run.network_ms for run in runs[name]) for name in ("lsl", "hand"))
    lsl, hand = (statistics.median(run.rest_ms for run in runs[name]) for name in ("lsl", "hand"))
    return (f"{lsl_network:.2f} / {hand_network:.2f} | {lsl:.2f} / {hand:.2f} | "
            f"{(network + hand) / (network + lsl):.3f}")


PATHS = {"lsl": lsl_path, "hand": hand_path, "lightning": minimal_lightning_path}

if __name__ == "__main__":
    main()
