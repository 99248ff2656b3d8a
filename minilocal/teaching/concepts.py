"""Concept checks: what a right number can hide. Each takes ``(student_fn, args)`` of one case
and returns a message naming the mistake, or None; ``checks.check(..., concepts=[...])`` runs
them after the values agree.

* ``stops_gradient`` (6.1): no gradient reaches the stage's input, the output is detached.
* ``own_stage_optimizers`` (6.4): every stage's own optimizer steps once per step, no other.
* ``consistent_mesh`` (1.3): a whole K x D mesh agrees with itself (ranks, neighbours, groups).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Case = tuple[Any, ...]  # the positional arguments of one call


def stops_gradient(fn: Callable[..., Any], args: Case) -> str | None:
    """6.1: no gradient may reach the stage's input, and the returned output must be detached."""
    import torch

    block, head, x_in, y = args
    leaf = x_in.detach().clone().requires_grad_(True)
    received = []
    hook = block.register_forward_pre_hook(lambda module, inputs: received.append(inputs[0]))
    try:
        out = fn(block, head, leaf, y)
    finally:
        hook.remove()
    if leaf.grad is not None:
        return ("a gradient reached the stage's input x_in (x_in.grad is set): the loss must not "
                "backpropagate into the previous stage; run the block on x_in.detach()")
    if any(r is leaf or (isinstance(r, torch.Tensor) and r.grad_fn is not None) for r in received):
        return ("the block ran on x_in itself, so the graph still reaches the previous stage: "
                "run the block on x_in.detach() (the stop-gradient)")
    if isinstance(out, (tuple, list)) and isinstance(out[0], torch.Tensor) and out[0].requires_grad:
        return "the returned output still carries the graph (requires_grad): return out.detach()"
    return None


def own_stage_optimizers(fn: Callable[..., Any], args: Case) -> str | None:
    """6.4: every stage's own optimizer steps (once per step), and no other optimizer does."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    net, steps = args[0], args[-1]
    counts = [0] * len(net.stages)
    for s, stage in enumerate(net.stages):
        stage.optimizer.register_step_post_hook(lambda *_, s=s: counts.__setitem__(s, counts[s] + 1))
    others = []
    handle = register_optimizer_step_post_hook(lambda opt, *_: others.append(opt))
    try:
        fn(*args)
    finally:
        handle.remove()
    own = {id(stage.optimizer) for stage in net.stages}
    if any(id(o) not in own for o in others):
        return ("an optimizer that is not a stage's own took a step (one global optimizer over "
                "net.parameters()?): step each stage.optimizer, which holds exactly that stage's parameters")
    if counts != [steps] * len(counts):
        return (f"the stage optimizers stepped {counts} times for {steps} step(s): every stage's "
                f"optimizer steps once per training step")
    return None


def consistent_mesh(fn: Callable[..., Any], args: Case) -> str | None:
    """1.3: the whole K x D mesh, not one rank: every rank its own (stage, replica), neighbours
    that agree both ways, and replica groups that hold their members and that they agree on.

    ``fn(K, D, rank) -> (stage, replica, previous, next, group)`` (previous/next: None at the
    ends). A result of another structure passes here; the values' check names it."""
    K, D = args[0], args[1]
    mesh, answers = f"a {K} x {D} mesh", {}
    for q in range(K * D):
        try:
            answer = fn(K, D, q)
        except Exception as e:  # noqa: BLE001 - any error on another rank is the student's to see
            return f"it raised {type(e).__name__} for rank {q} of {mesh}: {e}"
        if not isinstance(answer, (tuple, list)) or len(answer) != 5:
            return None
        answers[q] = answer
    try:
        return _mesh_problem(K, D, mesh, answers)
    except (TypeError, ValueError):  # not numbers where numbers belong: the values' check says so
        return None


def _mesh_problem(K: int, D: int, mesh: str, answers: dict[int, Sequence[Any]]) -> str | None:
    """The first inconsistency of a whole mesh's answers, or None."""
    owner = {}
    for q, (stage, replica, *_) in answers.items():
        place = (int(stage), int(replica))
        if place in owner:
            return (f"result[:2] is {place} for ranks {owner[place]} and {q} of {mesh}: each of the "
                    f"K·D ranks is one (stage, replica), and no two share one")
        owner[place] = q
    for q, (_, _, previous, following, group) in answers.items():
        for index, peer, back in ((3, following, 2), (2, previous, 3)):
            if peer is None:
                continue
            if not 0 <= peer < K * D:
                return f"result[{index}] is {peer} for rank {q}, but {mesh} has ranks 0-{K * D - 1}"
            if answers[peer][back] != q:
                verb = "sends its activations to" if index == 3 else "receives its activations from"
                return (f"result[{index}] is {peer} for rank {q} (the rank it {verb}), but rank "
                        f"{peer}'s result[{back}] is {answers[peer][back]}, not {q}: a message "
                        f"goes between the same two ranks, so they must name each other")
        members = [int(m) for m in group]
        if q not in members:
            return (f"result[4] is {tuple(members)} for rank {q}, which does not hold rank {q} "
                    f"itself: a rank averages its gradients with the other replicas of its stage")
        for m in members:
            theirs = [int(v) for v in answers[m][4]] if 0 <= m < K * D else None
            if theirs is None or sorted(theirs) != sorted(members):
                return (f"result[4] is {tuple(members)} for rank {q}, but rank {m}'s result[4] is "
                        f"{None if theirs is None else tuple(theirs)}: the members of a replica "
                        f"group all-reduce together, so they must agree on the group")
    return None
