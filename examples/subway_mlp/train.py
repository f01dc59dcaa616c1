"""Train the example network on the pilot's public training split, exported by
`testbed pilots data subway-ridership --out DIR` (DIR/train.npz). Usage: python train.py DIR/train.npz model.pt"""

import sys

import numpy as np
import torch
from model import RidershipNet, features


def main(data_path: str, out_path: str, epochs: int = 40, seed: int = 0) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    data = np.load(data_path)
    history, future, target = data["history"], data["future"], data["target"][:, 0]
    # the loss weighs each window's error by its in-sample month-to-month change, as MASE does
    scale = np.maximum(np.mean(np.abs(np.diff(history[:, :, 0], axis=1)), axis=1), 30.0)
    y, w = torch.as_tensor(target, dtype=torch.float32), torch.as_tensor(1 / scale, dtype=torch.float32)
    model = RidershipNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for epoch in range(epochs):
        # Robustness by design: hide a random share of past months, as record outages would.
        hist = history.copy()
        lost = rng.random(hist.shape[:2]) < rng.uniform(0, 0.3)
        lost[:, -1] &= rng.random(len(hist)) < 0.5
        hist[:, :, [0, 4, 5]] = np.where(lost[..., None], np.nan, hist[:, :, [0, 4, 5]])
        x, level = features(hist, future)
        model.train()
        for idx in torch.randperm(len(x)).split(512):
            opt.zero_grad()
            loss = (torch.abs(model(x[idx])[:, 0] * level[idx] - y[idx]) * w[idx]).mean()
            loss.backward()
            opt.step()
        sched.step()
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  scaled L1 {loss.item():.4f}", flush=True)
    torch.save({"state": model.state_dict()}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
