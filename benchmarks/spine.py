"""Spine benchmark: label scoring at batch 1 vs batch 8, the whole demo, peak RSS per rung.

    python benchmarks/spine.py [--items 96] [--rounds 3] [--threads 1] [--skip-demo]
    python benchmarks/spine.py --skip-demo --rounds 0 --lora-rows 500 [--lora-steps 20]

``--items`` below 96 also shrinks the demo's test and dev splits (a quick check).

Targets (issue 3): the whole demo run under 5 minutes and under 3 GiB RSS on 2 cores.
Batch 1 and batch 8 score the demo's test items (system_prompt rung) in interleaved rounds;
then the demo runs once with a cold cache, printing its time, each rung's time and the peak
RSS of the process when the rung ended (the peak so far: RSS never goes back down here),
then once more fully cached, in a new process, which must load no model (its time against
the cold run is the re-run share, goal < 1% on an idle machine).

``--lora-rows N`` adds a fine-tuning case (issue 21, goal: under 3 GiB for a 500-row task
with LoRA): an extraction task of N e2e rows whose answers are the record followed by the
sentence (p50 55, p99 68 tokens), 8 test items, one torch thread, laddered through
zero_shot and lora with its learning curve (50, 200) and forgetting check, in a new
process, printing the peak RSS when each rung and the checks ended. ``--lora-steps`` caps
each training's steps (memory peaks at the longest batches, so a capped run shows it too,
in minutes instead of hours).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Side, compare, interleave, parser, peak_rss_mib, session  # noqa: E402,I001


def main() -> None:
    ap = parser(__doc__, items=96)
    ap.add_argument("--skip-demo", action="store_true", help="only the batch comparison")
    ap.add_argument("--lora-rows", type=int, default=0,
                    help="also run the LoRA memory case on this many e2e rows (e.g. 500)")
    ap.add_argument("--lora-steps", type=int, default=None,
                    help="cap each training of the LoRA case at this many steps")
    ap.add_argument("--lora-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lora_child:
        lora_case(Path(args.lora_child), args.lora_rows, args.lora_steps)
        return
    with session(args):
        if args.rounds:
            run(args)
        if args.lora_rows:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
            cmd = [sys.executable, __file__, "--lora-child", tempfile.mkdtemp(),
                   "--lora-rows", str(args.lora_rows)]
            if args.lora_steps:
                cmd += ["--lora-steps", str(args.lora_steps)]
            subprocess.run(cmd, check=True, env=env)


def lora_case(tmp: Path, rows: int, steps: int | None) -> None:
    """The fine-tuning memory case, in this (fresh) process: peak RSS per rung and checks."""
    import random

    import yaml
    from _common import SHARED_DATA, read_jsonl

    os.environ["TUNEWISE_DB"] = str(tmp / "store.db")
    os.environ["TUNEWISE_ADAPTERS"] = str(tmp / "adapters")
    data = read_jsonl(SHARED_DATA / "e2e_records.jsonl")
    random.Random(0).shuffle(data)
    with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
        for r in data[:rows]:
            f.write(json.dumps({"input": r["input"], "output": f"{r['output']} | {r['input']}"})
                    + "\n")
    lora = {"curve": [50, 200], **({"max_steps": steps} if steps else {})}
    task = {"name": "e2e-long", "kind": "extraction", "data": {"path": "data.jsonl"},
            "metric": "exact_match", "target": 0.99, "split": {"test": 8, "dev": 8, "seed": 0},
            "backend": {"kind": "local", "model": "smollm2-135m", "threads": 1},
            "rungs": ["zero_shot", "lora"], "lora": lora}
    (tmp / "task.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    from tunewise.ladder import Hooks, run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    marks: list[str] = []

    def end_rung(result: dict) -> None:
        marks.append(f"  {result['name']:<10} peak RSS so far {peak_rss_mib():6.0f} MiB")

    start = time.perf_counter()
    run_ladder(load_task(tmp / "task.yaml"), Store(), out_dir=tmp / "out", climb_all=True,
               hooks=Hooks(end_rung=end_rung))
    print(f"LoRA case: {rows} e2e rows, answers record | sentence, "
          f"{'max_steps ' + str(steps) if steps else 'full training'}, "
          f"{time.perf_counter() - start:.0f} s")
    print("\n".join(marks))
    print(f"  after the learning curve and forgetting check: peak RSS {peak_rss_mib():.0f} MiB "
          "(goal < 3072 MiB)")


def run(args) -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["TUNEWISE_DB"] = str(tmp / "bench.db")
    from tunewise.backends.local import LocalBackend
    from tunewise.cli import demo_path
    from tunewise.dataset import load_examples, make_split, task_labels
    from tunewise.ladder import Hooks, run_ladder
    from tunewise.prompts import build_messages
    from tunewise.store import Store
    from tunewise.task import load_task

    task = shrink(load_task(demo_path("symptoms")), args.items)
    examples = load_examples(task)
    labels = task_labels(task, examples)
    test = make_split(examples, task).test[: args.items]
    prompts = [build_messages(task, labels, e.input) for e in test]
    backend = LocalBackend(task.backend.model, batch_size=1)
    start = time.perf_counter()
    backend.model  # noqa: B018 (load it now, to time it)
    load_s = time.perf_counter() - start

    def at(bs: int):
        def go() -> int:
            backend.batch_size = bs
            backend.score(prompts, [labels] * len(prompts))
            return len(prompts)
        return go

    b8, b1 = interleave([Side("batch 8", at(8)), Side("batch 1", at(1))], args.rounds)
    compare(f"label scoring, {len(prompts)} demo items x {len(labels)} labels "
            "(system_prompt rung)", b8, b1)
    if args.skip_demo:
        return
    backend.batch_size = task.backend.batch_size
    marks: dict[str, tuple[float, float]] = {}
    began = [0.0]

    def end_rung(result: dict) -> None:
        now = time.perf_counter()
        marks[result["name"]] = (now - began[0], peak_rss_mib())
        began[0] = now

    hooks = Hooks(end_rung=end_rung)
    start = began[0] = time.perf_counter()
    result = run_ladder(task, Store(), backend=backend, out_dir=tmp / "out", climb_all=True,
                        hooks=hooks)
    cold = time.perf_counter() - start
    print(f"whole demo ({len(result['rungs'])} rungs, cold cache): {cold:.0f} s "
          f"(target < 300 s); model load {load_s:.1f} s")
    for r in result["rungs"]:
        if r["status"] == "done":
            secs, rss = marks[r["name"]]
            print(f"  {r['name']:<16} {r['metric']} {r['value']:.3f}  {secs:6.1f} s  "
                  f"peak RSS so far {rss:6.0f} MiB")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (target < 3072 MiB)")
    start = time.perf_counter()
    again = subprocess.run([sys.executable, "-c", RERUN, str(args.items), str(tmp / "again")],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               [str(Path(__file__).parents[1]), str(Path(__file__).parent)])})
    warm = time.perf_counter() - start
    if again.returncode:
        sys.exit(f"cached re-run failed:\n{again.stderr[-2000:]}")
    print(f"cached re-run (new process: imports, data, ladder): {warm:.1f} s = "
          f"{100 * warm / cold:.1f}% of the cold run (goal < 1% on an idle machine); "
          f"{again.stdout.strip()}")


def shrink(task, items: int):
    """The demo task with at most ``items`` test (and dev) items: its own split when larger."""
    if items >= task.split.test:
        return task
    split = task.split.model_copy(update={"test": items, "dev": min(task.split.dev, items)})
    return task.model_copy(update={"split": split})


RERUN = """
import sys
from pathlib import Path
from spine import shrink
from tunewise.cli import demo_path
from tunewise.ladder import run_ladder
from tunewise.store import Store
from tunewise.task import load_task
task = shrink(load_task(demo_path("symptoms")), int(sys.argv[1]))
result = run_ladder(task, Store(), out_dir=Path(sys.argv[2]), climb_all=True)
made = sum(r.get("calls_made", 0) for r in result["rungs"])
print(f"{made} model calls, torch imported: {'torch' in sys.modules}")
"""


if __name__ == "__main__":
    main()
