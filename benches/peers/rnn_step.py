"""Writes tests/golden/rnn_step.json: one SGD step of tests/golden/rnn_step.nn in PyTorch.

The model (embedding -> nn.RNN -> nn.LSTM -> nn.GRU -> Linear, batch_first) is initialised
by PyTorch with seed 0 and trained for one step of SGD (lr 10, large so that every parameter moves well past the test's tolerance) on every window of
tests/golden/rnn_step.txt at once, cut as nabla's `text` source cuts it (sorted character
vocabulary, non-overlapping windows of 6 with next-character targets). The JSON holds the
parameters before and after the step under nabla's names and layouts (nabla's dense weight
is [in, out], the transpose of nn.Linear's), and the loss. The test in tests/sequences.rs
loads the initial parameters into nabla, takes the same step and compares.
Run from the repository root: benches/peers/run.sh makes the virtualenv this needs."""

import json

import torch

HERE = "tests/golden/"


class Stacked(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.e = torch.nn.Embedding(vocab, 3)
        self.h1 = torch.nn.RNN(3, 4, batch_first=True)
        self.h2 = torch.nn.LSTM(4, 3, batch_first=True)
        self.h3 = torch.nn.GRU(3, 4, batch_first=True)
        self.logits = torch.nn.Linear(4, vocab)

    def forward(self, x):
        h = self.e(x)
        for layer in (self.h1, self.h2, self.h3):
            h, _ = layer(h)
        return self.logits(h)


def nabla_parameters(model):
    """Parameters under nabla's names (`h1.w_ih`, `logits.w`) and layouts."""
    out = {}
    for name, p in model.named_parameters():
        layer, field = name.split(".")
        value = p.detach().clone()
        if layer == "logits":
            field = {"weight": "w", "bias": "b"}[field]
            value = value.t() if field == "w" else value
        elif layer == "e":
            field = "w"
        else:
            field = field.removesuffix("_l0").replace("weight", "w").replace("bias", "b")
        out[f"{layer}.{field}"] = {"shape": list(value.shape), "data": value.reshape(-1).tolist()}
    return out


def main():
    torch.manual_seed(0)
    text = open(HERE + "rnn_step.txt", encoding="utf-8").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    seq = 6
    rows = (len(ids) - 1) // seq
    x = ids[: rows * seq].view(rows, seq)
    y = ids[1 : rows * seq + 1].view(rows, seq)
    model = Stacked(len(vocab))
    before = nabla_parameters(model)
    opt = torch.optim.SGD(model.parameters(), lr=10)
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
    loss.backward()
    opt.step()
    golden = {
        "torch": torch.__version__,
        "vocabulary": len(vocab),
        "windows": rows,
        "loss": loss.item(),
        "before": before,
        "after": nabla_parameters(model),
    }
    with open(HERE + "rnn_step.json", "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
