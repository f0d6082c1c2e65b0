"""Write the embedded samples (first 30 test images per class of each dataset) into the package.

    python tools/make_samples.py --data-dir ../shared/data
"""

import argparse
from pathlib import Path

from siamdiff.data.datasets import BUILTIN, make_sample

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    out = Path(__file__).resolve().parents[1] / "src" / "siamdiff" / "data" / "sample"
    for name in BUILTIN:
        path = make_sample(name, args.data_dir, out / f"{name}.npz")
        print(path, path.stat().st_size, "bytes")
