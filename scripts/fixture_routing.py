"""Routing margin checks for scripts/make_fixtures.py: recompute each MoE router's choice in numpy
float64 from the inputs transformers gave it, and measure how far every token is from flipping an
expert (so an f32 runtime chooses the same experts as the float64 reference)."""

import numpy as np
import torch
import transformers

# --------------------------------------------------------------------------------------------
# Routing margin check (numpy float64, following the spec / transformers code)
# --------------------------------------------------------------------------------------------


def _sorted_margin(values: np.ndarray, k: int) -> float:
    """Gap between the k-th largest and (k+1)-th largest value (k counted from 1)."""
    s = np.sort(values)[::-1]
    return float(s[k - 1] - s[k])


def routing_check(cfg, router, x: np.ndarray, tf_idx: np.ndarray, tf_w: np.ndarray):
    """Recompute the routing for token activations x [T, H]; return the smallest margin and
    assert it picks the experts (and weights) transformers picked."""
    W = router.weight.detach().to(torch.float64).numpy()
    E = W.shape[0]
    k = cfg.num_experts_per_tok
    g = x @ W.T
    margins = []
    for t in range(x.shape[0]):
        if cfg.model_type == "deepseek_v2":
            s = np.exp(g[t] - g[t].max())
            s = s / s.sum()
            choice = s.copy()
            if cfg.topk_method == "group_limited_greedy":
                gs = s.reshape(cfg.n_group, E // cfg.n_group).max(axis=1)
                margins.append(_sorted_margin(gs, cfg.topk_group))
                kept = np.argsort(-gs, kind="stable")[: cfg.topk_group]
                mask = np.zeros(cfg.n_group, bool)
                mask[kept] = True
                choice = np.where(np.repeat(mask, E // cfg.n_group), s, 0.0)
            else:
                assert cfg.topk_method == "greedy", cfg.topk_method
            margins.append(_sorted_margin(choice, k))
            idx = np.argsort(-choice, kind="stable")[:k]
            # transformers' DeepseekV2 router never renormalises (norm_topk_prob is ignored).
            w = s[idx] * cfg.routed_scaling_factor
        else:
            bias = router.e_score_correction_bias.detach().to(torch.float64).numpy()
            s = 1.0 / (1.0 + np.exp(-g[t]))
            choice = s + bias
            grouped = choice.reshape(cfg.n_group, E // cfg.n_group)
            gs = np.sort(grouped, axis=1)[:, ::-1][:, :2].sum(axis=1)
            margins.append(_sorted_margin(gs, cfg.topk_group))
            kept = np.argsort(-gs, kind="stable")[: cfg.topk_group]
            mask = np.zeros(cfg.n_group, bool)
            mask[kept] = True
            choice = np.where(np.repeat(mask, E // cfg.n_group), choice, -np.inf)
            margins.append(_sorted_margin(choice, k))
            idx = np.argsort(-choice, kind="stable")[:k]
            w = s[idx]
            if cfg.norm_topk_prob:
                w = w / (w.sum() + 1e-20)
            w = w * cfg.routed_scaling_factor
        order = np.argsort(tf_idx[t])
        tf_sorted_idx = tf_idx[t][order]
        mine = np.argsort(idx)
        if not np.array_equal(np.sort(idx), tf_sorted_idx):
            raise AssertionError(f"routing mismatch at token {t}: numpy {sorted(idx)} vs transformers {tf_sorted_idx}")
        if not np.allclose(w[mine], tf_w[t][order], rtol=1e-5, atol=1e-6):
            raise AssertionError(f"routing weight mismatch at token {t}: numpy {w[mine]} vs transformers {tf_w[t][order]}")
    return min(margins)


class RouterTap:
    """Forward hooks on every router module: capture inputs and transformers' choices."""

    def __init__(self, model):
        self.records = []
        self.handles = []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "top_k"):
                self.handles.append(mod.register_forward_hook(self._hook(name)))
        assert self.handles, "no router modules found"

    def _hook(self, name):
        def fn(mod, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64).numpy().copy()
            _, w, idx = output
            self.records.append((name, mod, x, idx.detach().numpy().copy(), w.detach().to(torch.float64).numpy().copy()))

        return fn

    def clear(self):
        self.records = []

    def remove(self):
        for h in self.handles:
            h.remove()


def min_routing_margin(model, tap: RouterTap) -> float:
    return min(routing_check(model.config, mod, x, idx, w) for _, mod, x, idx, w in tap.records)
