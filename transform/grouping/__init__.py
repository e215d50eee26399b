"""Interest grouping: k-means over item embeddings in Beam (`kmeans`), stable ids across
retrains (`stable_ids`), and the grouping report (`report`). Other grouping keys (item id,
category, random) live in `dmgin_tf.data.item_index`; `dmgin grouping fit` fronts all."""
