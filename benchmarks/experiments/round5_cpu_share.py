"""Where the 2 cores go during the 512-client storm: CPU seconds per process (server tree and the client)."""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1]))
import serve_load as sl

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=15)
p.add_argument("--queue", type=int, default=64)
p.add_argument("--workers", type=int, default=2)
p.add_argument("--clients", type=int, nargs="+", default=[32, 512])
p.add_argument("--extra", nargs="*", default=[])
a = p.parse_args()
args = argparse.Namespace(max_batch=32, max_wait_ms=5.0, device="cpu", workers=[a.workers], client="python")
tick = os.sysconf("SC_CLK_TCK")

def tree(pid):
    out = [pid]
    for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += tree(int(c))
    return out

def cpu(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def name(pid):
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:60]

with tempfile.TemporaryDirectory() as tmp:
    ck = sl.write_checkpoint("vit_fashion_patch4_28", Path(tmp), None)
    images = sl.fashion_images()
    with sl.server(ck, args, a.workers, "--max-queue", str(a.queue), *a.extra) as (pid, url):
        sl.run_level(url, images, 1, 4, 2.0, "python")
        for clients in a.clients:
            pids = tree(pid)
            b = {p: cpu(p) for p in pids}; t0 = os.times(); w0 = time.monotonic()
            lv = sl.counting_batches(url, lambda: sl.run_level(url, images, 1, clients, a.seconds, "python"))
            wall = time.monotonic() - w0; t1 = os.times()
            use = {f"{p} {name(p)}": round((cpu(p) - b[p]) / wall, 2) for p in pids}
            use["client(self)"] = round((t1.user + t1.system - t0.user - t0.system) / wall, 2)
            print(json.dumps({"clients": clients, "img_s": round(lv["images_per_s"]), "p50": round(lv["p50_200_ms"]),
                              "p99": round(lv["p99_200_ms"]), "503": lv["status_503"], "batches_per_s": round(lv["batches_per_s"], 1),
                              "mean_batch": round(lv["mean_batch"], 1), "cores_used": use}, indent=1), flush=True)
