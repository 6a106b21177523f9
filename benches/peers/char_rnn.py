"""`examples/char_rnn.nn` in PyTorch eager: embedding(V -> 64) -> nn.RNN(256, tanh) -> Linear(V),
sequences of 64 characters, batch 32, Adam lr 2e-3, on the same text cut the same way (sorted
character vocabulary; non-overlapping windows, each predicting the next character at every
position; the last tenth of the windows held out for validation). Trains for `--steps` steps
(shuffling the training windows every epoch) and prints one JSON object: the median step time,
the mean training loss over the last epoch's worth of steps, and the validation loss at the end.
With `--steps 0 --time N` it only times N steps on random tokens of the same shapes."""

import argparse
import json
import os
import statistics
import time

import torch


def windows(path, seq):
    text = open(path, encoding="utf-8").read()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    rows = (len(ids) - 1) // seq
    x = ids[: rows * seq].view(rows, seq)
    y = ids[1 : rows * seq + 1].view(rows, seq)
    held = max(1, round(rows * 0.1))
    return vocab, (x[: rows - held], y[: rows - held]), (x[rows - held :], y[rows - held :])


class CharRnn(torch.nn.Module):
    def __init__(self, vocab, dim=64, hidden=256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.rnn = torch.nn.RNN(dim, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.embed(x))
        return self.out(h)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", default="data/text/shakespeare.txt")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--time", type=int, default=0, help="only time this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=76)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count())
    seq, batch = 64, 32
    if args.time:
        vocab = list(range(args.vocab))
        x = torch.randint(0, args.vocab, (batch, seq))
        train = (x, x)
    else:
        vocab, train, val = windows(args.text, seq)
    model = CharRnn(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb).reshape(-1, len(vocab)), yb.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    if args.time:
        for _ in range(5):
            step(*train)
        times = []
        for _ in range(args.time):
            start = time.perf_counter()
            step(*train)
            times.append(time.perf_counter() - start)
        print(json.dumps({"framework": "torch", "model": "char_rnn", "step_ms": 1e3 * statistics.mean(times),
                          "step_ms_median": 1e3 * statistics.median(times)}))
        return

    rows = len(train[0])
    per_epoch = -(-rows // batch)
    losses, times = [], []
    done = 0
    started = time.perf_counter()
    while done < args.steps:
        order = torch.randperm(rows)
        for k in range(per_epoch):
            if done == args.steps:
                break
            pick = order[k * batch : (k + 1) * batch]
            start = time.perf_counter()
            losses.append(step(train[0][pick], train[1][pick]))
            times.append(time.perf_counter() - start)
            done += 1
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        total = 0.0
        for k in range(0, len(val[0]), 256):
            xb, yb = val[0][k : k + 256], val[1][k : k + 256]
            total += loss_fn(model(xb).reshape(-1, len(vocab)), yb.reshape(-1)).item() * len(xb)
    print(json.dumps({
        "framework": "torch",
        "model": "char_rnn",
        "steps": done,
        "step_ms": 1e3 * statistics.mean(times),
        "step_ms_median": 1e3 * statistics.median(times),
        "seconds": seconds,
        "train_loss": statistics.mean(losses[-per_epoch:]),
        "val_loss": total / len(val[0]),
    }))


if __name__ == "__main__":
    main()
