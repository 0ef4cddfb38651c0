"""Writes a trained demo model's folder for scripts/demo/train_demo.py: bf16 safetensors, config.json
(the MLA model's in the published deepseek-ai style), tokenizer files, reference.json (float64
transformers logits and greedy ids for the runtime's tests, on a sentence whose MoE routing is far
from a tie) and the model card.
"""

import sys  # noqa: I001
from pathlib import Path as _Path

# cpu_env and expert_layout are shared with the fixture scripts.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "fixtures"))
import cpu_env  # noqa: E402,F401  (one thread, no hub: before torch and tokenizers)

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from demo_corpus import DEB_PACKAGE, VAL_FRACTION, log  # noqa: E402
from demo_settings import (  # noqa: E402
    SEED,
    BOS,
    EOS,
    VOCAB_SIZE,
    CONTEXT,
    MAX_POS,
    HIDDEN,
    LAYERS,
    HEADS,
    RMS_EPS,
    ROPE_THETA,
    MOE_INTERMEDIATE,
    EXPERTS,
    EXPERTS_PER_TOK,
    SHARED_EXPERTS,
    FIRST_K_DENSE,
    INTERMEDIATE,
    MHA_HEAD_DIM,
    MLA_SHAPE,
    BATCH,
    PEAK_LR,
    MIN_LR_RATIO,
    WARMUP,
    WEIGHT_DECAY,
    BETAS,
    GRAD_CLIP,
    AUX_LOSS_ALPHA,
    REF_POSITIONS,
    REF_TOKENS,
    ROUTING_MARGIN,
    SAMPLE_PROMPTS,
    SAMPLE_TOKENS,
)
from expert_layout import per_expert_layout  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast  # noqa: E402

# --------------------------------------------------------------------------------------------
# Writing and checking
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def eval_loss(model, windows) -> float:
    model.eval()
    nll, n = 0.0, 0
    for w in windows:
        out = model(input_ids=w[None], labels=w[None], use_cache=False)
        nll += float(out.loss) * (len(w) - 1)
        n += len(w) - 1
    model.train()
    return nll / n


def published_mla_config() -> dict:
    """config.json in the style of the published deepseek-ai checkpoints (rope_scaling /
    rope_theta at top level, torch_dtype)."""
    out = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": AUX_LOSS_ALPHA,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": FIRST_K_DENSE,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "kv_lora_rank": MLA_SHAPE["kv_lora_rank"],
        "max_position_embeddings": MAX_POS,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": MOE_INTERMEDIATE,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": EXPERTS,
        "n_shared_experts": SHARED_EXPERTS,
        "norm_topk_prob": False,
        "num_attention_heads": HEADS,
        "num_experts_per_tok": EXPERTS_PER_TOK,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS,
        "pretraining_tp": 1,
        "q_lora_rank": MLA_SHAPE["q_lora_rank"],
        "qk_nope_head_dim": MLA_SHAPE["qk_nope_head_dim"],
        "qk_rope_head_dim": MLA_SHAPE["qk_rope_head_dim"],
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "routed_scaling_factor": 1.0,
        "scoring_func": "softmax",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": MLA_SHAPE["v_head_dim"],
        "vocab_size": VOCAB_SIZE,
    }
    return dict(sorted(out.items()))


def bf16_state(model) -> dict:
    """Weights in bf16, MLA experts in the published per-expert layout."""
    state = {name: t.detach().to(torch.bfloat16) for name, t in model.state_dict().items()}
    return per_expert_layout(state, MOE_INTERMEDIATE)


def transformers_config_json(model) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        cfg = json.loads((Path(tmp) / "config.json").read_text())
    cfg.pop("attn_implementation", None)
    cfg["architectures"] = [type(model).__name__]
    cfg["dtype"] = "bfloat16"
    return dict(sorted(cfg.items()))


def load(folder: Path, dtype):
    model, info = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise AssertionError(f"{folder}: loading info not clean: {bad}")
    return model.eval()


