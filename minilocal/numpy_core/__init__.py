"""Local updates from scratch in NumPy: layers, an MLP with per-stage heads, optimizers, training."""
from .gradcheck import numerical_grad, plan_numerical_grads, rel_error
from .mlp import cache_bytes, forward, init_mlp, local_grads, predict, stage_losses
from .optim import SGD, Adam
from .stage import StageStep, receive_grad, run_stages, stage_step
from .train import evaluate, train

__all__ = ["Adam", "SGD", "cache_bytes", "evaluate", "forward", "init_mlp", "local_grads", "numerical_grad",
           "plan_numerical_grads", "predict", "receive_grad", "rel_error", "run_stages", "StageStep",
           "stage_losses", "stage_step", "train"]
