"""A small PyTorch network for next month's boardings per station and hour band: the past four months scaled by
their level, the alightings beside them, the calendar of past and coming months, and the hour band.
Shared by `train.py` and `service.py`. Feature positions follow the pilot's contract
(`testbed pilots show subway-ridership`): history = boardings, month, days_in_month, weekdays_in_month, hour,
alightings; future = month, days_in_month, weekdays_in_month, hour."""

import numpy as np
import torch
from torch import nn

HISTORY = 4
WIDTH = 4 * HISTORY + 2 + HISTORY + 3 + 24


def _mean_seen(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Row means over the finite entries (0 for a row with none)."""
    return np.where(seen, values, 0.0).sum(1) / np.maximum(seen.sum(1), 1)


def features(history: np.ndarray, future: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and the scale that turns outputs back into passengers: the mean passengers per day of the
    past months times the coming month's days (so the network learns corrections to a per-day rate)."""
    days = history[:, :, 2]
    board, alight = history[:, :, 0] / days, history[:, :, 5] / days
    seen, alight_seen = np.isfinite(board), np.isfinite(alight)
    level = _mean_seen(board, seen)  # 0 for a band nobody used: the forecast is then 0 too
    alight_level = _mean_seen(alight, alight_seen) + 0.1
    weekday_share = history[:, :, 3] / days
    coming_days, coming_weekday_share = future[:, 0, 1], future[:, 0, 2] / future[:, 0, 1]
    hour = np.nan_to_num(future[:, 0, 3]).astype(int) % 24
    x = np.concatenate([np.where(seen, board, 0.0) / (level[:, None] + 0.1), seen,
                        np.where(alight_seen, alight, 0.0) / alight_level[:, None], alight_seen,
                        np.log(level + 0.1)[:, None] / 10, np.log(alight_level / (level + 0.1))[:, None],
                        weekday_share, coming_weekday_share[:, None],
                        coming_days[:, None] / 31, (coming_days - days[:, -1])[:, None] / 3, np.eye(24)[hour]], axis=1)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(level * coming_days, dtype=torch.float32)


class RidershipNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(WIDTH, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(x) + 0.5413)  # softplus(0.5413) = 1: starts at the per-day rate
