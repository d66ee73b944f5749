"""Summary of a GPU check folder written by run.sh: one JSON document on stdout with every
part's result and the acceptance checks of issue 14; a short human summary on stderr.

usage: python3 summarize.py OUT_DIR > OUT_DIR/results.json

Each acceptance check is {"check", "value", "want", "pass"}; "pass" is null when the part
that measures it did not produce a result (failed, timed out or skipped), so a missing
measurement never reads as a pass.
"""
import json
import os
import sys

out = sys.argv[1]


def read(name):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read()
    except OSError:
        return None


def part(name):
    """The part's JSON (None when absent or not JSON) and the tail of its log."""
    text = read(name + ".json")
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        doc = None
    log = read(name + ".log") or ""
    return doc, log[-3000:]


steps = {}
for line in (read("steps.tsv") or "").splitlines():
    f = line.split("\t")
    if len(f) == 4:
        steps[f[0]] = {"exit": int(f[1]), "seconds": int(f[2]), "limit": int(f[3]),
                       "timed_out": f[1] in ("124", "137")}

result = {"schema": "temper.gpu-check-summary.v1", "gpu": (read("gpu.txt") or "").strip(),
          "torch": (read("torch.txt") or "").strip(), "steps": steps, "parts": {}, "acceptance": []}
for name in ["info", "kernels", "models", "robust_cpu", "robust_cuda", "robust_cuda_bf16", "bench", "demo"]:
    doc, log = part(name)
    result["parts"][name] = doc if doc is not None else {"missing": True, "log_tail": log}
    if doc is not None and steps.get(name, {}).get("exit", 0) != 0:
        result["parts"][name]["log_tail"] = log

acc = result["acceptance"]


def check(name, value, want, ok):
    acc.append({"check": name, "value": value, "want": want, "pass": ok if value is not None else None})


kern = result["parts"]["kernels"].get("kernel_parity")
if kern:
    check("(a) kernels within tolerance (f32 1e-4, tf32 5e-3, bf16 2e-2)",
          f"{kern['passed']} of {kern['passed'] + kern['failed']}", "all", kern["failed"] == 0)
else:
    check("(a) kernels within tolerance", None, "all", None)

models = result["parts"]["models"].get("model_parity")
for m in ["preact-resnet18", "mobilenet-v2"]:
    for p in ["f32", "tf32", "bf16"]:
        rows = [r for r in (models or {}).get("rows", []) if r["model"] == m and r["precision"] == p]
        worst = max((max(r["logits"], r["input_grad"], r.get("weight_grad") or 0) for r in rows), default=None)
        tol = rows[0]["tolerance"] if rows else None
        check(f"(b) {m} {p}: logits and gradients vs CPU (eval and train)", worst, f"<= {tol}",
              all(r["pass"] for r in rows) if rows else None)


def robust(name):
    doc = result["parts"][name]
    try:
        a = doc["evaluation"]["attacks"][0]["robust"]
        return a["accuracy"] if isinstance(a, dict) else a
    except (KeyError, IndexError, TypeError):
        return None


cpu = robust("robust_cpu")
for name, label in [("robust_cuda", "f32"), ("robust_cuda_bf16", "bf16")]:
    gpu = robust(name)
    diff = None if cpu is None or gpu is None else abs(cpu - gpu) * 100
    check(f"PGD-20 robust accuracy, small-cnn MNIST, cuda {label} vs cpu (points)",
          diff, "<= 0.5", diff is not None and diff <= 0.5)
result["robust_accuracy"] = {"cpu": cpu, "cuda_f32": robust("robust_cuda"), "cuda_bf16": robust("robust_cuda_bf16")}

bench = result["parts"]["bench"].get("bench")
rows = (bench or {}).get("rows", [])
for w in ["pgd_step", "pgd10_at_iter"]:
    for p, want in [("f32", 1.0), ("tf32", 1.0), ("bf16", 0.8)]:
        r = [x for x in rows if x["model"] == "preact-resnet18" and x["batch"] == 512
             and x["workload"] == w and x["precision"] == p]
        ratio = r[0]["ratio"] if r else None
        check(f"(c) speed preact-resnet18 b512 {w} {p} vs PyTorch {p}", ratio, f">= {want}",
              ratio is not None and ratio >= want)
result["bench_table"] = [
    f"{x['model']} b{x['batch']} {x['precision']} {x['workload']}: Temper {x['temper_img_s']:.0f} img/s, "
    f"PyTorch {x['pytorch_img_s'] or float('nan'):.0f}, ratio {x['ratio'] or float('nan'):.2f}" for x in rows]

demo = result["parts"]["demo"]
check("(d) temper demo --device cuda end to end", steps.get("demo", {}).get("exit"), "exit 0",
      steps.get("demo", {}).get("exit") == 0 and not demo.get("missing"))

json.dump(result, sys.stdout, indent=1)
print()
for a in acc:
    mark = {True: "PASS", False: "FAIL", None: "n/a "}[a["pass"]]
    print(f"{mark} {a['check']}: {a['value']} (want {a['want']})", file=sys.stderr)
for line in result["bench_table"]:
    print("  " + line, file=sys.stderr)
