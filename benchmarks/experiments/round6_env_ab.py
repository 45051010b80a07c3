"""Round 6's A/B: `vitkit serve` (2 workers, --max-queue 64, random weights; the Fashion ViT, or --model
vit_small_patch16_224 on photographs) with settings that alternate, one arm each, comma-separated:
NAME=VALUE sets an environment variable, +option=value passes `--option value`, "" is the baseline. Levels:
32 clients, 512 that ask again at once, and with --polite 512 that honour Retry-After (--clients sets the
two numbers). One JSON line an arm, with each worker's peak RSS. The environment variables are the hooks of
round6_pipeline_nice_trace.patch (git apply it first): VITKIT_PIPELINE=1 (a full batch waiting is handed to
the model's executor behind the one computing, still holding its room), VITKIT_PIPELINE=unbounded (the
same, its room freed), VITKIT_LOOP_NICE=10 (the event loop's thread reniced), VITKIT_TRACE=1 (the fp32
forward a frozen TorchScript trace). PYTHONPATH=<a checkout>/src serves another commit.

    .venv/bin/python benchmarks/experiments/round6_env_ab.py --polite --arms "" +runtime=onnxruntime "" ...
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
p.add_argument("--model", default="vit_fashion_patch4_28", help="or vit_small_patch16_224 (on photographs)")
p.add_argument("--clients", type=int, nargs=2, default=[32, 512], help="the two levels")
a = p.parse_args()
args = argparse.Namespace(max_batch=32, max_wait_ms=5.0, device="cpu", workers=[2], client="python")
keys = {kv.split("=")[0] for arm in a.arms for kv in arm.split(",") if kv and not kv.startswith("+")}
with tempfile.TemporaryDirectory() as tmp:
    ck = sl.write_checkpoint(a.model, Path(tmp), None)
    images = sl.fashion_images() if a.model.startswith("vit_fashion") else sl.photo_images()
    for arm in a.arms:
        for k in keys: os.environ.pop(k, None)
        options = [o for kv in arm.split(",") if kv.startswith("+") for o in ("--" + kv[1:]).split("=", 1)]
        for kv in arm.split(","):
            if kv and not kv.startswith("+"): k, v = kv.split("=", 1); os.environ[k] = v
        with sl.server(ck, args, 2, "--max-queue", str(a.queue), *options) as (pid, url):
            sl.run_level(url, images, 1, 4, 2.0, "python")
            out = {"arm": arm}
            low, high = a.clients
            levels = ([] if a.no32 else [(f"c{low}", low, False)]) + [(f"c{high}", high, False)] + ([(f"c{high}_polite", high, True)] if a.polite else [])
            for key, clients, polite in levels:
                lv = sl.counting_batches(url, lambda: sl.run_level(url, images, 1, clients, a.seconds, "python", retry_after=polite))
                out[key] = {"img_s": round(lv["images_per_s"]), "p50": round(lv["p50_200_ms"]), "p99": round(lv["p99_200_ms"]),
                            "n503": lv["status_503"], "bps": round(lv["batches_per_s"], 1), "mb": round(lv["mean_batch"], 1), "other": lv["errors"]}
            out["peak_rss_mb_per_worker"] = sl.memory(pid)["peak_rss_mb_per_worker"]
            print(json.dumps(out), flush=True)
