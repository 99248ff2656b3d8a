"""The cost model at equal hardware (N devices in all), on cases worked out by hand."""
import math

import pytest

from minilocal import Plan
from minilocal.compute.cost import (equal_hardware_time, idealized_time, pipeline_stage_flops,
                                    pipeline_time, stage_flops)
from minilocal.compute.flops import Flops

R = 1.0  # one FLOP per second: times below are FLOP counts
UNIT, FREE = Flops(1.0, 1.0, 1.0), Flops(0.0, 0.0, 0.0)  # each block: F = Bw = Bx = 1


def test_backprop_is_data_parallel_over_min_batch_and_devices():
    W = [11.0]  # backprop of 4 unit blocks: 4 F + 4 Bw + 3 Bx
    # N = 8 devices, batch 32: 4 examples per device, 10 steps, no fill (one stage)
    assert equal_hardware_time(10, W, 32, 8, R) == 10 * 11 * 4
    # more devices than examples: the extra devices idle, one example each
    assert equal_hardware_time(10, W, 32, 1000, R) == 10 * 11 * 1
    assert equal_hardware_time(10, W, 33, 8, R) == 10 * 11 * 5  # ceil(33 / 8)


def test_local_methods_split_the_devices_over_their_stages():
    W = [2.0] * 4  # greedy, 4 unit blocks, free heads: F + Bw per stage
    # N = 8: 4 stages x 2 replicas; batch 32: 16 examples per replica; fill of 3 steps once
    assert equal_hardware_time(10, W, 32, 8, R) == (10 + 3) * 2 * 16
    # the same work with one device per example and stage (the unlimited view) needs 128 devices
    assert equal_hardware_time(10, W, 32, 128, R) == idealized_time(10, W, 32, R, None)
    assert equal_hardware_time(10, W, 32, 4096, R) == (10 + 3) * 2 * 1


def test_at_equal_hardware_greedy_gains_less_than_in_the_unlimited_view():
    greedy, backprop = [2.0] * 4, [11.0]
    unlimited = idealized_time(100, backprop, 64, R) / idealized_time(100, greedy, 64, R)
    equal = equal_hardware_time(100, backprop, 64, 16, R) / equal_hardware_time(100, greedy, 64, 16, R)
    assert unlimited == pytest.approx(11 * 100 / (2 * 103))      # 5.3x: 4x the devices
    assert equal == pytest.approx(11 * 4 * 100 / (2 * 16 * 103))  # 1.3x on the same 16 devices


def test_pipeline_stage_flops_cut_one_backprop_model():
    plan = Plan.chunked(4, 2)
    assert pipeline_stage_flops(plan, [UNIT] * 4, Flops(0.5, 0.5, 0.5)) == [2 + 3.0, 6 + 1.5]
    one = pipeline_stage_flops(Plan.backprop(4), [UNIT] * 4, FREE)
    assert one == stage_flops(Plan.backprop(4), [UNIT] * 4, [FREE]) == [11.0]


def test_pipeline_time_pays_the_bubble_every_step():
    V = [5.0, 6.0]  # two pipeline stages
    # N = 4: 2 stages x 2 replicas; batch 16: 8 examples per replica; M = 4 microbatches of 2
    assert pipeline_time(3, V, 16, 4, microbatches=4, throughput=R) == 3 * (4 + 1) * 6 * 2
    # default M = one example per microbatch: (8 + 1) slots of one example
    assert pipeline_time(3, V, 16, 4, throughput=R) == 3 * (8 + 1) * 6 * 1
    # one stage: GPipe is plain data parallelism
    assert pipeline_time(3, [11.0], 16, 4, throughput=R) == equal_hardware_time(3, [11.0], 16, 4, R)


@pytest.mark.parametrize("call, message", [
    (lambda: equal_hardware_time(1, [1.0] * 4, 8, 3), r"4 stages need at least 4 devices, got n_devices=3"),
    (lambda: equal_hardware_time(1, [1.0], 8, 0), r"n_devices must be an int >= 1, got 0"),
    (lambda: pipeline_time(1, [1.0, 1.0], 8, 4, microbatches=5), r"5 microbatches but only 4 examples per replica"),
    (lambda: pipeline_time(-1, [1.0], 8, 4), r"steps must be an int >= 0, got -1"),
    (lambda: pipeline_stage_flops(Plan.greedy(3), [UNIT] * 2, FREE), r"the plan has 3 blocks, got Flops for 2"),
])
def test_bad_budgets_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def record(method, batch, lr, steps, losses, work):
    config = {"method": method, "batch": batch, "lr": lr}
    return {"config": config, "steps": steps, "loss": losses, "stage_flops": work, "n_stages": len(work)}


