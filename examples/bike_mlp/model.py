"""A small PyTorch network for 24-hour bike demand: history scaled by its weekly level, plus the next day's
calendar and weather. Shared by `train.py` and `service.py`."""

import numpy as np
import torch
from torch import nn

HISTORY, HORIZON, N_FUTURE = 168, 24, 12


def features(history: np.ndarray, future: np.ndarray, stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and the per-window level that turns outputs back into bikes/hour."""
    demand = history[:, :, 0]
    level = np.nan_to_num(np.nanmean(demand, axis=1), nan=0.0) + 1.0
    seen = np.isfinite(demand)
    scaled = np.where(seen, demand, 0.0) / level[:, None]
    fut = (np.nan_to_num(future) - stats["mean"]) / stats["std"]
    hour = future[:, :, 0] * (2 * np.pi / 24)
    cyc = np.stack([np.sin(hour), np.cos(hour)], axis=-1)
    x = np.concatenate([scaled, seen.astype(float), fut.reshape(len(fut), -1), cyc.reshape(len(fut), -1)], axis=1)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(level, dtype=torch.float32)


class DemandNet(nn.Module):
    def __init__(self):
        super().__init__()
        width = 2 * HISTORY + HORIZON * (N_FUTURE + 2)
        self.net = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 128), nn.GELU(),
                                 nn.Linear(128, HORIZON))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(x))
