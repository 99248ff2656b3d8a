"""Every exercise check catches plausible mistakes and accepts a correct alternative.

For each exercise of every notebook and lab, WRONG holds mistakes a student makes (a missing
stop-gradient, `=` for `+=`, an off-by-one window, mean for sum, a transposed weight, ...) as code
that replaces the solution block; the check must reject each with a message naming the place or
the concept. RIGHT holds another correct formulation, which must pass. Every float answer off by
about 3x the tolerance must fail, and TOL pins each check's tolerance: loosening one (in the
notebook or in check()) turns a test red. Each notebook is executed in-process once.
"""
import functools
import re

import pytest

from exercise_runs import PASSED, run_notebook
from minilocal.teaching import release as rel

ROOT = rel.ROOT / "solutions"
PLACE = r"result\S*( at \[[\d, ]*\])? (is|has|holds)"  # a message that names where the result differs

# notebook -> exercise -> {label: body} (the body replaces the solution block)
WRONG = {
 "00_welcome": {
  "0.1": {"own stage only": "return (plan.stage_of(block),)",
          "blocks, not stages": "return tuple(plan.trained_by(plan.stage_of(block)))"},
  "0.2": {"stage sizes": "return [len(stage) for stage in plan.stages]",
          "overlap not clamped at block 0": "return [len(stage) + plan.overlap for stage in plan.stages]"},
 },
 "01_backprop_numpy": {
  "1.1": {"bias subtracted": 'return x @ params["weight"].T - params["bias"], (x, params)',
          "cache in another order": 'return x @ params["weight"].T + params["bias"], (params, x)',
          "no cache": 'return x @ params["weight"].T + params["bias"]'},
  "1.2": {"dW transposed": 'x, params = cache\nreturn dout @ params["weight"], {"weight": x.T @ dout, "bias": dout.sum(axis=0)}',
          "bias: mean over the batch": 'x, params = cache\nreturn dout @ params["weight"], {"weight": dout.T @ x, "bias": dout.mean(axis=0)}',
          "keys W and b": 'x, params = cache\nreturn dout @ params["weight"], {"W": dout.T @ x, "b": dout.sum(axis=0)}'},
  "1.3": {"never restores x[i]": """
            grad = np.zeros_like(x, dtype=np.float64)
            for i in np.ndindex(x.shape):
                old = x[i]
                x[i] = old + eps
                up = f()
                x[i] = old - eps
                grad[i] = (up - f()) / (2 * eps)
            return grad""",
          "restores by arithmetic (x += eps, x -= eps)": """
            grad = np.zeros_like(x, dtype=np.float64)
            for i in np.ndindex(x.shape):
                x[i] += eps
                up = f()
                x[i] -= 2 * eps
                down = f()
                x[i] += eps
                grad[i] = (up - down) / (2 * eps)
            return grad""",
          "forward difference": """
            grad, base = np.zeros_like(x, dtype=np.float64), f()
            for i in np.ndindex(x.shape):
                old = x[i]
                x[i] = old + eps
                grad[i] = (f() - base) / eps
                x[i] = old
            return grad"""},
  "1.4": {"dout * cache, no grads dict": "return dout * cache",
          "passes every gradient": "return dout, {}"},
  "1.5": {"sum over the batch (no / B)": "log_probs, y = cache\nd = np.exp(log_probs)\nd[np.arange(len(y)), y] -= 1\nreturn dloss * d",
          "ignores dloss": "log_probs, y = cache\nd = np.exp(log_probs)\nd[np.arange(len(y)), y] -= 1\nreturn d / len(y)"},
  "1.6": {"key head.0": """
            h, caches = x, []
            for l in range(n_blocks):
                z, lin_cache = linear_fwd(h, sub(params, f"blocks.{l}"))
                h, relu_cache = relu_fwd(z)
                caches.append((lin_cache, relu_cache))
            logits, head_cache = linear_fwd(h, sub(params, "heads.0"))
            loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
            dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
            grads = {"head.0.weight": g["weight"], "head.0.bias": g["bias"]}
            for l in reversed(range(n_blocks)):
                lin_cache, relu_cache = caches[l]
                dz, _ = relu_bwd(dh, relu_cache)
                dh, g = linear_bwd(dz, lin_cache)
                grads[f"blocks.{l}.weight"], grads[f"blocks.{l}.bias"] = g["weight"], g["bias"]
            return grads, loss""",
          "skips the relu backward": """
            h, caches = x, []
            for l in range(n_blocks):
                z, lin_cache = linear_fwd(h, sub(params, f"blocks.{l}"))
                h, relu_cache = relu_fwd(z)
                caches.append(lin_cache)
            logits, head_cache = linear_fwd(h, sub(params, "heads.0"))
            loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
            dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
            grads = {"heads.0.weight": g["weight"], "heads.0.bias": g["bias"]}
            for l in reversed(range(n_blocks)):
                dh, g = linear_bwd(dh, caches[l])
                grads[f"blocks.{l}.weight"], grads[f"blocks.{l}.bias"] = g["weight"], g["bias"]
            return grads, loss"""},
 },
 "02_greedy": {
  "2.1": {"prefixes (backprop)": "return [tuple(range(s + 1)) for s in range(n_blocks)]",
          "off by one": "return [(s,) for s in range(n_blocks - 1)]"},
  "2.2": {"forgets the head": """
            h_out, block_cache = dense_fwd(h_in, sub(params, f"blocks.{s}"))
            logits, head_cache = linear_fwd(h_out, sub(params, f"heads.{s}"))
            loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
            dh_out, g_head = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
            _, g_block = dense_bwd(dh_out, block_cache)
            return loss, {f"blocks.{s}.{k}": v for k, v in g_block.items()}, h_out""",
          "dloss = 1 / B twice (mean of a mean)": """
            h_out, block_cache = dense_fwd(h_in, sub(params, f"blocks.{s}"))
            logits, head_cache = linear_fwd(h_out, sub(params, f"heads.{s}"))
            loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
            dh_out, g_head = linear_bwd(softmax_cross_entropy_bwd(1.0 / len(y), ce_cache), head_cache)
            _, g_block = dense_bwd(dh_out, block_cache)
            grads = {f"blocks.{s}.{k}": v for k, v in g_block.items()}
            grads.update({f"heads.{s}.{k}": v for k, v in g_head.items()})
            return loss, grads, h_out"""},
  "2.3": {"no stop-gradient": """
            losses, h = [], x
            for block, head in zip(blocks, heads):
                h = block(h)
                loss = F.cross_entropy(head(h), y)
                loss.backward(retain_graph=True)
                losses.append(loss.item())
            return losses, [p.grad for p in params]""",
          "sum over the batch": """
            losses, h = [], x
            for block, head in zip(blocks, heads):
                h = block(h.detach())
                loss = F.cross_entropy(head(h), y, reduction="sum")
                loss.backward()
                losses.append(loss.item())
            return losses, [p.grad for p in params]"""},
  "2.4": {"first head for every stage": "_, _, heads = forward(params, x, plan)\nreturn [float((heads[0][0].argmax(axis=1) == y).mean())] * len(heads)",
          "count, not fraction": "_, _, heads = forward(params, x, plan)\nreturn [float((logits.argmax(axis=1) == y).sum()) for logits, _ in heads]"},
  "2.5": {"forgets the step": "losses, h = [], x\nfor s, optimizer in enumerate(optimizers):\n    loss, grads, h = stage_grads(params, h, y, s)\n    losses.append(loss)\nreturn losses, params",
          "gradient ascent (sign)": "losses, h = [], x\nfor s, optimizer in enumerate(optimizers):\n    loss, grads, h = stage_grads(params, h, y, s)\n    optimizer.step({k: -v for k, v in grads.items()})\n    losses.append(loss)\nreturn losses, params"},
 },
 "03_overlapping": {
  "3.1": {"not clamped at block 0": "return tuple(range(s - k, s + 1))",
          "window one short": "return tuple(range(max(0, s - k), s))"},
  "3.2": {"= for +=": """
            for s in range(n_blocks):
                logits, head_cache = heads[s]
                _, ce_cache = softmax_cross_entropy_fwd(logits, y)
                dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] = v
                for l in range(s, max(0, s - 1) - 1, -1):
                    dh, g = dense_bwd(dh, caches[l])
                    for k, v in g.items():
                        grads[f"blocks.{l}.{k}"] = v""",
          "window two blocks back": """
            for s in range(n_blocks):
                logits, head_cache = heads[s]
                _, ce_cache = softmax_cross_entropy_fwd(logits, y)
                dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] += v
                for l in range(s, max(0, s - 2) - 1, -1):
                    dh, g = dense_bwd(dh, caches[l])
                    for k, v in g.items():
                        grads[f"blocks.{l}.{k}"] += v"""},
  "3.3": {"message never delivered": "pass",
          "delivered into the stage's own blocks": """
            grad, remaining, t = x_in.grad, stage.reach, s
            while remaining > 0:
                t_in, t_out = kept[t]
                blocks = net.stages[t].blocks
                params = [p for block in blocks[-remaining:] for p in block.parameters()]
                further = remaining > len(blocks)
                grads = torch.autograd.grad(t_out, params + [t_in] * further, grad, retain_graph=True)
                for p, g in zip(params, grads):
                    p.grad += g
                grad = grads[-1] if further else None
                remaining, t = remaining - len(blocks), t - 1""",
          "= for +=": """
            grad, remaining, t = x_in.grad, stage.reach, s - 1
            while remaining > 0:
                t_in, t_out = kept[t]
                blocks = net.stages[t].blocks
                params = [p for block in blocks[-remaining:] for p in block.parameters()]
                further = remaining > len(blocks)
                grads = torch.autograd.grad(t_out, params + [t_in] * further, grad, retain_graph=True)
                for p, g in zip(params, grads):
                    p.grad = g
                grad = grads[-1] if further else None
                remaining, t = remaining - len(blocks), t - 1""",
          "one hop only (stops at stage s - 1)": """
            if stage.reach:
                t_in, t_out = kept[s - 1]
                params = [p for block in net.stages[s - 1].blocks[-stage.reach:] for p in block.parameters()]
                for p, g in zip(params, torch.autograd.grad(t_out, params, x_in.grad, retain_graph=True)):
                    p.grad += g"""},
  "3.4": {"only the stage's own loss": """
            grads = {}
            for name, value in params.items():
                index = int(name.split(".")[1])
                grads[name] = numerical_grad(loss(index), value, eps)
            return grads""",
          "blocks trained by two later losses": """
            grads = {}
            for name, value in params.items():
                kind, index = name.split(".")[0], int(name.split(".")[1])
                losses = [index, index + 1, index + 2] if kind == "blocks" else [index]
                grads[name] = sum(numerical_grad(loss(s), value, eps) for s in losses if 0 <= s < n_blocks)
            return grads"""},
  "3.5": {"no zero guard (NaN)": "a, b = np.ravel(a), np.ravel(b)\nreturn float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))",
          "normalised by |a| twice": "a, b = np.ravel(a), np.ravel(b)\nn = np.linalg.norm(a) ** 2\nreturn float(a @ b / n) if n > 0 and np.linalg.norm(b) > 0 else 0.0"},
 },
 "04_chunked": {
  "4.1": {"later chunks longer": "sizes = [n_blocks // n_chunks + (1 if i >= n_chunks - n_blocks % n_chunks else 0) for i in range(n_chunks)]\nstarts = np.cumsum([0] + sizes[:-1])\nreturn tuple(tuple(range(a, a + s)) for a, s in zip(starts, sizes))",
          "remainder dropped": "size = n_blocks // n_chunks\nreturn tuple(tuple(range(i * size, (i + 1) * size)) for i in range(n_chunks))"},
  "4.2": {"not clamped at block 0": "return tuple(range(stages[s][0] - overlap, stages[s][-1] + 1))",
          "window one short": "return tuple(range(max(0, stages[s][0] - overlap), stages[s][-1]))"},
  "4.3": {"ignores the overlap (stage blocks only)": """
            for s in range(plan.n_stages):
                logits, head_cache = heads[s]
                _, ce_cache = softmax_cross_entropy_fwd(logits, y)
                dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] += v
                for l in reversed(plan.stages[s]):
                    dh, g = dense_bwd(dh, caches[l])
                    for k, v in g.items():
                        grads[f"blocks.{l}.{k}"] += v""",
          "= for +=": """
            for s in range(plan.n_stages):
                logits, head_cache = heads[s]
                _, ce_cache = softmax_cross_entropy_fwd(logits, y)
                dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, ce_cache), head_cache)
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] = v
                for l in reversed(plan.trained_by(s)):
                    dh, g = dense_bwd(dh, caches[l])
                    for k, v in g.items():
                        grads[f"blocks.{l}.{k}"] = v"""},
  "4.4": {"the block's own stage only": "return tuple(s for s in range(len(stages)) if block in stages[s])",
          "one loss too many": "return tuple(s for s in range(len(stages)) if block in trained_by(stages, overlap + 1, s))"},
  "4.5": {"weights counted too": """
            saved = {}

            def pack(tensor):
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                fn()
            return sum(saved.values())""",
          "a storage counted each time it is saved": """
            weights = {p.untyped_storage().data_ptr() for p in params}
            saved = {}

            def pack(tensor):
                if tensor.untyped_storage().data_ptr() not in weights:
                    saved[len(saved)] = tensor.untyped_storage().nbytes()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                fn()
            return sum(saved.values())""",
          "numbers, not bytes": """
            weights = {p.untyped_storage().data_ptr() for p in params}
            saved = {}

            def pack(tensor):
                if tensor.untyped_storage().data_ptr() not in weights:
                    saved[tensor.untyped_storage().data_ptr()] = tensor.numel()
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                fn()
            return sum(saved.values())"""},
 },
 "05_side_by_side": {
  "5.1": {"greedy and backprop swapped": """
            text = spec.replace(" ", "").lower()
            named = {"greedy": "chunks=1", "backprop": f"chunks={n_blocks}", "overlapping": f"chunks={n_blocks},overlap=1"}
            text = named.get(text, text)
            values = {"chunks": n_blocks, "overlap": 0}
            for item in text.split(","):
                key, _, value = item.partition("=")
                values[key] = int(value)
            return values""",
          "no default overlap": """
            text = spec.replace(" ", "").lower()
            named = {"backprop": "chunks=1", "greedy": f"chunks={n_blocks}", "overlapping": f"chunks={n_blocks},overlap=1"}
            values = {"chunks": n_blocks}
            for item in named.get(text, text).split(","):
                key, _, value = item.partition("=")
                values[key] = int(value)
            return values"""},
  "5.2": {"first head": 'return {k: float(history[k][-1][0]) for k in ("train_loss", "test_loss", "test_acc")}',
          "first evaluation": 'return {k: float(history[k][0][-1]) for k in ("train_loss", "test_loss", "test_acc")}'},
  "5.3": {"compared with itself": """
            mine, _ = local_grads(params, x, y, plan)
            flat = lambda g, l: np.concatenate([g[f"blocks.{l}.weight"].ravel(), g[f"blocks.{l}.bias"]])
            return [cosine(flat(mine, l), flat(mine, l)) for l in range(plan.n_blocks)]""",
          "weights only, against head 0": """
            view = {k: v for k, v in params.items() if k.startswith("blocks.") or k.startswith("heads.0.")}
            mine, _ = local_grads(params, x, y, plan)
            true, _ = local_grads(view, x, y, Plan.backprop(plan.n_blocks))
            return [cosine(mine[f"blocks.{l}.weight"], true[f"blocks.{l}.weight"]) for l in range(plan.n_blocks)]"""},
  "5.4": {"< for <=": "return next((s for s, loss in zip(steps, losses) if loss < target), None)",
          "index, not step": "return next((i for i, loss in enumerate(losses) if loss <= target), None)"},
  "5.5": {"no pipeline fill": "return steps * max(stage_work) / throughput",
          "sum of stages": "return 0.0 if steps == 0 else (steps + len(stage_work) - 1) * sum(stage_work) / throughput"},
 },
 "06_numpy_to_torch": {
  "6.1": {"no stop-gradient, autograd.grad": "out = block(x_in)\nloss = F.cross_entropy(head(out), y)\nreturn out.detach(), loss.detach(), torch.autograd.grad(loss, list(block.parameters()))",
          "no stop-gradient, backward": "out = block(x_in)\nloss = F.cross_entropy(head(out), y)\nblock.zero_grad()\nloss.backward()\nreturn out.detach(), loss.detach(), [p.grad.clone() for p in block.parameters()]",
          "output not detached": "out = block(x_in.detach())\nloss = F.cross_entropy(head(out), y)\nreturn out, loss.detach(), torch.autograd.grad(loss, list(block.parameters()), retain_graph=True)"},
  "6.2": {"message w.r.t. the block's output": "h = block(x_in.detach()).detach().requires_grad_(True)\nloss = F.cross_entropy(head(h), y)\nreturn loss.detach(), torch.autograd.grad(loss, h)[0]",
          "sum over the batch": "x_in = x_in.detach().requires_grad_(True)\nloss = F.cross_entropy(head(block(x_in)), y, reduction='sum')\nreturn loss.detach() / len(y), torch.autograd.grad(loss, x_in)[0]"},
  "6.3": {"weights never loaded": "net = torch_mlp(plan)\nreturn [float(F.cross_entropy(z, torch.from_numpy(y))) for z in net.stage_outputs(torch.from_numpy(x))]",
          "output head's loss for every stage": "net = torch_mlp(plan)\nnet.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})\nz = net.stage_outputs(torch.from_numpy(x))[-1]\nreturn [float(F.cross_entropy(z, torch.from_numpy(y)))] * plan.n_stages"},
  "6.4": {"one global optimizer": "opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)\nfor _ in range(n_steps):\n    net.local_backward(x, y)\n    opt.step()\n    opt.zero_grad()\nreturn [p.detach() for p in net.parameters()]",
          "no zero_grad": "for _ in range(n_steps):\n    net.local_backward(x, y)\n    for stage in net.stages:\n        stage.optimizer.step()\nreturn [p.detach() for p in net.parameters()]"},
  "6.5": {"every stage updates at once (before its message)": """
            x_in = h.detach().requires_grad_(stage.reach > 0)
            out = x_in
            for block in stage.blocks:
                out = block(out)
            loss = F.cross_entropy(stage.head(out), y)
            loss.backward(retain_graph=stage.keep_graph)
            stage.optimizer.step()
            stage.optimizer.zero_grad()
            if waiting is not None:
                previous, previous_out = waiting
                previous_out.backward(x_in.grad, inputs=list(previous.blocks[-1].parameters()))
            waiting = (stage, out) if stage.keep_graph else None
            h = out.detach()""",
          "the waiting stage never updates": """
            x_in = h.detach().requires_grad_(stage.reach > 0)
            out = x_in
            for block in stage.blocks:
                out = block(out)
            loss = F.cross_entropy(stage.head(out), y)
            loss.backward(retain_graph=stage.keep_graph)
            if waiting is not None:
                previous, previous_out = waiting
                previous_out.backward(x_in.grad, inputs=list(previous.blocks[-1].parameters()))
                waiting = None
            if stage.keep_graph:
                waiting = (stage, out)
            else:
                stage.optimizer.step()
                stage.optimizer.zero_grad()
            h = out.detach()""",
          "message never delivered": """
            x_in = h.detach().requires_grad_(stage.reach > 0)
            out = x_in
            for block in stage.blocks:
                out = block(out)
            loss = F.cross_entropy(stage.head(out), y)
            loss.backward(retain_graph=stage.keep_graph)
            if waiting is not None:
                waiting[0].optimizer.step()
                waiting[0].optimizer.zero_grad()
                waiting = None
            if stage.keep_graph:
                waiting = (stage, out)
            else:
                stage.optimizer.step()
                stage.optimizer.zero_grad()
            h = out.detach()""",
          "message into the whole previous stage": """
            x_in = h.detach().requires_grad_(stage.reach > 0)
            out = x_in
            for block in stage.blocks:
                out = block(out)
            loss = F.cross_entropy(stage.head(out), y)
            loss.backward(retain_graph=stage.keep_graph)
            if waiting is not None:
                previous, previous_out = waiting
                previous_out.backward(x_in.grad)
                previous.optimizer.step()
                previous.optimizer.zero_grad()
                waiting = None
            if stage.keep_graph:
                waiting = (stage, out)
            else:
                stage.optimizer.step()
                stage.optimizer.zero_grad()
            h = out.detach()"""},
  "6.6": {"first head": "return net.stage_outputs(x)[0].argmax(dim=-1)",
          "argmax over the batch": "return net.stage_outputs(x)[-1].argmax(dim=0)"},
 },
 "07_vision_and_language": {
  "7.1": {"padding ignored": "return (T - kernel_size) // stride + 1",
          "true division": "return (T + 2 * padding - kernel_size) / stride + 1"},
  "7.2": {"time-major flatten": "return h.transpose(1, 2).reshape(h.shape[0], -1) @ weight.T + bias",
          "no bias": "return h.reshape(h.shape[0], -1) @ weight.T"},
  "7.3": {"no 1/sqrt(D)": "T = q.shape[-2]\ns = (q @ k.transpose(-2, -1)).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf'))\nreturn F.softmax(s, dim=-1) @ v",
          "diagonal masked too": "T, D = q.shape[-2], q.shape[-1]\ns = (q @ k.transpose(-2, -1) / D ** 0.5).masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 0), float('-inf'))\nreturn F.softmax(s, dim=-1) @ v"},
  "7.4": {"last position only": "return [float(F.cross_entropy(z[:, -1], y[:, -1])) for z in net.stage_outputs(x)]",
          "sum over positions": "return [float(F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), reduction='sum')) for z in net.stage_outputs(x)]"},
  "7.5": {"least total work, not least slowest stage": """
            best = None
            for cuts in itertools.combinations(range(1, n_blocks), k - 1):
                edges = (0, *cuts, n_blocks)
                plan = Plan([tuple(range(a, b)) for a, b in zip(edges, edges[1:])])
                work = stage_flops(plan, block_flops, [head_at[stage[-1]] for stage in plan.stages])
                if best is None or sum(work) < best[2]:
                    best = (max(work), plan, sum(work))
            return best[:2]""",
          "most work": """
            best = None
            for cuts in itertools.combinations(range(1, n_blocks), k - 1):
                edges = (0, *cuts, n_blocks)
                plan = Plan([tuple(range(a, b)) for a, b in zip(edges, edges[1:])])
                work = stage_flops(plan, block_flops, [head_at[stage[-1]] for stage in plan.stages])
                if best is None or max(work) > best[0]:
                    best = (max(work), plan)
            return best"""},
 },
 "08_pipelines_and_asynchrony": {
  "8.1": {"pairs swapped": "return [[(j, k - j) for j in range(max(1 + k - m, 0), min(1 + k, n))] for k in range(m + n - 1)]",
          "no lower bound": "return [[(k - j, j) for j in range(0, min(1 + k, n))] for k in range(m + n - 1)]"},
  "8.2": {"(K - 1) / M": "return (K - 1) / M",
          "(K - 1) / (M + K)": "return (K - 1) / (M + K)"},
  "8.3": {"no fill": "return n_steps * max(costs)",
          "sum every step": "return n_steps * sum(costs)"},
  "8.4": {"send and recv count as busy": "span = max(e.t_end for e in timeline)\nbusy = [0.0] * n_stages\nfor e in timeline:\n    if e.kind != 'idle':\n        busy[e.stage] += e.t_end - e.t_start\nreturn [b / span for b in busy]",
          "each stage's own span": "busy, span = [0.0] * n_stages, [1e-9] * n_stages\nfor e in timeline:\n    span[e.stage] = max(span[e.stage], e.t_end)\n    if e.kind in ('forward', 'backward', 'update'):\n        busy[e.stage] += e.t_end - e.t_start\nreturn [b / s for b, s in zip(busy, span)]"},
  "8.5": {"< for <=": "starts = sorted(e.t_start for e in timeline if e.stage == s and e.kind == 'forward')\nif s == 0:\n    return [0] * len(starts)\nends = [e.t_end for e in timeline if e.stage == s - 1 and e.kind == 'update']\nreturn [sum(end < T for end in ends) - (t + 1) for t, T in enumerate(starts)]",
          "off by one (- t)": "starts = sorted(e.t_start for e in timeline if e.stage == s and e.kind == 'forward')\nif s == 0:\n    return [0] * len(starts)\nends = [e.t_end for e in timeline if e.stage == s - 1 and e.kind == 'update']\nreturn [sum(end <= T for end in ends) - t for t, T in enumerate(starts)]"},
  "8.6": {"ignores the message (greedy's schedule)": "return [[s + t for t in range(n_steps)] for s in range(n_stages)]",
          "waits for the last step's message whatever the delay": """
            starts = [[0] * n_steps for _ in range(n_stages)]
            for t in range(n_steps):
                for s in range(n_stages):
                    ready = 0
                    if t > 0:
                        ready = starts[s][t - 1] + 1
                        if s < n_stages - 1:
                            ready = max(ready, starts[s + 1][t - 1] + 1)
                    if s > 0:
                        ready = max(ready, starts[s - 1][t] + 1)
                    starts[s][t] = ready
            return starts""",
          "message of step t - delay (one step late)": """
            starts = [[0] * n_steps for _ in range(n_stages)]
            for t in range(n_steps):
                for s in range(n_stages):
                    ready = 0
                    if t > 0:
                        ready = starts[s][t - 1] + 1
                        if s < n_stages - 1 and t - delay >= 0:
                            ready = max(ready, starts[s + 1][t - delay] + 1)
                    if s > 0:
                        ready = max(ready, starts[s - 1][t] + 1)
                    starts[s][t] = ready
            return starts"""} },
 "09_multi_device": {
  "9.1": {"counts the previous block for overlap": "blocks = sum((d_in if b == 0 else width) * width + width for b in plan.trained_by(rank))\nreturn blocks + width * n_classes + n_classes",
          "d_in for every block": "return len(plan.stages[rank]) * (d_in * width + width) + width * n_classes + n_classes"},
  "9.2": {"gradients from every rank but 0": "return (1 if rank < plan.n_stages - 1 else 0, 1 if rank > 0 else 0)",
          "the last rank sends activations": "return (1, 1 if plan.reach(rank) > 0 else 0)"},
  "9.3": {"8 bytes per number": "return sum(sum(messages_per_step(plan, r)) for r in range(plan.n_stages)) * batch * width * 8",
          "activations only": "return sum(messages_per_step(plan, r)[0] for r in range(plan.n_stages)) * batch * width * 4"},
  "9.4": {"idle counts as communication": "span = max(e.t_end for e in timeline)\nw = [0.0] * n_stages\nfor e in timeline:\n    if e.kind in ('send', 'recv', 'idle'):\n        w[e.stage] += e.t_end - e.t_start\nreturn [x / span for x in w]",
          "sends only": "span = max(e.t_end for e in timeline)\nw = [0.0] * n_stages\nfor e in timeline:\n    if e.kind == 'send':\n        w[e.stage] += e.t_end - e.t_start\nreturn [x / span for x in w]"},
  "9.5": {"never updates (update=False)": """
            if rank == 0:
                result = stage_step(stage, x, y, update=False)
                dist.isend(result.x_out, dst=1).wait()
            else:
                h = torch.zeros(shape)
                dist.irecv(h, src=0).wait()
                stage_step(stage, h, y, update=False)""",
          "rank 1 trains on the raw input x": """
            if rank == 0:
                result = stage_step(stage, x, y)
                dist.isend(result.x_out, dst=1).wait()
            else:
                stage_step(stage, x, y)""",
          "both ranks receive first (deadlock)": """
            h = torch.zeros(shape)
            dist.irecv(h, src=1 - rank).wait()
            result = stage_step(stage, x if rank == 0 else h, y)
            if rank == 0:
                dist.isend(result.x_out, dst=1).wait()"""},
 },
 "10_compute_efficiency": {
  "10.1": {"MACs, not FLOPs": "return (float(d_in * d_out),) * 3",
           "bias counted": "return (2.0 * d_in * d_out + d_out, 2.0 * d_in * d_out, 2.0 * d_in * d_out)"},
  "10.2": {"input gradient in every block": "work = [h.forward + h.backward_w + h.backward_x for h in head_flops]\nfor b, f in enumerate(block_flops):\n    s = plan.stage_of(b)\n    work[s] += f.forward\n    for u in plan.losses_for(b):\n        work[s] += f.backward_w + f.backward_x\nreturn work",
           "one backward per block": "work = [h.forward + h.backward_w + h.backward_x for h in head_flops]\nfor b, f in enumerate(block_flops):\n    work[plan.stage_of(b)] += f.forward + f.backward_w\nreturn work"},
  "10.3": {"floor division": "if steps == 0:\n    return 0.0\nper = 1 if devices_per_stage is None else batch // devices_per_stage\nreturn (steps + len(stage_work) - 1) * max(stage_work) * per / throughput",
           "no fill": "per = 1 if devices_per_stage is None else -(-batch // devices_per_stage)\nreturn steps * max(stage_work) * per / throughput"},
  "10.4": {"no running minimum": "ts = sorted({t for times, _ in curves for t in times})\nreturn ts, [min(l for times, losses in curves for tt, l in zip(times, losses) if tt == t) for t in ts]",
           "curves' own order (no sort)": "env_t, env_l, best = [], [], float('inf')\nfor times, losses in curves:\n    for t, l in zip(times, losses):\n        best = min(best, l)\n        env_t.append(t)\n        env_l.append(best)\nreturn env_t, env_l"},
  "10.5": {"N devices per stage": "if steps == 0:\n    return 0.0\nreplicas = min(batch, n_devices)\nreturn (steps + len(stage_work) - 1) * max(stage_work) * -(-batch // replicas) / throughput",
           "floor division of the batch": "if steps == 0:\n    return 0.0\nreplicas = min(batch, n_devices // len(stage_work))\nreturn (steps + len(stage_work) - 1) * max(stage_work) * (batch // replicas) / throughput",
           "no pipeline fill": "replicas = min(batch, n_devices // len(stage_work))\nreturn steps * max(stage_work) * -(-batch // replicas) / throughput",
           "total work, not the slowest stage": "if steps == 0:\n    return 0.0\nreplicas = min(batch, n_devices // len(stage_work))\nreturn (steps + len(stage_work) - 1) * sum(stage_work) * -(-batch // replicas) / throughput"},
  "10.6": {"upside down (|G|^2 / tr)": "g2 = (big * s_big - small * s_small) / (big - small)\ntrace = (s_small - s_big) / (1 / small - 1 / big)\nreturn g2 / trace",
           "biased |G|^2 (the big batch's norm)": "trace = (s_small - s_big) / (1 / small - 1 / big)\nreturn trace / s_big",
           "batch sizes swapped": "g2 = (small * s_big - big * s_small) / (small - big)\ntrace = (s_small - s_big) / (1 / big - 1 / small)\nreturn trace / g2"},
 },
 "lab1_scaling": {
  "1.1": {"M / (M + K - 1)": "return M / (M + K - 1)",
          "K": "return float(K)"},
  "1.2": {"< for <=": "for M in range(1, batch + 1):\n    if batch % M == 0 and (K - 1) / (M + K - 1) < max_bubble:\n        return M\nreturn batch",
          "any M, not a divisor": "for M in range(1, batch + 1):\n    if (K - 1) / (M + K - 1) <= max_bubble:\n        return M\nreturn batch"},
  "1.3": {"replica-major (rank = replica * K + stage)": "replica, stage = divmod(rank, K)\nprevious = rank - 1 if stage > 0 else None\nfollowing = rank + 1 if stage < K - 1 else None\nreturn stage, replica, previous, following, tuple(q * K + stage for q in range(D))",
          "neighbours at rank +- 1": "stage, replica = divmod(rank, D)\nprevious = rank - 1 if stage > 0 else None\nfollowing = rank + 1 if stage < K - 1 else None\nreturn stage, replica, previous, following, tuple(range(stage * D, (stage + 1) * D))",
          "group: the replica's pipeline": "stage, replica = divmod(rank, D)\nprevious = rank - D if stage > 0 else None\nfollowing = rank + D if stage < K - 1 else None\nreturn stage, replica, previous, following, tuple(q * D + replica for q in range(K))",
          "group from the stage index, not its first rank": "stage, replica = divmod(rank, D)\nprevious = rank - D if stage > 0 else None\nfollowing = rank + D if stage < K - 1 else None\nreturn stage, replica, previous, following, tuple(range(stage, stage + D))"},
 },
 "lab2_pareto": {
  "2.1": {"last step, not the first reaching": "steps = record['steps'][-1]\nreturn cost.idealized_time(steps, record['stage_flops'], record['config']['batch'], throughput, devices_per_stage)",
          "devices ignored": "steps = next((s for s, l in zip(record['steps'], record['loss']) if l <= target), None)\nreturn None if steps is None else cost.idealized_time(steps, record['stage_flops'], record['config']['batch'], throughput, None)"},
  "2.2": {"slowest run": "times = [time_to_target(r, target, throughput, None) for r in results.values() if r['config']['method'] == method]\ntimes = [t for t in times if t is not None]\nreturn max(times) if times else None",
          "every method": "times = [time_to_target(r, target, throughput, None) for r in results.values()]\ntimes = [t for t in times if t is not None]\nreturn min(times) if times else None"},
 },
 "lab3_language_model": {
  "3.1": {"y not shifted": "n = (len(ids) - 1) // block_size\nx = np.stack([ids[i * block_size:(i + 1) * block_size] for i in range(n)]).astype(np.int64)\nreturn x, x.copy()",
          "windows with stride 1": "n = (len(ids) - 1) // block_size\nx = np.stack([ids[i:i + block_size] for i in range(n)]).astype(np.int64)\ny = np.stack([ids[i + 1:i + block_size + 1] for i in range(n)]).astype(np.int64)\nreturn x, y"},
 },
}

