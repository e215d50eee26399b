#!/usr/bin/env python
"""Cuts the embedded sample (dmgin_tf/sample_data/) from the full public datasets.

Reproducible: same inputs -> byte-identical outputs. Cut by whole users, so every kept
user's history is complete; lines are copied byte for byte in their original order
(the raw formats, flaws included, are what the converters must handle).

* Taobao: the first 150 users in file order (the published file is itself the first
  680 users of the full log), plus user 1000636, whose item 2633450 appears under two
  categories - so the sample keeps both real flaws (4 of those 150 users have
  out-of-window timestamps).
* MovieLens: 120 users drawn with numpy.random.default_rng(0) from the 610 user ids,
  plus user 414 (the longest history, 2,698 ratings); their ratings.csv and tags.csv
  rows, the movies.csv rows of every movie they rated or tagged, and README.txt (the
  dataset's license) verbatim.

Usage: python scripts/make_sample.py [--data data] [--out dmgin_tf/sample_data]
"""
from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np

TAOBAO_USERS = 150
TAOBAO_EXTRA_USERS = ("1000636",)      # item 2633450 under two categories
MOVIELENS_USERS = 120
MOVIELENS_EXTRA_USERS = ("414",)       # longest history (2,698 ratings)
SEED = 0


def first_field(line: bytes) -> bytes:
    return line.split(b",", 1)[0]


def cut_taobao(src: pathlib.Path, dst: pathlib.Path) -> dict:
    lines = src.read_bytes().splitlines(keepends=True)
    order = list(dict.fromkeys(first_field(l) for l in lines))
    keep = set(order[:TAOBAO_USERS]) | {u.encode() for u in TAOBAO_EXTRA_USERS}
    out = [l for l in lines if first_field(l) in keep]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "UserBehavior.csv").write_bytes(b"".join(out))
    return {"users": len(keep), "rows": len(out)}


def cut_movielens(src: pathlib.Path, dst: pathlib.Path) -> dict:
    ratings = (src / "ratings.csv").read_bytes().splitlines(keepends=True)
    tags = (src / "tags.csv").read_bytes().splitlines(keepends=True)
    movies = (src / "movies.csv").read_bytes().splitlines(keepends=True)
    users = sorted({int(first_field(l)) for l in ratings[1:]})
    rng = np.random.default_rng(SEED)
    chosen = {str(u).encode() for u in rng.choice(users, size=MOVIELENS_USERS, replace=False)}
    chosen |= {u.encode() for u in MOVIELENS_EXTRA_USERS}
    r_out = [l for l in ratings[1:] if first_field(l) in chosen]
    t_out = [l for l in tags[1:] if first_field(l) in chosen]
    used = {l.split(b",", 2)[1] for l in r_out + t_out}
    m_out = [l for l in movies[1:] if first_field(l) in used]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "ratings.csv").write_bytes(ratings[0] + b"".join(r_out))
    (dst / "tags.csv").write_bytes(tags[0] + b"".join(t_out))
    (dst / "movies.csv").write_bytes(movies[0] + b"".join(m_out))
    shutil.copyfile(src / "README.txt", dst / "README.txt")
    return {"users": len(chosen), "ratings": len(r_out), "tags": len(t_out), "movies": len(m_out)}


def main() -> None:
    repo = pathlib.Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=pathlib.Path, default=repo / "data",
                    help="folder holding taobao-userbehavior/ and movielens-latest-small/ (docs/data.md)")
    ap.add_argument("--out", type=pathlib.Path, default=repo / "dmgin_tf" / "sample_data")
    args = ap.parse_args()
    print("taobao", cut_taobao(args.data / "taobao-userbehavior" / "UserBehavior.csv", args.out / "taobao"))
    print("movielens", cut_movielens(args.data / "movielens-latest-small", args.out / "movielens"))


if __name__ == "__main__":
    main()
