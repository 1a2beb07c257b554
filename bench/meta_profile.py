"""Where a meta-iteration's time goes, by XLA op: a profile of one compiled MAML / T-NAS step.

    python bench/meta_profile.py                          # MAML, 84x84, the meta_step.py row
    python bench/meta_profile.py --algo tnas --by module,kind
    python bench/meta_profile.py --target eval --top 30

Runs the step once to compile and warm up, once under `jax.profiler`, then reads the trace
and the compiled HLO. Every executed op (an XLA fusion, dot, copy, loop) is attributed to the
JAX operation it came from (the HLO's `op_name`), and grouped by the `--by` keys:
- `module`: the Flax module (`PatchConv_0`, `BatchNorm_1`, `Dense_0`; `other` outside them);
- `kind`: what XLA runs: `dot` (matmuls, alone or fused), `copy` (layout changes and
  transposes), `loop` (elementwise and reduction fusions), `control` (loops, slicing);
- `order`: the derivative it belongs to, as the nesting of JAX transforms in the op's name
  (`J` forward, `TJ` its gradient, `TTJJ` the gradient's gradient, ...);
- `op`: each HLO op by name, with its shape and source.
Prints one JSON line: the step's wall time, the op time summed (ops can overlap in time on
several cores, so it may exceed the wall time), and the largest groups in seconds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, random_tasks  # noqa: E402


def kind(op_name: str) -> str:
    if "dot" in op_name or "ynn" in op_name:
        return "dot"
    if "copy" in op_name or "transpose" in op_name:
        return "copy"
    if op_name.startswith(("while", "slice", "dynamic", "bitcast_dynamic", "concatenate")):
        return "control"
    return "loop"


def group(name: str, source: str, shape: str, keys) -> tuple:
    modules = re.findall(r"(\w+Conv\w*_\d+|BatchNorm_\d+|Dense_\d+|MixedOp_\d+|Cell_\d+)", source)
    order = "T" * source.count("transpose(") + "J" * source.count("jvp(")
    values = {
        "module": modules[-1] if modules else "other",
        "kind": kind(name),
        "order": order or "-",
        "op": f"{name} {shape} {source[-70:]}",
    }
    return tuple(values[k] for k in keys)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--algo", default="maml", choices=["maml", "auto_maml", "tnas"])
    p.add_argument("--target", default="step", choices=["step", "eval"])
    p.add_argument("--image_size", type=int, default=84)
    p.add_argument("--meta_batch", type=int, default=4)
    p.add_argument("--tasks_at_once", type=int)
    p.add_argument("--by", default="kind,module", help="comma-separated: module,kind,order,op")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    import jax

    from jnas.meta import MetaConfig, MetaLearner

    config = MetaConfig(algo=args.algo, meta_batch=args.meta_batch,
                        tasks_at_once=args.tasks_at_once)  # fmt: skip
    shape = (args.image_size, args.image_size, 3)
    learner = MetaLearner(config, shape)
    tasks = random_tasks(config, shape)
    state = learner.init(jax.random.key(0))
    fn = learner.step if args.target == "step" else learner.eval_step
    compiled = fn.lower(state, tasks).compile()
    jax.block_until_ready(compiled(state, tasks))
    t = time.perf_counter()
    jax.block_until_ready(compiled(state, tasks))
    wall = time.perf_counter() - t

    sources = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name=\"([^\"]*)\"", line)
        if m:
            sources[m.group(1)] = (m.group(3), m.group(2))
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        jax.block_until_ready(compiled(state, tasks))
        jax.profiler.stop_trace()
        (trace,) = glob.glob(f"{folder}/plugins/profile/*/*.trace.json.gz")
        events = json.load(gzip.open(trace))["traceEvents"]
    keys = args.by.split(",")
    seconds = collections.Counter()
    for e in events:
        # Complete events of the executed ops; not the executor's or Python's own spans.
        if e.get("ph") != "X" or e["name"].startswith(("ThunkExecutor", "$", "Slinky")):
            continue
        source, out_shape = sources.get(e["name"], ("?", ""))
        name = e["name"] if "op" in keys else re.sub(r"\.\d+$", "", e["name"])
        seconds[group(name, source, out_shape, keys)] += e["dur"] / 1e6
    print(json.dumps({
        "algo": args.algo, "target": args.target, "image": list(shape),
        "meta_batch": config.meta_batch, "tasks_at_once": learner.tasks_at_once,
        "wall_s": round(wall, 3), "op_s_total": round(sum(seconds.values()), 3), "by": keys,
        "top": [[*k, round(v, 3)] for k, v in seconds.most_common(args.top)],
        "peak_rss_mb": environment([wall, wall])["peak_rss_mb"],
        "backend": jax.default_backend(), "jax": jax.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