class RoutingMargins:
    """Smallest routing margin (router-logit gap at the top-k boundary) over all MoE layers and
    tokens of the forward passes since the last pop()."""

    def __init__(self, model):
        self.m = []
        self.handles = [m.register_forward_hook(self._hook) for n, m in model.named_modules()
                        if n.endswith("mlp.gate") and hasattr(m, "top_k")]

    def _hook(self, mod, inputs, output):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64).numpy()
        # Softmax is monotonic, so the chosen set depends on the order of the router logits: the
        # margin is the gap between the k-th and (k+1)-th largest logit (float64).
        g = np.sort(x @ mod.weight.detach().to(torch.float64).numpy().T, -1)[:, ::-1]
        self.m.append(float((g[:, mod.top_k - 1] - g[:, mod.top_k]).min()))

    def pop(self):
        v, self.m = (min(self.m) if self.m else float("inf")), []
        return v

    def remove(self):
        for h in self.handles:
            h.remove()


ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Col.", "Capt.", "Messrs.")


def sentences(paras):
    """Sentences of the paragraphs (split after . ! ? before a capital or a quote, but not after
    Mr., Mrs., ...)."""
    for p in paras:
        out = []
        for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", p):
            if out and out[-1].endswith(ABBREVIATIONS):
                out[-1] += " " + piece
            else:
                out.append(piece)
        yield from (x.strip() for x in out)


@torch.no_grad()
def choose_reference(tok, val_paras, mla64):
    """First validation sentence of REF_TOKENS length whose routing margins (MLA model, float64)
    are all >= ROUTING_MARGIN, so f32 engines route it the same way."""
    tap = RoutingMargins(mla64) if mla64 is not None else None
    best = (-1.0, None)
    for s in sentences(val_paras):
        ids = tok.encode(s).ids
        if not (REF_TOKENS[0] <= len(ids) <= REF_TOKENS[1]) or not s[0].isupper():
            continue
        if tap is None:
            return s
        mla64(input_ids=torch.tensor([[0] + ids]), use_cache=False)
        m = tap.pop()
        if m >= ROUTING_MARGIN:
            tap.remove()
            return s
        best = max(best, (m, s))
    log(f"WARNING: no reference sentence has routing margins >= {ROUTING_MARGIN}; using the best ({best[0]:.3g})")
    tap.remove()
    return best[1]


def fmt_reference(obj: dict) -> str:
    lines = ["{"]
    items = list(obj.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if k == "logits":
            rows = ["[" + ",".join(repr(float(f"{x:.12g}")) for x in row) + "]" for row in v]
            lines.append('  "logits": [')
            lines += [f"    {r}{',' if j + 1 < len(rows) else ''}" for j, r in enumerate(rows)]
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def greedy_uncached(model, ids, n):
    seq, margins = list(ids), []
    for _ in range(n):
        last = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].to(torch.float64)
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        seq.append(int(torch.argmax(last)))
    return seq[len(ids):], min(margins)


@torch.no_grad()
def hf_generate(model, ids, n):
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=None,
                           pad_token_id=None, bos_token_id=None)
    model.generation_config.eos_token_id = None
    out = model.generate(torch.tensor([ids]), generation_config=cfg)
    return [int(t) for t in out[0, len(ids):]]


def param_counts(model, kind):
    total = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    active = total
    if kind == "mla":
        n_moe = LAYERS - FIRST_K_DENSE
        per_expert = 3 * HIDDEN * MOE_INTERMEDIATE
        active = total - n_moe * (EXPERTS - EXPERTS_PER_TOK) * per_expert
    return {"total": total, "embeddings_and_lm_head": emb, "non_embedding": total - emb,
            "active_per_token": active}


def float32_samples(folder: Path, tok):
    """Greedy continuations of SAMPLE_PROMPTS: transformers generate (KV cache), the saved bf16
    weights run in float32, prompt tokenized by the saved tokenizer files."""
    m32 = load(folder, torch.float32)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = [0] + hf_tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids[1:] == tok.encode(prompt).ids
        new = hf_generate(m32, ids, SAMPLE_TOKENS)
        samples.append({"prompt": prompt, "prompt_ids": ids, "new_ids": new,
                        "text": prompt + hf_tok.decode(new, skip_special_tokens=False)})
    return samples


