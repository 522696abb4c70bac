"""accelerate configs for training a 7B-65B base on GPUs: `python -m limachat.train.configs` prints their paths."""

from pathlib import Path

HERE = Path(__file__).parent
CONFIGS = {p.stem: p for p in sorted(HERE.glob("*.yaml"))}

if __name__ == "__main__":
    for path in CONFIGS.values():
        print(path)
