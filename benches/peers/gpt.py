"""`examples/gpt_shakespeare.nn` in PyTorch: nanoGPT's "baby GPT" CPU recipe (context 64, batch
12, 4 blocks, 4 heads, width 128, no biases, no dropout, exact GELU, the output layer tied to
the token embedding, GPT-2's initialisation), AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1
on matrices only), 100 warm-up steps then cosine decay to 1e-4 at step 2,000, gradients clipped
at norm 1. The data are cut as nabla's `text` source cuts them (sorted character vocabulary,
non-overlapping windows of 64, the last tenth held out, the training windows shuffled every
epoch). Parameters are held under nabla's names and layouts (a dense weight [in, out];
`w_qkv` the query, key and value projections side by side, as nanoGPT's c_attn), so that
tests/golden/gpt_step.json (benches/peers/gpt_step.py) can use the same forward.

  gpt.py [--steps 2000] [--compile]       train, then print the median step and the losses
  gpt.py --time N [--compile]             time N steps on random tokens of the same shapes

Prints one JSON object."""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from char_rnn import windows


class Recipe:
    def __init__(self, width=128, heads=4, layers=4, seq=64, lr=1e-3, min_lr=1e-4, warmup=100, total=2000):
        self.width, self.heads, self.layers, self.seq = width, heads, layers, seq
        self.lr, self.min_lr, self.warmup, self.total = lr, min_lr, warmup, total

    def get_lr(self, it):
        """nanoGPT's schedule."""
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if it > self.total:
            return self.min_lr
        ratio = (it - self.warmup) / (self.total - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)


def parameters(r, vocab, residual_std=0.02):
    """Normal 0.02 everywhere but the residual projections (`residual_std`); norms' scales ones."""
    normal = lambda std, *shape: (torch.randn(*shape) * std).requires_grad_()
    ones = lambda n: torch.ones(n, requires_grad=True)
    w = r.width
    p = {"tok.w": normal(0.02, vocab, w), "pos": normal(0.02, r.seq, w)}
    for b in range(1, r.layers + 1):
        p[f"h{b}.a.gamma"] = ones(w)
        p[f"h{b}.a.w_qkv"] = normal(0.02, w, 3 * w)
        p[f"h{b}.a.w_out"] = normal(residual_std, w, w)
        p[f"h{b}.m.gamma"] = ones(w)
        p[f"h{b}.m.w"] = normal(0.02, w, 4 * w)
        p[f"h{b}.w"] = normal(residual_std, 4 * w, w)
    p["logits.gamma"] = ones(w)
    return p


def forward(r, p, x):
    w = r.width
    norm = lambda h, g: F.layer_norm(h, (w,), weight=g, eps=1e-5)
    batch, seq = x.shape
    h = p["tok.w"][x] + p["pos"][:seq]
    for b in range(1, r.layers + 1):
        qkv = norm(h, p[f"h{b}.a.gamma"]) @ p[f"h{b}.a.w_qkv"]
        heads = [t.view(batch, seq, r.heads, w // r.heads).transpose(1, 2) for t in qkv.split(w, dim=2)]
        y = F.scaled_dot_product_attention(*heads, is_causal=True)
        h = h + y.transpose(1, 2).reshape(batch, seq, w) @ p[f"h{b}.a.w_out"]
        m = F.gelu(norm(h, p[f"h{b}.m.gamma"]) @ p[f"h{b}.m.w"])
        h = h + m @ p[f"h{b}.w"]
    return norm(h, p["logits.gamma"]) @ p["tok.w"].t()


def adamw(p, lr):
    """AdamW decaying matrices only, as nanoGPT's parameter groups."""
    decay = [t for t in p.values() if t.dim() >= 2]
    keep = [t for t in p.values() if t.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", default="data/text/shakespeare.txt")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--time", type=int, default=0, help="only time this many steps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step's model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--context", type=int, default=64, help="positions per window (the cost-growth rows)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count())
    r, batch = Recipe(seq=args.context), 12
    if args.time:
        vocab = list(range(76))
        x = torch.randint(0, 76, (batch, r.seq))
        train, val = (x, x), None
    else:
        vocab, train, val = windows(args.text, r.seq)
    p = parameters(r, len(vocab), residual_std=0.02 / math.sqrt(2 * r.layers))
    opt = adamw(p, r.lr)
    model = (lambda x: forward(r, p, x))
    if args.compile:
        model = torch.compile(model)
    steps = args.time or args.steps
    rows = train[0].shape[0]
    order, at, seconds, losses = torch.randperm(rows), 0, [], []
    for step in range(steps):
        if at + batch > rows:
            order, at = torch.randperm(rows), 0
        idx = order[at : at + batch] if not args.time else torch.arange(batch)
        at += batch
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = r.get_lr(step)
        opt.zero_grad(set_to_none=True)
        logits = model(train[0][idx])
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), train[1][idx].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        seconds.append(time.perf_counter() - started)
        losses.append(loss.item())
    out = {
        "framework": "torch.compile" if args.compile else "torch eager",
        "torch": torch.__version__,
        "steps": steps,
        "step_ms": statistics.mean(seconds[5:] or seconds) * 1e3,
        "step_ms_median": statistics.median(seconds[5:] or seconds) * 1e3,
        "train_loss_last_100": statistics.mean(losses[-100:]),
    }
    if val is not None:
        with torch.no_grad():
            total = 0.0
            for i in range(0, val[0].shape[0], 64):
                logits = forward(r, p, val[0][i : i + 64])
                total += F.cross_entropy(logits.reshape(-1, len(vocab)), val[1][i : i + 64].reshape(-1), reduction="sum").item()
            out["val_loss"] = total / val[1].numel()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