@torch.no_grad()
def write_reference(folder: Path, kind, tok, val_paras, ref_text, samples):
    """reference.json: float64 logits (saved bf16 weights in float64, eager attention) of the first
    REF_POSITIONS positions of a validation sentence, and float64 greedy continuations."""
    m64 = load(folder, torch.float64)
    if ref_text is None:
        ref_text = choose_reference(tok, val_paras, m64 if kind == "mla" else None)
    ids = [0] + tok.encode(ref_text).ids
    tap = RoutingMargins(m64) if kind == "mla" else None
    logits = m64(input_ids=torch.tensor([ids]), use_cache=False).logits[0].to(torch.float64)
    margin = tap.pop() if tap else None
    greedy = []
    for s in samples:
        new, gm = greedy_uncached(m64, s["prompt_ids"], SAMPLE_TOKENS)
        rmargin = None
        if tap:
            tap.pop()
            m64(input_ids=torch.tensor([s["prompt_ids"] + new[:-1]]), use_cache=False)
            rmargin = tap.pop()
        greedy.append({"prompt": s["prompt"], "prompt_ids": s["prompt_ids"], "greedy_ids": new,
                       "min_top2_logit_margin": gm, "min_routing_margin": rmargin,
                       "same_as_float32_generate": new == s["new_ids"]})
    if tap:
        tap.remove()
    ref = {
        "model": f"demo-{kind}",
        "generator": f"scripts/demo/train_demo.py (torch {torch.__version__}, transformers {transformers.__version__}): "
                     "saved bf16 weights converted to float64, eager attention",
        "text": ref_text,
        "token_ids": ids,
        "positions": REF_POSITIONS,
        "min_routing_margin": margin,
        "greedy": greedy,
        "logits": logits[:REF_POSITIONS].tolist(),
    }
    (folder / "reference.json").write_text(fmt_reference(ref))
    return ref_text, greedy


def write_model(kind, model, tok, corpus, stats, steps, val_wins, val_paras, out_root, ref_text):
    folder = out_root / f"demo-{kind}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cfg = published_mla_config() if kind == "mla" else transformers_config_json(model)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(bf16_state(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(folder / "model.safetensors", 0o644)  # safetensors creates it 0600
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n")
    tcfg = {"bos_token": BOS, "eos_token": EOS, "add_bos_token": True,
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MAX_POS}
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
    counts = param_counts(model, kind)
    del model

    # Validation metrics with transformers on the saved (bf16) weights, computed in float32.
    m32 = load(folder, torch.float32)
    val_loss = eval_loss(m32, val_wins)
    del m32
    samples = float32_samples(folder, tok)
    ref_text, greedy = write_reference(folder, kind, tok, val_paras, ref_text, samples)

    size = (folder / "model.safetensors").stat().st_size
    result = {"kind": kind, "folder": str(folder), "params": counts, "safetensors_bytes": size,
              "val_loss": val_loss, "val_ppl": math.exp(val_loss), "samples": samples,
              "steps": steps, "train_tokens": steps * BATCH * CONTEXT, "ref_text": ref_text,
              "greedy_check": greedy, **stats}
    (folder / "README.md").write_text(model_card(kind, result, corpus))
    return result