# notebook -> exercise -> another correct formulation
RIGHT = {
 "00_welcome": {
  "0.1": "return tuple(s for s in range(plan.n_stages) if plan.trained_by(s)[0] <= block <= plan.trained_by(s)[-1])",
  "0.2": "return [t[-1] - t[0] + 1 for t in map(plan.trained_by, range(plan.n_stages))]"},
 "01_backprop_numpy": {
  "1.1": 'return np.einsum("bi,oi->bo", x, params["weight"]) + params["bias"], (x, params)',
  "1.2": 'x, p = cache\nreturn np.einsum("bo,oi->bi", dout, p["weight"]), {"bias": np.sum(dout, 0), "weight": np.einsum("bo,bi->oi", dout, x)}',
  "1.3": "grad = np.empty(x.shape)\nfor i in range(x.size):\n    saved = x.flat[i]\n    x.flat[i] = saved + eps\n    up = f()\n    x.flat[i] = saved - eps\n    down = f()\n    x.flat[i] = saved\n    grad.flat[i] = (up - down) / (2 * eps)\nreturn grad",
  "1.4": "return np.where(cache, dout, 0.0), {}",
  "1.5": "log_probs, y = cache\nonehot = np.eye(log_probs.shape[1])[y]\nreturn dloss * (np.exp(log_probs) - onehot) / len(y)",
  "1.6": """
    hs, caches = [x], []
    for l in range(n_blocks):
        p = {"weight": params[f"blocks.{l}.weight"], "bias": params[f"blocks.{l}.bias"]}
        z, c = linear_fwd(hs[-1], p)
        h, r = relu_fwd(z)
        hs.append(h)
        caches.append((c, r))
    logits, hc = linear_fwd(hs[-1], sub(params, "heads.0"))
    loss, cc = softmax_cross_entropy_fwd(logits, y)
    dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, cc), hc)
    grads = {f"heads.0.{k}": v for k, v in g.items()}
    for l in range(n_blocks - 1, -1, -1):
        dh, g = linear_bwd(relu_bwd(dh, caches[l][1])[0], caches[l][0])
        grads.update({f"blocks.{l}.{k}": v for k, v in g.items()})
    return grads, loss"""},
 "02_greedy": {
  "2.1": "return list(zip(range(n_blocks)))",
  "2.2": """
    h_out, block_cache = dense_fwd(h_in, sub(params, f"blocks.{s}"))
    logits, head_cache = linear_fwd(h_out, sub(params, f"heads.{s}"))
    loss, ce_cache = softmax_cross_entropy_fwd(logits, y)
    dlogits = softmax_cross_entropy_bwd(1.0, ce_cache)
    grads = {f"heads.{s}.weight": dlogits.T @ h_out, f"heads.{s}.bias": dlogits.sum(0)}
    _, g = dense_bwd(dlogits @ params[f"heads.{s}.weight"], block_cache)
    grads.update({f"blocks.{s}.weight": g["weight"], f"blocks.{s}.bias": g["bias"]})
    return loss, grads, h_out""",
  "2.3": "losses, h, total = [], x, 0\nfor block, head in zip(blocks, heads):\n    h = block(h.detach())\n    loss = F.cross_entropy(head(h), y)\n    total = total + loss\n    losses.append(float(loss))\ntotal.backward()\nreturn losses, [p.grad for p in params]",
  "2.4": "_, _, heads = forward(params, x, plan)\nreturn [float(np.mean(np.argmax(z, -1) == y)) for z, _ in heads]",
  "2.5": "h, results = x, []\nfor s in range(len(optimizers)):\n    loss, grads, h = stage_grads(params, h, y, s)\n    results.append((loss, grads))\nfor optimizer, (_, grads) in zip(optimizers, results):\n    optimizer.step(grads)\nreturn [loss for loss, _ in results], params"},
 "03_overlapping": {
  "3.1": "return tuple(b for b in range(n_blocks) if s - k <= b <= s)",
  "3.2": """
    for l in range(n_blocks):
        for s in (l, l + 1):
            if s >= n_blocks:
                continue
            logits, head_cache = heads[s]
            dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, softmax_cross_entropy_fwd(logits, y)[1]), head_cache)
            if s == l:
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] += v
            else:
                dh, _ = dense_bwd(dh, caches[s])
            for k, v in dense_bwd(dh, caches[l])[1].items():
                grads[f"blocks.{l}.{k}"] += v""",
  "3.3": """
    grad, remaining, t = x_in.grad, stage.reach, s - 1
    while remaining > 0:
        t_in, t_out = kept[t]
        blocks = net.stages[t].blocks
        inputs = [p for block in blocks[-remaining:] for p in block.parameters()]
        if remaining > len(blocks):
            t_in.grad = None
            inputs.append(t_in)
        torch.autograd.backward(t_out, grad, inputs=inputs, retain_graph=True)  # adds into .grad
        grad = t_in.grad
        remaining -= len(blocks)
        t -= 1""",
  "3.4": """
    grads = {}
    for name, value in params.items():
        kind, index = name.split(".")[0], int(name.split(".")[1])
        losses = [s for s in ([index, index + 1] if kind == "blocks" else [index]) if s < n_blocks]
        both = lambda: sum(stage_losses(params, x, y, plan)[s] for s in losses)  # one function
        grads[name] = numerical_grad(both, value, eps)
    return grads""",
  "3.5": "a, b = np.ravel(a), np.ravel(b)\nd = np.sqrt(np.sum(a * a) * np.sum(b * b))\nreturn 0.0 if d == 0 else float(np.sum(a * b) / d)"},
 "04_chunked": {
  "4.1": "return tuple(tuple(int(b) for b in part) for part in np.array_split(np.arange(n_blocks), n_chunks))",
  "4.2": "return tuple(b for b in range(stages[s][-1] + 1) if b >= stages[s][0] - overlap)",
  "4.3": """
    for l in range(plan.n_blocks):
        for s in plan.losses_for(l):
            logits, head_cache = heads[s]
            dh, g = linear_bwd(softmax_cross_entropy_bwd(1.0, softmax_cross_entropy_fwd(logits, y)[1]), head_cache)
            if l == plan.stages[s][-1]:
                for k, v in g.items():
                    grads[f"heads.{s}.{k}"] += v
            for m in range(plan.stages[s][-1], l, -1):
                dh, _ = dense_bwd(dh, caches[m])
            for k, v in dense_bwd(dh, caches[l])[1].items():
                grads[f"blocks.{l}.{k}"] += v""",
  "4.4": "return tuple(s for s, st in enumerate(stages) if st[0] - overlap <= block <= st[-1])",
  "4.5": """
    skip = {p.data_ptr() for p in params}
    sizes = {}

    def remember(t):                         # activations here are whole storages: data_ptr and nbytes suffice
        sizes.setdefault(t.data_ptr(), t.nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(remember, lambda t: t):
        fn()
    return sum(n for ptr, n in sizes.items() if ptr not in skip)"""},
 "05_side_by_side": {
  "5.1": """
    import re
    names = {"backprop": (1, 0), "greedy": (n_blocks, 0), "overlapping": (n_blocks, 1)}
    text = re.sub(r"\\s", "", spec.lower())
    if text in names:
        return dict(zip(("chunks", "overlap"), names[text]))
    values = {"chunks": n_blocks, "overlap": 0}
    for key, value in (item.split("=") for item in text.split(",")):
        if key not in values or not value.isdigit():
            raise ValueError(spec)
        values[key] = int(value)
    if not (1 <= values["chunks"] <= n_blocks and values["overlap"] < n_blocks):
        raise ValueError(spec)
    return values""",
  "5.2": 'return {k: float(np.asarray(history[k])[-1, -1]) for k in ("test_acc", "test_loss", "train_loss")}',
  "5.3": """
    last = f"heads.{plan.n_stages - 1}."
    view = {k.replace(last, "heads.0."): v for k, v in params.items() if k.startswith("blocks.") or k.startswith(last)}
    mine, _ = local_grads(params, x, y, plan)
    true, _ = local_grads(view, x, y, Plan.backprop(plan.n_blocks))
    out = []
    for l in range(plan.n_blocks):
        a = np.concatenate([mine[f"blocks.{l}.{k}"].ravel() for k in ("weight", "bias")])
        b = np.concatenate([true[f"blocks.{l}.{k}"].ravel() for k in ("weight", "bias")])
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a.any() and b.any() else 0.0)
    return out""",
  "5.4": "for s, loss in zip(steps, losses):\n    if not loss > target:\n        return s\nreturn None",
  "5.5": "return steps and max(stage_work) * (steps + len(stage_work) - 1) / throughput"},
 "06_numpy_to_torch": {
  "6.1": "h = x_in.detach()\nout = block(h)\nloss = F.cross_entropy(head(out), y)\nblock.zero_grad(set_to_none=True)\nloss.backward()\nreturn out.detach(), loss.detach(), [p.grad.clone() for p in block.parameters()]",
  "6.2": "x_in = x_in.detach().clone().requires_grad_()\nloss = F.cross_entropy(head(block(x_in)), y)\nloss.backward()\nreturn loss.detach(), x_in.grad",
  "6.3": "net = torch_mlp(plan)\nnet.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})\nlosses = net.local_backward(torch.from_numpy(x), torch.from_numpy(y))\nnet.zero_grad()\nreturn losses",
  "6.4": "for _ in range(n_steps):\n    net.local_backward(x, y)\n    net.step()\nreturn [p.detach() for p in net.parameters()]",
  "6.5": """
    from minilocal.local import receive_grad
    for _ in range(n_steps):
        h = x
        for stage in net.stages:
            result = stage_step(stage, h, y, update=not stage.keep_graph)
            if result.grad_in is not None:
                receive_grad(net.stages[stage.index - 1], result.grad_in, stage.reach)
                net.stages[stage.index - 1].update()
            h = result.x_out
    return [p.detach() for p in net.parameters()]""",
  "6.6": "with torch.no_grad():\n    return net(x).argmax(-1)"},
 "07_vision_and_language": {
  "7.1": "return len(range(0, T + 2 * padding - kernel_size + 1, stride))",
  "7.2": "return torch.einsum('bf,nf->bn', h.flatten(1), weight) + bias",
  "7.3": "T, D = q.shape[-2:]\ns = q @ k.transpose(-2, -1) * D ** -0.5\ns = torch.where(torch.tril(torch.ones(T, T, dtype=torch.bool)), s, torch.full_like(s, -torch.inf))\nreturn s.softmax(-1) @ v",
  "7.4": "return [float(F.cross_entropy(z.transpose(1, 2), y)) for z in net.stage_outputs(x)]",
  "7.5": """
    best = None
    for sizes in itertools.product(range(1, n_blocks + 1), repeat=k):
        if sum(sizes) != n_blocks:
            continue
        edges = np.cumsum((0,) + sizes)
        plan = Plan([tuple(range(int(a), int(b))) for a, b in zip(edges, edges[1:])])
        w = max(stage_flops(plan, block_flops, [head_at[st[-1]] for st in plan.stages]))
        best = min(best or (w, plan), (w, plan), key=lambda pair: pair[0])
    return best"""},
 "08_pipelines_and_asynchrony": {
  "8.1": "clocks = [[] for _ in range(m + n - 1)]\nfor i in range(m):\n    for j in range(n):\n        clocks[i + j].append((i, j))\nreturn [sorted(c, key=lambda pair: pair[1]) for c in clocks]",
  "8.2": "return 1 - M / (M + K - 1)",
  "8.3": "return max(costs) * (n_steps - 1) + sum(costs)",
  "8.4": "span = max(e.t_end for e in timeline)\nreturn [sum(e.t_end - e.t_start for e in timeline if e.stage == s and e.kind in {'forward', 'backward', 'update'}) / span for s in range(n_stages)]",
  "8.5": "import bisect\nstarts = sorted(e.t_start for e in timeline if e.stage == s and e.kind == 'forward')\nends = sorted(e.t_end for e in timeline if e.stage == s - 1 and e.kind == 'update')\nreturn [0 if s == 0 else bisect.bisect_right(ends, T) - t - 1 for t, T in enumerate(starts)]",
  "8.6": """
    import functools

    @functools.lru_cache(maxsize=None)
    def start(s, t):
        after = [0]
        if t > 0:
            after.append(start(s, t - 1) + 1)
            if s + 1 < n_stages and t - 1 - delay >= 0:
                after.append(start(s + 1, t - 1 - delay) + 1)
        if s > 0:
            after.append(start(s - 1, t) + 1)
        return max(after)
    return [[start(s, t) for t in range(n_steps)] for s in range(n_stages)]"""},
 "09_multi_device": {
  "9.1": "n = 0\nfor b in plan.stages[rank]:\n    n += (width if b else d_in) * width + width\nreturn n + (width + 1) * n_classes",
  "9.2": "return (int(rank + 1 < plan.n_stages), int(bool(plan.reach(rank))))",
  "9.3": "return 4 * batch * width * sum(a + g for a, g in (messages_per_step(plan, r) for r in range(plan.n_stages)))",
  "9.4": "span = max(e.t_end for e in timeline)\nreturn [sum(e.t_end - e.t_start for e in timeline if e.stage == s and e.kind in ('recv', 'send')) / span for s in range(n_stages)]",
  "9.5": """
    if rank == 0:
        result = stage_step(stage, x, y, update=False)
        dist.send(result.x_out, dst=1)       # blocking: returns once the tensor may be reused
        stage.update()
    else:
        h = torch.empty(shape)
        dist.recv(h, src=0)
        stage_step(stage, h, y)"""},
 "10_compute_efficiency": {
  "10.1": "return tuple(2.0 * d_in * d_out for _ in 'fwx')",
  "10.2": "work = []\nfor s, h in enumerate(head_flops):\n    w = h.forward + h.backward_w + h.backward_x\n    for b in plan.stages[s]:\n        f = block_flops[b]\n        w += f.forward + sum(f.backward_w + f.backward_x * (b > plan.trained_by(u)[0]) for u in plan.losses_for(b))\n    work.append(w)\nreturn work",
  "10.3": "import math\nper = 1 if devices_per_stage is None else math.ceil(batch / devices_per_stage)\nreturn 0.0 if not steps else (steps + len(stage_work) - 1) * max(stage_work) * per / throughput",
  "10.4": "points = sorted((t, l) for times, losses in curves for t, l in zip(times, losses))\nenv_t, env_l = [], []\nfor t, l in points:\n    if env_t and env_t[-1] == t:\n        env_l[-1] = min(env_l[-1], l)\n    else:\n        env_t.append(t)\n        env_l.append(min(l, env_l[-1]) if env_l else l)\nreturn env_t, env_l",
  "10.5": "import math\nif not steps:\n    return 0.0\nk = len(stage_work)\nper = math.ceil(batch / min(batch, n_devices // k))\nreturn (steps + k - 1) * max(stage_work) * per / throughput",
  "10.6": "g2, noise = np.linalg.lstsq(np.array([[1.0, 1 / small], [1.0, 1 / big]]), np.array([s_small, s_big]), rcond=None)[0]\nreturn float(noise / g2)"},
 "lab1_scaling": {
  "1.1": "return 1 / ((M + K - 1) / (K * M))",
  "1.2": "divisors = [M for M in range(1, batch + 1) if batch % M == 0]\nreturn next((M for M in divisors if (K - 1) <= max_bubble * (M + K - 1)), batch)",
  "1.3": "s = rank // D\nr = rank - s * D\nreturn s, r, (rank - D) if s else None, (rank + D) if s + 1 < K else None, tuple(s * D + q for q in range(D))"},
 "lab2_pareto": {
  "2.1": "hits = [s for s, l in zip(record['steps'], record['loss']) if l <= target]\nif not hits:\n    return None\nreturn cost.idealized_time(hits[0], record['stage_flops'], record['config']['batch'], throughput, devices_per_stage)",
  "2.2": "best = None\nfor r in results.values():\n    t = time_to_target(r, target, throughput, None) if r['config']['method'] == method else None\n    if t is not None and (best is None or t < best):\n        best = t\nreturn best"},
 "lab3_language_model": {
  "3.1": "n = (len(ids) - 1) // block_size\nx = np.asarray(ids[:n * block_size], dtype=np.int64).reshape(n, block_size)\ny = np.asarray(ids[1:n * block_size + 1], dtype=np.int64).reshape(n, block_size)\nreturn x, y"},
}

