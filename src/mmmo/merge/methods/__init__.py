"""The merge methods' mathematics, as mergekit 0.1.5 defines it: the methods as data (`registry`), one merge's
resolved parameters (`plan`), sparsification (`sparsify`), task arithmetic step by step (`reference`) and the
interpolations (`interpolate`). Light: `registry` imports no torch, so the spec schema can read it."""
