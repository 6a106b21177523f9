"""Writes tests/golden/{rnn_step,rnn_300,rnn_1000}.json: one SGD step of the model of the same
name (tests/golden/*.nn) in PyTorch.

The model (embedding -> nn.RNN -> nn.LSTM -> nn.GRU -> Linear, batch_first) is initialised
by PyTorch with seed 0 and trained for one step of SGD (lr 10, large so that every parameter
moves well past the test's tolerance) on every window of its text at once, cut as nabla's
`text` source cuts it (sorted character vocabulary, non-overlapping windows of `seq` with
next-character targets): rnn_step.txt in windows of 6, and long_sequence.txt in windows of 300
and of 1,000 (more steps than a byte counts, issue 21). The JSON holds the parameters before
and after the step under nabla's names and layouts (nabla's dense weight is [in, out], the
transpose of nn.Linear's), and the loss. The tests in tests/sequences.rs load the initial
parameters into nabla, take the same step and compare.
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


def one_step(name, text_file, seq):
    torch.manual_seed(0)
    text = open(HERE + text_file, encoding="utf-8").read()
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
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
    with open(HERE + name + ".json", "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


def main():
    one_step("rnn_step", "rnn_step.txt", 6)
    one_step("rnn_300", "long_sequence.txt", 300)
    one_step("rnn_1000", "long_sequence.txt", 1000)


if __name__ == "__main__":
    main()
