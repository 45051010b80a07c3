"""Round 6's A/B: `vitkit serve` (2 workers, --max-queue 64, Fashion ViT, random weights) under environment
settings or `vitkit serve` options that alternate, one arm each (NAME=VALUE, or +option=value for `--option value`, comma-separated;
"" is the baseline): 32 clients, then 512
clients that ask again at once, then (--polite) 512 that honour Retry-After, one JSON line an arm. The
settings are the hooks of round6_pipeline_nice_trace.patch (git apply it first): VITKIT_PIPELINE=1 (a full
batch waiting is handed to the model's executor behind the one computing, still holding its room),
VITKIT_PIPELINE=unbounded (the same, its room freed), VITKIT_LOOP_NICE=10 (the event loop thread reniced),
VITKIT_TRACE=1 (the fp32 forward a frozen TorchScript trace, which runs without the GIL). PYTHONPATH=<a
checkout>/src serves another commit.

    .venv/bin/python benchmarks/experiments/round6_env_ab.py --polite --arms "" VITKIT_PIPELINE=1 ...
"""
import argparse, json, os, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1]))
import serve_load as sl
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=15)
p.add_argument("--arms", nargs="+")
p.add_argument("--queue", type=int, default=64)
p.add_argument("--polite", action="store_true")
p.add_argument("--no32", action="store_true")
a = p.parse_args()
args = argparse.Namespace(max_batch=32, max_wait_ms=5.0, device="cpu", workers=[2], client="python")
keys = {kv.split("=")[0] for arm in a.arms for kv in arm.split(",") if kv and not kv.startswith("+")}
with tempfile.TemporaryDirectory() as tmp:
    ck = sl.write_checkpoint("vit_fashion_patch4_28", Path(tmp), None)
    images = sl.fashion_images()
    for arm in a.arms:
        for k in keys: os.environ.pop(k, None)
        options = [o for kv in arm.split(",") if kv.startswith("+") for o in ("--" + kv[1:]).split("=", 1)]
        for kv in arm.split(","):
            if kv and not kv.startswith("+"): k, v = kv.split("=", 1); os.environ[k] = v
        with sl.server(ck, args, 2, "--max-queue", str(a.queue), *options) as (pid, url):
            sl.run_level(url, images, 1, 4, 2.0, "python")
            out = {"arm": arm}
            levels = ([] if a.no32 else [("c32", 32, False)]) + [("c512", 512, False)] + ([("c512_polite", 512, True)] if a.polite else [])
            for key, clients, polite in levels:
                lv = sl.counting_batches(url, lambda: sl.run_level(url, images, 1, clients, a.seconds, "python", retry_after=polite))
                out[key] = {"img_s": round(lv["images_per_s"]), "p50": round(lv["p50_200_ms"]), "p99": round(lv["p99_200_ms"]),
                            "n503": lv["status_503"], "bps": round(lv["batches_per_s"], 1), "mb": round(lv["mean_batch"], 1), "other": lv["errors"]}
            print(json.dumps(out), flush=True)
