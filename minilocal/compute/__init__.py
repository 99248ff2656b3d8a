"""Compute efficiency: FLOPs per block, the idealized-time cost model, sweeps, Pareto, gradient similarity."""