def test_equal_hardware_picks_the_fastest_batch_per_budget_and_compares_on_the_same_n():
    from minilocal.compute.pareto import equal_hardware
    results = {  # backprop: 100 steps at batch 8, 60 at 64; greedy: 150 at 8, 120 at 64
        "a": record("backprop", 8, 1e-3, [0, 100], [2.0, 0.4], [11.0]),
        "b": record("backprop", 64, 1e-3, [0, 60], [2.0, 0.4], [11.0]),
        "c": record("greedy", 8, 1e-3, [0, 150], [2.0, 0.4], [2.0] * 4),
        "d": record("greedy", 64, 1e-3, [0, 120], [2.0, 0.3], [2.0] * 4),
        "e": record("greedy", 64, 3e-3, [0, 200], [2.0, 0.45], [2.0] * 4),  # slower lr: not chosen
    }
    rows = {(r["n_devices"], r["method"]): r for r in equal_hardware(results, 0.5, [8, 64], throughput=1.0)}
    # N = 8: backprop batch 8 -> 100 * 11 * 1 = 1100; batch 64 -> 60 * 11 * 8 = 5280: batch 8 wins
    assert rows[8, "backprop"]["time"] == 1100 and rows[8, "backprop"]["batch"] == 8
    # greedy on 8 devices = 4 stages x 2 replicas: batch 8 -> (150 + 3) * 2 * 4 = 1224
    assert rows[8, "greedy"]["time"] == 1224 and rows[8, "greedy"]["speedup"] == pytest.approx(1100 / 1224)
    # N = 64: backprop batch 64 -> 60 * 11 * 1 = 660 beats batch 8 (1100); greedy on 4 x 16: batch 8
    # -> 153 * 2 * 1 = 306 beats batch 64 (its best lr, 1e-3: 123 * 2 * 4 = 984)
    assert rows[64, "backprop"]["time"] == 660 and rows[64, "backprop"]["batch"] == 64
    assert rows[64, "greedy"]["time"] == 306 and rows[64, "greedy"]["speedup"] == pytest.approx(660 / 306)


def test_fastest_at_equal_hardware_times_each_method_and_backprop_as_a_pipeline_by_hand():
    from minilocal.compute.cost import PIPELINED, fastest_at_equal_hardware
    bp8 = dict(method="backprop", steps=100, stage_flops=[11.0], batch=8)
    bp64 = dict(method="backprop", steps=60, stage_flops=[11.0], batch=64)
    greedy = dict(method="greedy", steps=150, stage_flops=[2.0] * 4, batch=8)
    fastest = fastest_at_equal_hardware([bp8, bp64, greedy], 4, throughput=1.0, pipeline_work=[6.0, 5.0])
    # backprop on 4 devices: batch 8 -> 100 * 11 * ceil(8 / 4) = 2200; batch 64 -> 60 * 11 * 16 = 10560
    assert fastest["backprop"] == (2200.0, bp8)
    # as 2 stages x 2 replicas: 4 examples per replica in 4 microbatches, (4 + 1) * 6 * 1 per step
    assert fastest[PIPELINED] == (100 * 5 * 6.0, bp8)
    # greedy: 4 stages x 1 replica, 8 examples each, (150 + 3) steps
    assert fastest["greedy"] == (153 * 2.0 * 8, greedy)
    # with 2 devices the 4-stage plan cannot run, the 2-stage pipeline can
    two = fastest_at_equal_hardware([bp8, greedy], 2, throughput=1.0, pipeline_work=[6.0, 5.0])
    assert set(two) == {"backprop", PIPELINED}
    assert set(fastest_at_equal_hardware([bp8], 4, throughput=1.0)) == {"backprop"}


def test_communication_terms_by_hand():
    from minilocal.compute.cost import Link, Traffic, allreduce_time
    link = Link(latency=1e-6, bandwidth=1e9)
    assert link.time(1000) == pytest.approx(2e-6)
    # 4 devices: 2 log2(4) = 4 messages in a row, each device moves 2 * 3/4 of the bytes
    assert allreduce_time(1000, 4, link) == pytest.approx(4e-6 + 1.5e-6)
    assert allreduce_time(1000, 5, link) == pytest.approx(6e-6 + 1.6e-6)  # ceil(log2 5) = 3
    assert allreduce_time(1000, 1, link) == 0.0
    t = Traffic.of(Plan.overlapping(3), [100, 200], [10, 20, 30], Link(0.0, 1.0))
    assert t.forward_bytes == (108, 208, 0) and t.backward_bytes == (0, 100, 200)
    g = Traffic.of(Plan.greedy(3), [100, 200], [10, 20, 30], Link(0.0, 1.0))
    assert g.backward_bytes == (0, 0, 0)
    p = Traffic.pipeline([100], [10, 20], Link(0.0, 1.0))
    assert p.forward_bytes == (100, 0) and p.backward_bytes == (0, 100)


