"""Example vendor bundle for the petition-routing pilot: a fastText-style PyTorch model over character and
jamo n-grams (see model.py and train.py)."""

from pathlib import Path

import bentoml
import torch
from model import FastText, batch

HERE = Path(__file__).parent


@bentoml.service(resources={"cpu": "1"})
class PetitionJamoFastText:
    def __init__(self):
        torch.set_num_threads(1)
        saved = torch.load(HERE / "model.pt", map_location="cpu", weights_only=False)
        self.categories, self.temperature = saved["categories"], saved["temperature"]
        self.model = FastText(len(self.categories))
        self.model.load_state_dict(saved["state"])
        self.model.eval()

    @bentoml.api
    def classify(self, texts: list[str]) -> list[dict]:
        if not texts:
            return []
        with torch.no_grad():
            probs = torch.softmax(self.model(*batch(texts)) / self.temperature, dim=1).tolist()
        return [{"label": self.categories[max(range(len(p)), key=p.__getitem__)],
                 "scores": dict(zip(self.categories, p, strict=True))} for p in probs]
