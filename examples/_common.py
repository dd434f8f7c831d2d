"""Small helpers shared by the examples: command line, output folder and plotting.

Nothing here is rnnjax-specific; each example stays readable on its own.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")  # write PNG files; never open a window
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "out"

__all__ = ["DEFAULT_OUT", "parser", "out_dir", "plt", "save_figure"]


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every example has: --out, --seed, --smoke."""
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="folder for the plot and other outputs")
    p.add_argument("--seed", type=int, default=0, help="random seed (parameters, data split, shuffling)")
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny data (seconds), for CI")
    return p


def out_dir(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")
    return pathlib.Path(path)
