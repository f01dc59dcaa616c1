"""Train the example on the pilot's public training split (`testbed pilots data petition-routing --out DIR`
writes DIR/train.npz). Usage: python train.py DIR/train.npz model.pt (a pickle, whatever the name)."""

import pickle
import sys

import numpy as np
from model import pipeline


def main(data_path: str, out_path: str) -> None:
    data = np.load(data_path)
    texts, labels = [str(t) for t in data["texts"]], [str(label) for label in data["labels"]]
    cut = int(len(texts) * 0.9)
    model = pipeline().fit(texts[:cut], labels[:cut])
    print(f"held-out accuracy {model.score(texts[cut:], labels[cut:]):.3f}")
    model = pipeline().fit(texts, labels)
    with open(out_path, "wb") as fh:
        pickle.dump({"model": model, "categories": [str(c) for c in data["categories"]]}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