# the tolerance each check must keep: from the numerics, not from the reference's own error
TOL = {
 "00_welcome": {"0.1": 1e-6, "0.2": 1e-6},
 "01_backprop_numpy": {"1.1": 1e-9, "1.2": 1e-9, "1.3": 1e-6, "1.4": 1e-12, "1.5": 1e-10, "1.6": 1e-9},
 "02_greedy": {"2.1": 1e-6, "2.2": 1e-9, "2.3": 1e-10, "2.4": 1e-12, "2.5": 1e-9},
 "03_overlapping": {"3.1": 1e-12, "3.2": 1e-10, "3.3": 1e-10, "3.4": 1e-6, "3.5": 1e-10},
 "04_chunked": {"4.1": 1e-12, "4.2": 1e-12, "4.3": 1e-10, "4.4": 1e-12, "4.5": 1e-12},
 "05_side_by_side": {"5.1": 1e-12, "5.2": 1e-12, "5.3": 1e-8, "5.4": 1e-12, "5.5": 1e-12},
 "06_numpy_to_torch": {"6.1": 1e-6, "6.2": 1e-6, "6.3": 1e-12, "6.4": 1e-6, "6.5": 1e-15, "6.6": 1e-12},
 "07_vision_and_language": {"7.1": 1e-12, "7.2": 1e-5, "7.3": 1e-10, "7.4": 1e-6, "7.5": 1e-12},
 "08_pipelines_and_asynchrony": {"8.1": 1e-12, "8.2": 1e-9, "8.3": 1e-9, "8.4": 1e-12, "8.5": 1e-12, "8.6": 1e-12},
 "09_multi_device": {"9.1": 1e-12, "9.2": 1e-12, "9.3": 1e-12, "9.4": 1e-9, "9.5": 1e-12},
 "10_compute_efficiency": {"10.1": 1e-12, "10.2": 1e-12, "10.3": 1e-12, "10.4": 1e-12, "10.5": 1e-12,
                           "10.6": 1e-9},
 "lab1_scaling": {"1.1": 1e-9, "1.2": 1e-12, "1.3": 1e-12},
 "lab2_pareto": {"2.1": 1e-12, "2.2": 1e-12},
 "lab3_language_model": {"3.1": 1e-12},
}