def test_equal_hardware_and_pipeline_time_with_traffic_by_hand():
    from minilocal.compute.cost import Link, Traffic
    t = Traffic.of(Plan.overlapping(3), [100, 200], [10, 20, 30], Link(0.0, 1.0))
    # 6 devices = 3 stages x 2 replicas, 4 examples each. Stage 1: 4 * 2 compute + 4 * 208 forward
    # + 4 * 100 backward + its 20 bytes all-reduced over 2 (2 * 1/2 * 20) = 1260, the slowest
    assert equal_hardware_time(10, [2.0] * 3, 8, 6, throughput=1.0, traffic=t) == (10 + 2) * 1260
    free = Traffic.of(Plan.overlapping(3), [100, 200], [10, 20, 30], Link(0.0, math.inf))
    for steps, batch, n in ((10, 8, 6), (0, 8, 3), (7, 5, 30)):
        assert equal_hardware_time(steps, [2.0, 3.0, 1.0], batch, n, 1.0, free) == \
            equal_hardware_time(steps, [2.0, 3.0, 1.0], batch, n, 1.0)
    # backprop as 2 pipeline stages x 2 replicas, 4 microbatches of 1: each tick 4 + 100 (the
    # activation or its gradient), 5 ticks, then the larger all-reduce (20 bytes over 2) = 20
    pipe = Traffic.pipeline([100], [10, 20], Link(0.0, 1.0))
    assert pipeline_time(5, [3.0, 4.0], 8, 4, throughput=1.0, traffic=pipe) == 5 * (5 * 104 + 20)
    assert pipeline_time(5, [3.0, 4.0], 8, 4, throughput=1.0,
                         traffic=Traffic.pipeline([100], [10, 20], Link(0.0, math.inf))) == \
        pipeline_time(5, [3.0, 4.0], 8, 4, throughput=1.0)


def test_bad_traffic_names_the_problem():
    from minilocal.compute.cost import Link, Traffic
    with pytest.raises(ValueError, match="latency must be seconds >= 0"):
        Link(latency=-1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        Link(bandwidth=0)
    with pytest.raises(ValueError, match="give 2 boundary_bytes and 3 param_bytes, got 1 and 3"):
        Traffic.of(Plan.greedy(3), [1], [1, 1, 1], Link())
    t = Traffic.of(Plan.greedy(2), [1], [1, 1], Link())
    with pytest.raises(ValueError, match="traffic describes 2 stages but the work has 3"):
        equal_hardware_time(1, [1.0] * 3, 8, 3, traffic=t)
    with pytest.raises(TypeError, match="traffic must be a Traffic or None, got Link"):
        equal_hardware_time(1, [1.0] * 2, 8, 2, traffic=Link())


def test_the_pipeline_takes_fewer_microbatches_when_messages_cost_latency():
    from minilocal.compute.cost import PIPELINED, Link, Traffic, _microbatch_counts, fastest_at_equal_hardware
    assert _microbatch_counts(8) == [1, 2, 4, 8] and _microbatch_counts(6) == [1, 2, 4, 6]
    run = dict(method="backprop", steps=3, stage_flops=[2.0], batch=8)
    slow = {PIPELINED: Traffic.pipeline([4], [0, 0], Link(latency=100.0))}
    # 2 stages, 1 replica, 8 examples: 8 microbatches of 1 tick 1 + 100 -> (8 + 1) * 101 = 909 a
    # step; 1 microbatch of 8 ticks 8 + 100 -> (1 + 1) * 108 = 216 a step, the fastest
    got = fastest_at_equal_hardware([run], 2, 1.0, [1.0, 1.0], slow)[PIPELINED][0]
    assert got == 3 * 216
    # without communication one example per microbatch is best: (8 + 1) * 1 a step
    assert fastest_at_equal_hardware([run], 2, 1.0, [1.0, 1.0])[PIPELINED][0] == 3 * 9
