"""CPU time of one training step per balancing method, one thread, methods interleaved.

The step is what ``fit`` runs per batch without Lightning: the forward of the module
``bench`` builds from ``--config`` (``scenemtl.commands.bench.build_from_args``), the
losses, and the method's ``backward_step`` (for ``bound``: one plain backward per task,
the cost a gradient-level method cannot go below). Prints per method the median CPU
seconds per step and the ratio of ``fixed``'s time to the method's per round (median,
range), and the process's peak RSS. With ``--memory``, afterwards, per method the peak
RSS of a fresh process that builds only that method's module and runs three steps (a
warm-up and two timed)
(``VmHWM`` of /proc/self/status: the resident set's high-water mark of this process's
memory map, what the system had to provide; ``ru_maxrss`` would carry the parent's over
the exec, and torch has no allocator statistics on the CPU). docs/balancing.md ("Where
the time goes") has the figures and the command.

    python scripts/gradient_step_cost.py --data DATA fixed bound pcgrad mgda upgrad graddrop
    python scripts/gradient_step_cost.py --data DATA --memory fixed pcgrad ... --rounds 1
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

from scenemtl.balancing.base import TrainingStep
from scenemtl.commands.bench import build_from_args


def build(method: str, config: str, data: str, wrt: str):
    argv = ["--config", config, "--data.root", data, "--model.loss_weighting", method]
    if method not in ("fixed", "bound"):
        argv += ["--model.weighting_options.wrt", wrt]
    if method == "bound":
        argv[argv.index("bound")] = "fixed"
    setup = build_from_args(argv)
    module = setup.module
    setup.datamodule.prepare_data()
    setup.datamodule.setup("fit")
    module.adopt_dataset_stats(setup.datamodule.info.stats)
    module.train()
    return module


def step(module, batch: dict, bound: bool) -> None:
    image = batch["image"]
    shared = module.net.shared_forward(image)
    cut = module.balancer.cut(shared)
    outputs = module.net.resize_outputs(module.net.decode(cut), image.shape[-2:])
    losses = module.criterion(outputs, batch)
    weighted = module.balancer.weighted_losses(losses.tasks)
    if bound:
        params = [p for p in module.parameters() if p.requires_grad]
        for i in range(len(weighted)):
            grads = torch.autograd.grad(
                weighted[i], params, retain_graph=i < len(weighted) - 1, allow_unused=True
            )
        for p, g in zip(params, grads, strict=True):
            p.grad = g
    else:
        record = TrainingStep(weighted, list(shared.values()), list(cut.values()))
        module.balancer.backward_step(losses.total, record, module.net)
    for p in module.parameters():
        p.grad = None


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident set, MB (VmHWM; Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", help="balancing methods, and/or 'bound'")
    parser.add_argument("--data", required=True, help="dataset root (its tasks and classes)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--wrt", default="parameters")
    parser.add_argument("--steps", type=int, default=1, help="steps per method and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--memory", action="store_true", help="also each method's peak RSS in a fresh process"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    modules = {}
    for method in args.methods:
        torch.manual_seed(0)
        modules[method] = build(method, args.config, args.data, args.wrt)
    first = next(iter(modules.values()))
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(args.batch, 3, *args.size, generator=gen)}
    for task in first.task_list:
        batch[task.name] = task.example_target(args.batch, *args.size, gen)
    for method, module in modules.items():  # warm-up
        step(module, batch, method == "bound")
    times: dict[str, list[float]] = {m: [] for m in modules}
    for _ in range(args.rounds):
        for method, module in modules.items():
            start = time.process_time()
            for _ in range(args.steps):
                step(module, batch, method == "bound")
            times[method].append((time.process_time() - start) / args.steps)
    base = times.get("fixed")
    for method, values in times.items():
        line = f"{method:10s} CPU s/step median {statistics.median(values):.4f}"
        if base and method != "fixed":
            ratios = [b / v for b, v in zip(base, values, strict=True)]
            line += (
                f"  x fixed: median {statistics.median(ratios):.3f} "
                f"[{min(ratios):.3f}, {max(ratios):.3f}]"
            )
        print(line)
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if args.memory:
        for method in args.methods:
            argv = [sys.executable, __file__, method, "--data", args.data]
            argv += ["--config", args.config, "--wrt", args.wrt, "--batch", str(args.batch)]
            argv += ["--size", *map(str, args.size), "--steps", "2", "--rounds", "1"]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            rss = out.strip().splitlines()[-1].removeprefix("peak RSS ")
            print(f"{method:10s} peak RSS (fresh process, build + 3 steps) {rss}")


if __name__ == "__main__":
    main()
