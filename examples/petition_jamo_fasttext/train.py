"""Train the example on the pilot's public training split, exported by `testbed pilots data petition-routing
--out DIR` (DIR/train.npz). The last tenth of the split (by time) fits the softmax temperature, so the scores
are calibrated. Usage: python train.py DIR/train.npz model.pt"""

import sys

import numpy as np
import torch
from model import FastText, batch, ngrams


def main(data_path: str, out_path: str, epochs: int = 4, seed: int = 0, lr: float = 0.02) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    data = np.load(data_path)
    feats, categories = [ngrams(str(t)) for t in data["texts"]], [str(c) for c in data["categories"]]
    index = {c: k for k, c in enumerate(categories)}
    y = torch.tensor([index[str(label)] for label in data["labels"]])
    cut = int(len(feats) * 0.9)
    counts = torch.bincount(y[:cut], minlength=len(categories)).clamp(min=1).float()
    weight = (counts.sum() / counts).sqrt()  # rarer categories weigh more: every policy area matters
    model = FastText(len(categories))
    sparse = torch.optim.SparseAdam(list(model.embed.parameters()), lr=lr)
    dense = torch.optim.Adam(model.out.parameters(), lr=lr)
    steps = epochs * -(-cut // 64)
    decay = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 - step / steps) for o in (sparse, dense)]
    for _ in range(epochs):
        for rows in torch.randperm(cut).split(64):
            sparse.zero_grad()
            dense.zero_grad()
            logits = model(*batch(ids=[feats[i] for i in rows]))
            loss = torch.nn.functional.cross_entropy(logits, y[rows], weight=weight)
            loss.backward()
            for step in (sparse, dense, *decay):
                step.step()
    with torch.no_grad():
        held = model(*batch(ids=feats[cut:]))
    temperature = min((torch.nn.functional.cross_entropy(held / t, y[cut:]).item(), t)
                      for t in np.linspace(0.5, 3, 26))[1]
    acc = (held.argmax(1) == y[cut:]).float().mean().item()
    print(f"held-out accuracy {acc:.3f}, temperature {temperature:.2f}")
    torch.save({"state": model.state_dict(), "categories": categories, "temperature": float(temperature)}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
