"""PyTorch side of `bench_steps` and of `temper gpu-check`: the same four workloads on the
same architectures, batch and thread count, timed the same way (median of `reps` runs after
two warm-up calls, each run repeating a workload faster than MIN_RUN seconds until it lasts
about that long, as `temper_train::bench::median_secs` does; on a GPU each run ends with a
synchronisation).

usage: python3 bench_steps.py MODEL BATCH THREADS REPS [--device cpu|cuda]
                              [--precision f32|tf32|bf16]        (prints one JSON line, images/s)

Precisions, as PyTorch users run them: f32 with TF32 off (cuDNN and matmul), tf32 (cuDNN and
matmul TF32 on: PyTorch's default for convolutions), bf16 (autocast to bfloat16 with the model
and inputs in channels-last). cudnn.benchmark stays at PyTorch's default (off).
"""
import argparse, json, math, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("batch", type=int)
ap.add_argument("threads", type=int); ap.add_argument("reps", type=int)
ap.add_argument("--device", default="cpu"); ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
a = ap.parse_args()
name, bs, threads, reps, prec = a.model, a.batch, a.threads, a.reps, a.precision
dev = torch.device(a.device)
torch.set_num_threads(threads)
torch.manual_seed(0)
if dev.type == "cuda":
    torch.backends.cudnn.allow_tf32 = prec == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"


class SmallCnn(nn.Module):
    def __init__(s):
        super().__init__()
        s.c1 = nn.Conv2d(1, 16, 4, 2, 1); s.c2 = nn.Conv2d(16, 32, 4, 2, 1)
        s.f1 = nn.Linear(1568, 100); s.f2 = nn.Linear(100, 10)

    def forward(s, x):
        return s.f2(F.relu(s.f1(F.relu(s.c2(F.relu(s.c1(x)))).flatten(1))))


class Block(nn.Module):
    def __init__(s, i, o, st):
        super().__init__()
        s.b1 = nn.BatchNorm2d(i); s.c1 = nn.Conv2d(i, o, 3, st, 1, bias=False)
        s.b2 = nn.BatchNorm2d(o); s.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        s.sc = nn.Conv2d(i, o, 1, st, bias=False) if st != 1 or i != o else None

    def forward(s, x):
        o = F.relu(s.b1(x))
        sc = s.sc(o) if s.sc is not None else x
        return s.c2(F.relu(s.b2(s.c1(o)))) + sc


class PreAct(nn.Module):
    def __init__(s):
        super().__init__()
        s.c = nn.Conv2d(3, 64, 3, 1, 1, bias=False); L = []; i = 64
        for o, st in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
            L.append(Block(i, o, st)); i = o
        s.l = nn.Sequential(*L); s.b = nn.BatchNorm2d(512); s.f = nn.Linear(512, 10)

    def forward(s, x):
        return s.f(F.adaptive_avg_pool2d(F.relu(s.b(s.l(s.c(x)))), 1).flatten(1))


class Norm(nn.Module):
    """Input normalisation inside the model, as Temper's zoo does it."""

    def __init__(s, m, mean, std):
        super().__init__(); s.m = m
        s.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        s.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(s, x):
        return s.m((x - s.mean) / s.std)


if name == "small-cnn":
    m = SmallCnn(); x = torch.rand(bs, 1, 28, 28)
elif name == "preact-resnet18":
    m = Norm(PreAct(), [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]); x = torch.rand(bs, 3, 32, 32)
elif name == "mobilenet-v2":
    import torchvision
    m = Norm(torchvision.models.mobilenet_v2(num_classes=10), [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616])
    x = torch.rand(bs, 3, 32, 32)
else:
    raise SystemExit(f"unknown model {name}")
y = torch.randint(0, 10, (bs,))
m, x, y = m.to(dev), x.to(dev), y.to(dev)
if prec == "bf16":
    m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def autocast():
    """bf16 autocast for --precision bf16; otherwise nothing."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16")
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
eps, alpha = 8 / 255, 2 / 255


def forward():
    m.eval()
    with torch.no_grad(), autocast():
        m(x)


def pgd_step(x0, xa):
    """One L-inf PGD step in eval mode with the parameters detached, as attacks run."""
    a = xa.clone().requires_grad_(True)
    with autocast():
        loss = F.cross_entropy(m(a), y, reduction="sum")
    g, = torch.autograd.grad(loss, a)
    return (x0 + (a.detach() + alpha * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)


def pgd_only():
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    pgd_step(x, x)
    for p in m.parameters():
        p.requires_grad_(True)


def train_step(xb):
    m.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = F.cross_entropy(m(xb), y)
    loss.backward()
    opt.step()


def at_iter():
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(10):
        xa = pgd_step(x, xa)
    for p in m.parameters():
        p.requires_grad_(True)
    train_step(xa)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


MIN_RUN = 0.2  # seconds; temper_train::bench::MIN_RUN_SECS


def median(f):
    f(); sync()
    # The second warm-up call, timed, sets the calls per run.
    s = time.perf_counter(); f(); sync(); warm = time.perf_counter() - s
    calls = min(max(math.ceil(MIN_RUN / warm), 1), 1000) if warm > 0 else 1000
    t = []
    for _ in range(max(reps, 1)):
        s = time.perf_counter()
        for _ in range(calls):
            f()
        sync(); t.append((time.perf_counter() - s) / calls)
    return statistics.median(t)


r = {k: bs / median(f) for k, f in [("forward", forward), ("pgd_step", pgd_only),
                                     ("train_step", lambda: train_step(x)), ("pgd10_at_iter", at_iter)]}
print(json.dumps(r))
