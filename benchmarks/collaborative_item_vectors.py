"""Item vectors from who rated what in the training split (an exploration of grouping
keys; docs/benchmarks.md, Quality): for `dmgin grouping fit --key cluster --embeddings`.

    python benchmarks/collaborative_item_vectors.py --examples EXAMPLE_SET \
        --items CONVERTED/items.parquet --output item_vectors.parquet

Each item's vector: the truncated SVD (`--dim`) of the training split's item x user
matrix (1 per training example of the pair; each user's column scaled by 1/sqrt(its
examples), so heavy users do not dominate), unit-normalised, then concatenated with
`--genre-weight` x the item's unit-normalised multi-hot of its `|`-separated categories
(MovieLens genres), so items without training examples still land near similar ones.
Only training examples are read: validation and test labels and pairs never enter.
"""
import argparse

import numpy as np
import pandas as pd


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", required=True, help="`dmgin examples build` output directory")
    p.add_argument("--items", required=True, help="items.parquet of `dmgin data convert`")
    p.add_argument("--output", required=True, help="Parquet item_id, embedding")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--genre-weight", type=float, default=0.5)
    args = p.parse_args()

    import scipy.sparse as sp
    from scipy.sparse.linalg import svds
    ex = np.load(f"{args.examples}/examples.npz")
    index = pd.read_parquet(f"{args.examples}/item_index.parquet")
    train = ex["ex_split"] == 0
    users, items = ex["ex_user"][train], ex["ex_cand_item"][train]
    num_items = int(index.item_idx.max()) + 1
    x = sp.csr_matrix((np.ones(len(users), np.float64), (items, users)),
                      shape=(num_items, int(ex["ex_user"].max()) + 1))
    x.data[:] = 1.0                                         # a pair counts once
    x = x @ sp.diags(1.0 / np.sqrt(np.maximum(np.asarray(x.sum(0)).ravel(), 1.0)))
    u, s, _ = svds(x, k=args.dim)
    vec = u * np.sqrt(s)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)

    catalog = pd.read_parquet(args.items)
    category = dict(zip(catalog.item_id.astype(str), catalog.category.fillna("")))
    names = sorted({g for c in category.values() for g in c.split("|") if g})
    column = {g: j for j, g in enumerate(names)}
    genres = np.zeros((num_items, len(names)))
    for item_id, idx in zip(index.item_id.astype(str), index.item_idx):
        for g in category.get(item_id, "").split("|"):
            if g:
                genres[idx, column[g]] = 1.0
    genres /= np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1e-12)
    table = np.concatenate([vec, args.genre_weight * genres], axis=1).astype(np.float32)
    pd.DataFrame({"item_id": index.item_id.astype(str),
                  "embedding": list(table[index.item_idx.to_numpy()])}).to_parquet(args.output)
    print(f"{len(index):,} items ({int((np.asarray(x.sum(1)).ravel() > 0).sum()):,} with "
          f"training examples), {table.shape[1]} dims -> {args.output}")


if __name__ == "__main__":
    main()