def model_card(kind, r, corpus) -> str:
    p = r["params"]
    if kind == "mla":
        arch = (
            f"`DeepseekV2ForCausalLM` (model_type deepseek_v2), Multi-head Latent Attention: hidden {HIDDEN}, "
            f"{LAYERS} layers, {HEADS} heads, q_lora_rank null, kv_lora_rank {MLA_SHAPE['kv_lora_rank']}, "
            f"qk_nope_head_dim {MLA_SHAPE['qk_nope_head_dim']}, qk_rope_head_dim {MLA_SHAPE['qk_rope_head_dim']}, "
            f"v_head_dim {MLA_SHAPE['v_head_dim']}; plain RoPE (theta {ROPE_THETA:g}, interleaved pairs); "
            f"layers 0-{FIRST_K_DENSE - 1} dense SwiGLU MLP (intermediate {INTERMEDIATE}), layers "
            f"{FIRST_K_DENSE}-{LAYERS - 1} MoE: {EXPERTS} routed experts (intermediate {MOE_INTERMEDIATE}), "
            f"{EXPERTS_PER_TOK} per token, softmax scores, greedy top-k, weights not renormalised, "
            f"routed_scaling_factor 1.0, {SHARED_EXPERTS} shared expert. Untied lm_head. "
            f"KV cache per token per layer: {MLA_SHAPE['kv_lora_rank'] + MLA_SHAPE['qk_rope_head_dim']} values. "
            f"Trained with a Switch-style load-balancing loss (alpha {AUX_LOSS_ALPHA}).")
        twin = "MHA twin: `models/demo-mha/` (same tokenizer, data, order, steps, optimizer, schedule, seed)."
    else:
        arch = (
            f"`LlamaForCausalLM` (model_type llama), standard multi-head attention: hidden {HIDDEN}, "
            f"{LAYERS} layers, {HEADS} heads, num_key_value_heads {HEADS}, head_dim {MHA_HEAD_DIM}; plain RoPE "
            f"(theta {ROPE_THETA:g}); every layer a dense SwiGLU MLP with intermediate {INTERMEDIATE} "
            f"(= the MLA twin's dense layers, and = the width an MLA MoE layer activates per token: "
            f"({EXPERTS_PER_TOK} routed + {SHARED_EXPERTS} shared) x {MOE_INTERMEDIATE}). Untied lm_head. "
            f"KV cache per token per layer: {2 * HEADS * MHA_HEAD_DIM} values.")
        twin = "MLA twin: `models/demo-mla/` (same tokenizer, data, order, steps, optimizer, schedule, seed)."
    hist = "\n".join(f"| {h['step']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['elapsed_s']:.0f} |"
                     for h in r["history"])
    samples = "\n".join(f"- greedy, {SAMPLE_TOKENS} tokens after \"{s['prompt']}\":\n\n  > {s['text']}\n"
                        for s in r["samples"])
    return f"""# demo-{kind}

A small demo language model for mla-rt, trained from scratch on CPU by `scripts/demo/train_demo.py`
(`scripts/demo/train_demo.sh`). It writes readable (if dreamy) Austen-style English; it is a demo and a
test model, not a useful assistant. {twin}

## Data
- Corpus: Jane Austen's six completed novels (Sense and Sensibility, Pride and Prejudice, Mansfield
  Park, Emma, Northanger Abbey, Persuasion; 1811-1818). The texts are in the **public domain**.
- Source: Debian package `{DEB_PACKAGE}` {corpus['debian_version']} ({corpus['upstream']}; package
  licence {corpus['package_licence']}), fetched with `apt-get download` and read without R.
- Cleaned text: {corpus['corpus_chars']:,} characters, {corpus['corpus_words']:,} words,
  {corpus['paragraphs']:,} paragraphs (sha256 {corpus['corpus_sha256'][:16]}...). Validation split:
  the last {VAL_FRACTION:.0%} of each novel's paragraphs.
- Tokenizer: byte-level BPE, {VOCAB_SIZE} tokens (`<|bos|>` 0, `<|eos|>` 1), trained on the
  training split. Each paragraph is a document: `<|bos|> text <|eos|>`.

## Architecture
{arch}

Parameters: {p['total']:,} total ({p['non_embedding']:,} without embeddings and lm_head; {p['active_per_token']:,}
active per token). Weights: `model.safetensors`, bfloat16, {r['safetensors_bytes'] / 1e6:.1f} MB.
Context: trained on {CONTEXT}-token windows; max_position_embeddings {MAX_POS}.

## Training
AdamW (betas {BETAS}, weight decay {WEIGHT_DECAY}, no decay on norms/embeddings), peak LR {PEAK_LR:g},
{WARMUP} warm-up steps then cosine to {MIN_LR_RATIO:g} x peak, grad clip {GRAD_CLIP}, batch {BATCH} x {CONTEXT}
tokens, {r['steps']} steps = {r['train_tokens']:,} tokens, seed {SEED}, float32, one CPU thread:
{r['train_seconds'] / 60:.1f} minutes (torch {torch.__version__}, transformers {transformers.__version__}).

| step | train loss | val loss | elapsed s |
|---|---|---|---|
{hist}

**Final validation loss {r['val_loss']:.4f} nats/token, perplexity {r['val_ppl']:.2f}** (transformers,
the saved bf16 weights run in float32, {CONTEXT}-token windows over the whole validation split).

## Samples
{samples}
## Files
config.json, model.safetensors, tokenizer.json, tokenizer_config.json, and reference.json: float64
transformers logits (saved bf16 weights converted to float64, eager attention) for the first
{REF_POSITIONS} positions of a validation sentence, plus float64 greedy continuations of the
sample prompts, for runtime tests.
"""
