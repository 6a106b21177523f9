"""Writes tests/golden/gpt_step.json: three AdamW steps of tests/golden/gpt_step.nn in PyTorch.

The model is benches/peers/gpt.py's, written with torch's own layers' functions (layer_norm, scaled_dot_product_attention
with is_causal, gelu, cross_entropy) over parameters held under nabla's names and layouts (a
dense weight is [in, out], the transpose of nn.Linear's; `w_qkv` holds the query, key and
value projections side by side, as nanoGPT's c_attn). Initialised with seed 0 (normal 0.02,
the layer norms' scales ones), trained on every window of rnn_step.txt at once (cut as nabla's
`text` source cuts it) with AdamW (betas 0.9/0.99, weight decay 0.1 on matrices only, as
nanoGPT's param groups), nanoGPT's get_lr (2 warm-up steps, cosine to 1e-3 at step 10) and
clip_grad_norm_(0.5) before every step. The JSON holds the parameters before and after, the
loss of each step and the gradients' norms (each above 0.5, so the clip acts). The test in
tests/attention.rs loads the initial parameters into nabla, takes the same steps and compares.
Run from the repository root: benches/peers/run.sh makes the virtualenv this needs."""

import json

import torch
import torch.nn.functional as F

from gpt import Recipe, adamw, forward, parameters

HERE = "tests/golden/"
STEPS = 3
RECIPE = Recipe(width=8, heads=2, layers=2, seq=8, lr=0.01, min_lr=0.001, warmup=2, total=10)


def snapshot(p):
    return {
        name: {"shape": list(t.shape), "data": t.detach().reshape(-1).tolist()}
        for name, t in p.items()
    }


def main():
    text = open(HERE + "rnn_step.txt", encoding="utf-8").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    seq = RECIPE.seq
    rows = (len(ids) - 1) // seq
    x = ids[: rows * seq].view(rows, seq)
    y = ids[1 : rows * seq + 1].view(rows, seq)
    torch.manual_seed(0)
    p = parameters(RECIPE, len(vocab))
    before = snapshot(p)
    opt = adamw(p, RECIPE.lr)
    losses, norms = [], []
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = RECIPE.get_lr(step)
        opt.zero_grad()
        loss = F.cross_entropy(forward(RECIPE, p, x).reshape(-1, len(vocab)), y.reshape(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(p.values()), 0.5)
        assert norm > 0.5, f"the clip must act: norm {norm}"
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
    golden = {
        "torch": torch.__version__,
        "vocabulary": len(vocab),
        "windows": rows,
        "losses": losses,
        "gradient_norms": norms,
        "before": before,
        "after": snapshot(p),
    }
    with open(HERE + "gpt_step.json", "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
