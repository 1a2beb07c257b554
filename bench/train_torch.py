"""A PyTorch reference for the evaluation training step (`experiments/train.py`): times the
official DARTS code's CIFAR-10 train step, run where torch is installed. Not a jnas dependency.

    python bench/train_torch.py --darts_repo /path/to/quark0/darts --steps 5 --warmup 2

`--darts_repo` is a checkout of github.com/quark0/darts; its `cnn` folder is put on sys.path and
`model.NetworkCIFAR` / `genotypes` are imported from it unchanged. The step is the one in its
`cnn/train.py`: train-mode forward with drop path, CE(logits) + 0.4 * CE(aux logits), backward,
gradient-norm clip at 5, SGD(lr 0.025, momentum 0.9, weight decay 3e-4). Inputs are random
32x32x3 images with random labels. Prints one JSON line.

Shims for the 2018 code under current PyTorch / numpy (applied here, the checkout is untouched):
- `utils.py` imports `torchvision.transforms` at import time; an empty stand-in module is
  registered when torchvision is not installed (the data transforms are not used here).
- `utils.drop_path` draws its mask with `torch.cuda.FloatTensor`, so it fails off CUDA;
  `model.drop_path` is replaced by the same function on the input's device (a per-example
  Bernoulli(1 - p) mask, the kept examples scaled by 1 / (1 - p)), out of place.
- `utils.count_parameters_in_MB` calls `np.sum(generator)`, which numpy >= 2.4 rejects; the
  same count (all parameters whose name lacks "auxiliary") is taken with the builtin `sum`.
- `Cell.__init__` prints channel sizes; stdout is silenced while the network is built.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import time
import types

import torch
import torch.nn as nn


def drop_path(x, drop_prob):
    """Per example, zero with probability `drop_prob`, else scale by 1 / (1 - drop_prob)."""
    if drop_prob <= 0:
        return x
    keep = torch.full((x.shape[0], 1, 1, 1), 1.0 - drop_prob, device=x.device, dtype=x.dtype)
    return x * torch.bernoulli(keep) / (1.0 - drop_prob)


def import_official(darts_repo: str):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tv.transforms
    sys.path.append(os.path.join(os.path.abspath(darts_repo), "cnn"))
    import genotypes
    import model
    model.drop_path = drop_path
    return model, genotypes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--darts_repo", required=True)
    p.add_argument("--arch", default="DARTS_V2", choices=["DARTS_V1", "DARTS_V2"])
    p.add_argument("--init_channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=96)
    p.add_argument("--drop_path_prob", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_mod, genotypes = import_official(args.darts_repo)
    torch.manual_seed(0)
    dev = torch.device(args.device)

    with contextlib.redirect_stdout(io.StringIO()):
        net = model_mod.NetworkCIFAR(args.init_channels, 10, args.layers, True,
                                     getattr(genotypes, args.arch)).to(dev)
    net.drop_path_prob = args.drop_path_prob
    net.train()
    params_total = sum(v.numel() for v in net.parameters())
    params_without_aux = sum(v.numel() for n, v in net.named_parameters() if "auxiliary" not in n)

    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(args.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch_size,), device=dev)

    def step():
        opt.zero_grad()
        logits, logits_aux = net(x)
        loss = criterion(logits, y) + 0.4 * criterion(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        return loss.item()  # also waits for the device

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)

    row = {"bench": "train_torch", "arch": args.arch, "init_channels": args.init_channels,
           "layers": args.layers, "batch_size": args.batch_size,
           "params_without_aux": params_without_aux, "params_total": params_total,
           "median_step_s": round(statistics.median(times), 4),
           "step_s": [round(t, 4) for t in times],
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
