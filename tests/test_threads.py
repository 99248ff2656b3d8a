"""The thread count set at import: the rules, the errors, and its effect on NumPy's BLAS and torch
in a fresh interpreter (as a JupyterLab kernel starts, with no thread variables set)."""
import json
import os
import subprocess
import sys

import pytest

from minilocal import threads


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_is_half_the_cpus_between_1_and_4(cpus, expected):
    assert threads.default_threads(cpus) == expected


@pytest.mark.parametrize("environ, expected", [
    ({}, "default"),
    ({"OMP_NUM_THREADS": "3"}, 3),
    ({"MINILOCAL_THREADS": "2", "OMP_NUM_THREADS": "1"}, 2),  # the project's own variable wins
    ({"MINILOCAL_THREADS": " ", "OMP_NUM_THREADS": "5"}, 5),  # blank counts as unset
])
def test_chosen_threads_follows_the_documented_order(environ, expected):
    want = threads.default_threads() if expected == "default" else expected
    assert threads.chosen_threads(environ) == want


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_count_names_the_variable_and_the_fix(value):
    with pytest.raises(ValueError, match=rf"MINILOCAL_THREADS='{value}': the thread count must be a "
                                         r"positive integer, e.g. MINILOCAL_THREADS=2"):
        threads.chosen_threads({"MINILOCAL_THREADS": value})


PROBE = """
import json, numpy, torch
from threadpoolctl import threadpool_info
import minilocal
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
print(json.dumps({"torch": torch.get_num_threads(), "blas": blas}))
"""


def probe(extra_env):
    """Thread counts seen after ``import minilocal`` in a fresh interpreter with ``extra_env``."""
    env = {k: v for k, v in os.environ.items()
           if k not in threads.POOL_VARS + (threads.ENV, "ATEN_CPU_CAPABILITY")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_import_limits_blas_and_torch_in_a_fresh_kernel():
    seen = probe({})  # numpy and torch were imported first: the limit still reaches both
    want = threads.default_threads()
    assert seen["torch"] == want and seen["blas"] and set(seen["blas"]) == {want}


def test_minilocal_threads_sets_both_pools():
    seen = probe({"MINILOCAL_THREADS": "2"})
    assert seen == {"torch": 2, "blas": seen["blas"]} and set(seen["blas"]) == {2}