def path_of(name):
    return next(p for p in ROOT.rglob(f"{name}.ipynb") if ".ipynb_checkpoints" not in p.parts)


@functools.lru_cache(maxsize=None)
def outcomes(name):
    """Each exercise's outcomes in notebook ``name``, from one in-process run (cached)."""
    trials = {e: {**wrong, "RIGHT": RIGHT.get(name, {}).get(e, "")}
              for e, wrong in WRONG[name].items()}
    return run_notebook(path_of(name), trials)


def exercises():
    return [(n, e) for n, table in TOL.items() for e in table]


def wrong_answers():
    return [(n, e, label) for n, table in WRONG.items() for e, answers in table.items() for label in answers]


def test_the_tables_cover_every_exercise_of_every_notebook():
    from exercise_runs import code_cells
    for path in sorted(ROOT.rglob("*.ipynb")):
        found = {f"{x[0]}.{x[1]}" for x in map(rel.exercise_of, code_cells(path)) if x}
        assert set(TOL.get(path.stem, {})) == found, f"{path.name}: TOL covers {sorted(TOL.get(path.stem, {}))}, notebook has {sorted(found)}"
        assert all(len(WRONG[path.stem].get(e, {})) >= 2 for e in found), f"{path.name}: two wrong answers per exercise"
        assert set(RIGHT.get(path.stem, {})) == found, f"{path.name}: one correct alternative per exercise"
        if rel.notebook_number(path.name) not in (None, 0):  # 00 is the welcome
            assert len(found) >= 5, f"{path.name}: only {len(found)} exercises, the course asks for 5"


