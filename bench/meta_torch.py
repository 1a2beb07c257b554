"""A PyTorch reference for `meta_step.py`'s `maml_mini` row: the same MAML learner and episode
shapes, written here for the comparison (issue 24), run where torch is installed. Not a jnas
dependency.

    python bench/meta_torch.py --steps 3

The learner is MAML's 4 x (3x3 conv, 64 filters, no bias -> BatchNorm with batch statistics
-> ReLU -> 2x2 max pool) -> linear, on 84x84x3 images, 5-way 1-shot with 15 queries per
class. One meta-iteration adapts each of the 4 tasks in turn by 5 SGD steps of 0.01 on its
support set, `torch.autograd.grad(create_graph=True)` so the meta-gradient is exact (second
order; `--first_order` drops it), sums the query losses' gradients and takes an Adam step of
1e-3. The test-time evaluation adapts 4 tasks by 10 steps without second derivatives and
scores their queries.
Prints one JSON line like the jnas rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the caller (meta_step.py) skips the reference without torch
    torch = None


def init_weights(filters: int, way: int, channels: int, spatial: int, gen) -> list:
    ws, cin = [], channels
    for _ in range(4):
        ws += [torch.randn(filters, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5,
               torch.ones(filters), torch.zeros(filters)]  # conv, BN scale, BN shift
        cin = filters
    ws += [torch.randn(way, filters * spatial * spatial, generator=gen) * 0.01,
           torch.zeros(way)]
    return [w.requires_grad_() for w in ws]


def forward(ws, x):
    for i in range(4):
        conv, scale, shift = ws[3 * i: 3 * i + 3]
        x = F.conv2d(x, conv, padding=1)
        x = F.batch_norm(x, None, None, scale, shift, training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), ws[-2], ws[-1])


def adapt(ws, x, y, steps: int, lr: float, second_order: bool):
    for _ in range(steps):
        loss = F.cross_entropy(forward(ws, x), y)
        grads = torch.autograd.grad(loss, ws, create_graph=second_order)
        ws = [w - lr * g for w, g in zip(ws, grads, strict=True)]
    return ws


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed meta-iterations")
    p.add_argument("--meta_batch", type=int, default=4)
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--image_size", type=int, default=84)
    p.add_argument("--inner_steps", type=int, default=5)
    p.add_argument("--inner_steps_test", type=int, default=10)
    p.add_argument("--first_order", action="store_true", help="no second derivatives")
    args = p.parse_args(argv)
    if torch is None:
        raise SystemExit("bench/meta_torch.py needs torch: pip install torch")
    gen = torch.Generator().manual_seed(0)
    size, way = args.image_size, args.way
    spatial = size
    for _ in range(4):
        spatial //= 2
    ws = init_weights(args.filters, way, 3, spatial, gen)
    opt = torch.optim.Adam(ws, lr=1e-3)

    def episode():
        def split(n):
            x = torch.randn(way * n, 3, size, size, generator=gen)
            return x, torch.arange(way).repeat_interleave(n)
        return split(args.shot), split(args.query)

    def meta_iteration():
        opt.zero_grad()
        for _ in range(args.meta_batch):
            (xs, ys), (xq, yq) = episode()
            fast = adapt(ws, xs, ys, args.inner_steps, 0.01, not args.first_order)
            loss = F.cross_entropy(forward(fast, xq), yq) / args.meta_batch
            loss.backward()
        opt.step()

    def evaluate():
        accs = []
        for _ in range(args.meta_batch):
            (xs, ys), (xq, yq) = episode()
            fast = [w.detach().requires_grad_() for w in ws]
            fast = adapt(fast, xs, ys, args.inner_steps_test, 0.01, second_order=False)
            with torch.no_grad():
                accs.append((forward(fast, xq).argmax(1) == yq).float().mean())
        return accs

    step_times, eval_times = [], []
    for _ in range(args.steps + 1):  # the first of each warms up
        t0 = time.perf_counter()
        meta_iteration()
        step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate()
        eval_times.append(time.perf_counter() - t0)
    return {
        "row": "maml_mini_torch",
        **{k: v for k, v in vars(args).items() if k != "steps"},
        "eval_batch_s_median": round(statistics.median(eval_times[1:]), 4),
        "step_s_median": round(statistics.median(step_times[1:]), 4),
        "steps_timed": args.steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "backend": f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads",
    }


if __name__ == "__main__":
    print(json.dumps(main()))
