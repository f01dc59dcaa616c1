"""Train the example MLP on the pilot's public training split, exported by
`testbed pilots data bike-demand --out DIR` (DIR/train.npz). Usage: python train.py DIR/train.npz model.pt"""

import sys

import numpy as np
import torch
from model import DemandNet, features


def main(data_path: str, out_path: str, epochs: int = 150, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = np.load(data_path)
    history, future, target = data["history"], data["future"], data["target"]
    stats = {"mean": np.nanmean(future, axis=(0, 1)), "std": np.nanstd(future, axis=(0, 1)) + 1e-6}
    model = DemandNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        # Robustness by design: hide a random share of history hours, as sensor outages would.
        hist = history.copy()
        lost = rng.random(hist.shape[:2]) < rng.uniform(0, 0.3)
        hist[:, :, [0, *range(5, 13)]] = np.where(lost[..., None], np.nan, hist[:, :, [0, *range(5, 13)]])
        x, level = features(hist, future, stats)
        y = torch.as_tensor(target, dtype=torch.float32) / level[:, None]
        model.train()
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
        if epoch % 25 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  L1 (scaled) {loss.item():.4f}", flush=True)
    torch.save({"state": model.state_dict(), "stats": stats}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