@pytest.mark.parametrize("name, exercise", exercises(), ids=lambda v: str(v))
def test_the_solution_passes_with_the_tolerance_of_the_table(name, exercise):
    result = outcomes(name)[exercise]
    assert result["tol"] == TOL[name][exercise], \
        f"{name} {exercise}: the check cell has tol={result['tol']:g}, the course fixes {TOL[name][exercise]:g}"
    assert result["solution"] == PASSED, result["solution"]


@pytest.mark.parametrize("name, exercise", exercises(), ids=lambda v: str(v))
def test_an_answer_three_tolerances_off_fails(name, exercise):
    near = outcomes(name)[exercise]["near_tol"]
    if near is None:
        pytest.skip("no floats in the answer: compared exactly")
    assert re.search(rf"FAIL on case \d+.*relative error \S+ > tolerance", near), near


@pytest.mark.parametrize("name, exercise", exercises(), ids=lambda v: str(v))
def test_a_correct_alternative_passes(name, exercise):
    assert outcomes(name)[exercise]["RIGHT"] == PASSED, outcomes(name)[exercise]["RIGHT"]


@pytest.mark.parametrize("name, exercise, label", wrong_answers(), ids=lambda v: str(v))
def test_a_wrong_answer_fails_with_a_message_that_names_the_problem(name, exercise, label):
    message = outcomes(name)[exercise][label]
    assert message.startswith(f"Exercise {exercise}: FAIL on case "), message
    assert re.search(PLACE, message) or re.search(r"gradient|graph|optimizer|in place|raised", message), message
    assert "\n  inputs: " in message, message
