"""pytest set-up shared by tests/, course/ and solutions/ (also for a bare `pytest --nbval course/`).

One BLAS/OpenMP thread per process: notebook kernels inherit this environment, and on a small
machine several threads per kernel oversubscribe the cores and run many times slower. Results are
printed rounded, so they do not depend on the thread count.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
