"""Example vendor bundle for the bike-demand pilot: a small PyTorch MLP (see model.py and train.py)."""

from pathlib import Path

import bentoml
import numpy as np
import torch
from model import DemandNet, features

HERE = Path(__file__).parent


@bentoml.service(resources={"cpu": "1"})
class DemandMLP:
    def __init__(self):
        torch.set_num_threads(1)
        saved = torch.load(HERE / "model.pt", map_location="cpu", weights_only=False)
        self.stats = saved["stats"]
        self.model = DemandNet()
        self.model.load_state_dict(saved["state"])
        self.model.eval()

    @bentoml.api
    def forecast(self, history: np.ndarray, future: np.ndarray) -> np.ndarray:
        x, level = features(history.astype(np.float64), future.astype(np.float64), self.stats)
        with torch.no_grad():
            pred = self.model(x) * level[:, None]
        working = torch.as_tensor(np.nan_to_num(future[:, :, 3], nan=1.0), dtype=torch.float32)
        return (pred * working).numpy().astype(np.float64)
