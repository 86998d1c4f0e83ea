"""Instruments the notebooks use to teach — not part of the quantization toolkit.

Each module measures one thing a lesson shows (the level grid, rounding statistics, outliers, per-layer error
by granularity, a group-size sweep, the GPU and CPU rooflines). The toolkit (qlab.affine, gptq, awq, gguf,
the walk, eval, export, cli) never imports from here; lessons import from the toolkit.
"""
