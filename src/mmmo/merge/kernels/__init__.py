"""The fast path: what the Merger runs per tensor for every candidate, equal to `merge.methods` to a stated
tolerance. Per-tensor decisions (`tensor_setup`), TIES thresholds (`selection`), search-wide tables (`tables`),
the eager pass (`chunked`), the compiled kernel (`fused`), SCE's two passes (`sce`), the interpolations over the
Merger's sources (`geometric`), scratch buffers (`workspace`) and the one entry point (`fast_merge`)."""
