"""Is the procedural dataset learnable, and does context help?

Trains two tiny fully convolutional nets on the generated data (downscaled 2x for speed)
for a few epochs on the CPU and scores them on val with the project's metrics:

* ``local``: 3x3 then 1x1 convolutions at full resolution (receptive field 5 px), which
  sees colour and a little texture, but no shape or context;
* ``context``: a small strided encoder with dilated convolutions (receptive field about
  130 px) and a bilinear upsampling head, which sees shape and surroundings.

A dataset where ``local`` is as good as ``context`` would not reward the architectures
the project compares. Usage::

    python scripts/synth_learnability.py [--root DIR] [--epochs 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenemtl.data.format import find_rgb, label_path, read_depth, read_info, read_rgb, read_semseg
from scenemtl.data.procedural import cached_dataset
from scenemtl.data.procedural.calibrate import miou, si_log_rmse

C = 19


def load(root: Path, split: str, limit: int | None = None):
    info = read_info(root)
    n = info.split_size(split) if limit is None else min(limit, info.split_size(split))
    rgb = np.stack([read_rgb(find_rgb(root, split, i, info.rgb_extension)) for i in range(n)])
    sem = np.stack([read_semseg(label_path(root, split, "semseg", i)) for i in range(n)])
    dep = np.stack([read_depth(label_path(root, split, "depth", i)) for i in range(n)])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    x = F.avg_pool2d(x, 2)  # 2x smaller: area-average the colours
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    sem = torch.from_numpy(sem[:, ::2, ::2].astype(np.int64))  # labels and depth: nearest
    dep = torch.from_numpy(np.ascontiguousarray(dep[:, ::2, ::2]))
    return x, sem, dep


def conv(i: int, o: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(i, o, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(o),
        nn.ReLU(inplace=True),
    )


class Local(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(3, 48), conv(48, 48, 3), conv(48, 48, 1), nn.Conv2d(48, C + 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Context(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            conv(3, 32, stride=2),
            conv(32, 48, stride=2),
            conv(48, 64),
            conv(64, 64, dilation=2),
            conv(64, 64, dilation=4),
            conv(64, 64, dilation=8),
            conv(64, 64, dilation=1),
        )
        self.skip = conv(3, 16)
        self.head = nn.Sequential(conv(64 + 16, 48), nn.Conv2d(48, C + 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.interpolate(self.enc(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([f, self.skip(x)], 1))


def loss_fn(out: torch.Tensor, sem: torch.Tensor, dep: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(out[:, :C], sem, ignore_index=255)
    valid = dep > 0
    logd = torch.log(dep.clamp(min=1e-3))
    l1 = (out[:, C][valid] - logd[valid]).abs().mean()
    return ce + l1


@torch.no_grad()
def evaluate(model: nn.Module, x, sem, dep) -> tuple[float, float]:
    model.eval()
    preds, depths = [], []
    for i in range(0, len(x), 32):
        out = model(x[i : i + 32])
        preds.append(out[:, :C].argmax(1))
        depths.append(torch.exp(out[:, C]))
    pred = torch.cat(preds).numpy().ravel()
    return miou(pred, sem.numpy().ravel()), si_log_rmse(torch.cat(depths).numpy(), dep.numpy())


def train(model: nn.Module, data, val, epochs: int, batch: int = 16) -> dict[str, float]:
    x, sem, dep = data
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            loss = loss_fn(model(x[idx]), sem[idx], dep[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    m, d = evaluate(model, *val)
    return {
        "miou": m,
        "silog": d,
        "seconds": time.perf_counter() - t0,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = cached_dataset() if args.root is None else Path(args.root)
    data = load(root, "train", args.train_limit)
    val = load(root, "val")
    print(
        f"{len(data[0])} train / {len(val[0])} val images at {tuple(data[0].shape[-2:])}, "
        f"{args.epochs} epochs, {torch.get_num_threads()} threads"
    )
    print("| model | params | val mIoU | val SI-logRMSE | train time |")
    print("|---|---:|---:|---:|---:|")
    for name, model in (
        ("local (5 px field)", Local()),
        ("context (dilated, ~130 px field)", Context()),
    ):
        r = train(model, data, val, args.epochs)
        print(
            f"| {name} | {r['params'] / 1e3:.0f}k | {r['miou']:.1f} | {r['silog']:.1f} | "
            f"{r['seconds']:.0f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
