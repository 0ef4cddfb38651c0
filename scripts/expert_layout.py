"""transformers 5 keeps a MoE layer's routed experts fused (mlp.experts.gate_up_proj [E, 2*I, H],
gate rows first, and mlp.experts.down_proj [E, H, I]); published DeepSeek checkpoints store one
gate/up/down matrix per expert. This maps the first to the second."""


def per_expert_layout(state: dict, intermediate: int) -> dict:
    """`state` with every fused expert tensor split into per-expert `...experts.{e}.*_proj.weight`
    tensors; every tensor comes out contiguous and owning its storage."""
    out = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :intermediate].contiguous().clone()
                out[f"{prefix}{e}.up_proj.weight"] = t[e, intermediate:].contiguous().clone()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e].contiguous().clone()
        else:
            out[name] = t.contiguous().clone()
    return out
