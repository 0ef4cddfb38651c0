#!/usr/bin/env python3
"""Generate the Llama-family (MHA/GQA/MQA) test fixtures under tests/fixtures/.

Companion of scripts/make_fixtures.py (the DeepSeek fixtures), run after it by
scripts/make_fixtures.sh with the same arguments. Reuses its tokenizer, random
re-initialisation, seed search (top-1 minus top-2 logit >= MARGIN at every greedy step, and at
least 4 distinct tokens among the 8 greedy ones; dense models have no routing), weight writer, expected.json format and reload check, so the folders
have the same layout and expected.json the same keys ("min_routing_margin" is null here).

Fixtures (hidden 48, intermediate 96, vocab 352, max_position_embeddings 128, rms_norm_eps 1e-5):
  llama-gqa  LlamaForCausalLM, 4 heads / 2 KV heads, explicit head_dim 16, llama3 rope, float32,
             untied, published (Meta Llama 3.x) config style
  llama-mha  LlamaForCausalLM, 4 / 4 heads, head_dim 12, linear rope, attention_bias + mlp_bias,
             tied embeddings, bfloat16, transformers-5 config style (rope_parameters)
  mistral    MistralForCausalLM, 4 / 1 heads (MQA), sliding_window null, rope theta 1e6, float16,
             two safetensors shards + index
  qwen2      Qwen2ForCausalLM, 4 / 2 heads, q/k/v biases, YaRN rope (factor 4), float32,
             published (Qwen2.5) config style with use_sliding_window false

Usage: make_llama_fixtures.py [--out DIR] [--only NAME ...]
"""

import make_fixtures as mf  # noqa: I001  (sets the thread / determinism environment first)

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fixture_eval import decode_logits, perplexity_entry, round_rows

mf.MODEL_CLASSES.update(
    {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
)

MIN_DISTINCT_GREEDY = 4

COMMON = dict(
    hidden_size=48,
    intermediate_size=96,
    num_attention_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    hidden_act="silu",
)

FIXTURES = [
    dict(
        name="llama-gqa",
        model_type="llama",
        description=(
            "Llama 3.x style: llama, GQA (4 query heads, 2 KV heads: query head h uses KV head "
            "h // 2), explicit head_dim 16 != hidden/heads = 12 (q_proj [64, 48], k/v_proj [32, 48], "
            "o_proj [48, 64]), no biases, 2 layers, rms_norm_eps 1e-5, rope theta 10000 with llama3 "
            "scaling (factor 8, low_freq_factor 1, high_freq_factor 4, "
            "original_max_position_embeddings 32: of the 8 frequencies, i = 0 (wavelen 2pi < 8) is "
            "kept, i = 1 (wavelen 19.9) is smoothed, i >= 2 (wavelen > 32) are divided by 8); "
            "rotate-half rope pairs (x[i], x[i + 8]); published config style (rope_scaling with "
            "rope_type, top-level rope_theta, torch_dtype); untied lm_head; single "
            "model.safetensors, float32."
        ),
        config=dict(
            num_hidden_layers=2,
            num_key_value_heads=2,
            head_dim=16,
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
        ),
        rope_theta=10000.0,
        rope_scaling={
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_type": "llama3",
        },
        config_style="published",
        dtype="float32",
        shards=1,
        seed_base=5000,
    ),
    dict(
        name="llama-mha",
        model_type="llama",
        description=(
            "llama, MHA (4 heads, 4 KV heads), head_dim 12 (= hidden/heads; config.json carries "
            "head_dim 12), attention_bias true (q/k/v/o_proj all have .bias) and mlp_bias true "
            "(gate/up/down_proj all have .bias; all biases random, std 0.2), 2 layers, rms_norm_eps 1e-5, rope theta 10000 with "
            "linear scaling factor 2 (inv_freq / 2); rotate-half rope pairs (x[i], x[i + 6]); "
            "tie_word_embeddings true (no lm_head.weight in the file; embeddings std 1/sqrt(48)); transformers-5 config style "
            "(config.json exactly as save_pretrained writes it: rope_parameters with rope_type and "
            "rope_theta inside, 'dtype'); single model.safetensors stored bfloat16 (reference uses "
            "the bf16-rounded weights in float64)."
        ),
        config=dict(
            num_hidden_layers=2,
            num_key_value_heads=4,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
        rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        config_style="transformers",
        dtype="bfloat16",
        shards=1,
        seed_base=6000,
    ),
    dict(
        name="mistral",
        model_type="mistral",
        description=(
            "Mistral 7B v0.3 style: mistral, MQA (4 query heads, 1 KV head), head_dim 12 (no "
            "head_dim key in config.json), no biases, 3 layers, rms_norm_eps 1e-5, plain rope "
            "theta 1e6 (no scaling), rotate-half rope pairs (x[i], x[i + 6]), sliding_window null "
            "(full causal attention); published config style (top-level rope_theta, torch_dtype); "
            "untied lm_head; sharded into 2 safetensors files + model.safetensors.index.json; "
            "stored float16 (reference uses the f16-rounded weights in float64)."
        ),
        config=dict(
            num_hidden_layers=3,
            num_key_value_heads=1,
            sliding_window=None,
            tie_word_embeddings=False,
        ),
        rope_theta=1000000.0,
        rope_scaling=None,
        config_style="published",
        dtype="float16",
        shards=2,
        seed_base=7000,
    ),
    dict(
        name="qwen2",
        model_type="qwen2",
        description=(
            "Qwen2.5 style: qwen2, GQA (4 query heads, 2 KV heads), head_dim 12 (Qwen2Config has "
            "no head_dim), q/k/v_proj with bias, o_proj and MLP without, 2 layers, rms_norm_eps "
            "1e-5, rope theta 100 with YaRN (rope_scaling type yarn, factor 4, "
            "original_max_position_embeddings 16; beta_fast 32 / beta_slow 1 defaults, truncate "
            "true: correction range [0, 2], ramp over the 6 frequencies = [0, 0.5, 1, 1, 1, 1], "
            "inv_freq = inv_freq/4 * ramp + inv_freq * (1 - ramp); attention_factor = "
            "0.1 * ln(4) + 1 = 1.138629 multiplies cos and sin, i.e. scores x 1.2965; the softmax "
            "scale stays 1/sqrt(12)); rotate-half rope pairs; use_sliding_window false with "
            "sliding_window 8 and max_window_layers 1 in config.json (must be ignored: every layer "
            "is full causal attention); published config style (rope_scaling with legacy 'type' "
            "key, top-level rope_theta, torch_dtype); untied lm_head; single model.safetensors, "
            "float32."
        ),
        config=dict(
            num_hidden_layers=2,
            num_key_value_heads=2,
            use_sliding_window=False,
            sliding_window=8,
            max_window_layers=1,
            tie_word_embeddings=False,
        ),
        rope_theta=100.0,
        rope_scaling={"factor": 4.0, "original_max_position_embeddings": 16, "type": "yarn"},
        config_style="published",
        dtype="float32",
        shards=1,
        seed_base=8000,
    ),
]
assert tuple(f["name"] for f in FIXTURES) == mf.LLAMA_FIXTURE_NAMES


def rope_parameters(fx: dict) -> dict:
    rs = fx["rope_scaling"]
    if rs is None:
        return {"rope_type": "default", "rope_theta": fx["rope_theta"]}
    out = {k: v for k, v in rs.items() if k != "type"}
    out["rope_type"] = rs.get("rope_type", rs.get("type"))
    out["rope_theta"] = fx["rope_theta"]
    return out


def hf_config(fx: dict, vocab_size: int, bos_id: int, eos_id: int):
    cfg_cls, _ = mf.MODEL_CLASSES[fx["model_type"]]
    return cfg_cls(
        **COMMON,
        **fx["config"],
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        rope_parameters=rope_parameters(fx),
        attn_implementation="eager",
    )


def published_config(fx: dict, vocab_size: int, bos_id: int, eos_id: int) -> dict:
    """config.json as the published checkpoints write it (Meta Llama 3.x, Mistral 7B v0.3,
    Qwen2.5): top-level rope_theta, rope_scaling (when scaled), torch_dtype."""
    c = fx["config"]
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    out = {
        "architectures": [arch[fx["model_type"]]],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": COMMON["hidden_act"],
        "hidden_size": COMMON["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": COMMON["intermediate_size"],
        "max_position_embeddings": COMMON["max_position_embeddings"],
        "model_type": fx["model_type"],
        "num_attention_heads": COMMON["num_attention_heads"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": c["num_key_value_heads"],
        "rms_norm_eps": COMMON["rms_norm_eps"],
        "rope_theta": fx["rope_theta"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "torch_dtype": fx["dtype"],
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if fx["rope_scaling"] is not None:
        out["rope_scaling"] = fx["rope_scaling"]
    if fx["model_type"] == "llama":
        out.update(
            attention_bias=c["attention_bias"],
            head_dim=c["head_dim"],
            mlp_bias=c["mlp_bias"],
            pretraining_tp=1,
        )
    elif fx["model_type"] == "mistral":
        out["sliding_window"] = c["sliding_window"]
    elif fx["model_type"] == "qwen2":
        out.update(
            max_window_layers=c["max_window_layers"],
            sliding_window=c["sliding_window"],
            use_sliding_window=c["use_sliding_window"],
        )
    return dict(sorted(out.items()))


def check_config(model, fx: dict) -> None:
    """The knobs this fixture is about really are what transformers built."""
    attn = model.model.layers[0].self_attn
    c = fx["config"]
    want_head_dim = c.get("head_dim", COMMON["hidden_size"] // COMMON["num_attention_heads"])
    assert attn.head_dim == want_head_dim, (attn.head_dim, want_head_dim)
    assert attn.num_key_value_groups == COMMON["num_attention_heads"] // c["num_key_value_heads"]
    assert (attn.q_proj.bias is not None) == (fx["model_type"] == "qwen2" or c.get("attention_bias", False))
    assert (attn.o_proj.bias is not None) == c.get("attention_bias", False)
    assert (model.model.layers[0].mlp.gate_proj.bias is not None) == c.get("mlp_bias", False)
    if fx["model_type"] == "qwen2":
        assert model.config.sliding_window is None and set(model.config.layer_types) == {"full_attention"}
    if fx["model_type"] == "mistral":
        assert model.config.sliding_window is None


def build_model(fx, cfg, seed: int):
    """mf.build_model, except that tied fixtures get embeddings with std 1/sqrt(hidden) instead
    of 1: with lm_head = embed_tokens and std 1 the logits are O(sqrt(hidden)) and dominated by
    the input token's own embedding (greedy repeats the last token)."""
    if not cfg.tie_word_embeddings:
        return mf.build_model(fx, cfg, seed)
    reinit = mf.reinit_

    def reinit_tied(model, seed):
        reinit(model, seed)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(cfg.hidden_size**-0.5)

    mf.reinit_ = reinit_tied
    try:
        return mf.build_model(fx, cfg, seed)
    finally:
        mf.reinit_ = reinit


def make_fixture(fx, tok, out_root: Path, tokenizer_json: str, tokenizer_config: dict) -> dict:
    vocab = tok.get_vocab_size(with_added_tokens=True)
    bos_id, eos_id = tok.token_to_id(mf.BOS), tok.token_to_id(mf.EOS)
    cfg = hf_config(fx, vocab, bos_id, eos_id)
    token_ids = [bos_id] + tok.encode(mf.REFERENCE_SENTENCE).ids
    prompt_ids = tok.encode(mf.PROMPT).ids
    bp = [bos_id] + prompt_ids

    for seed in range(fx["seed_base"], fx["seed_base"] + mf.MAX_SEED_TRIES):
        model, state = build_model(fx, cfg, seed)
        logits = mf.forward_logits(model, token_ids)
        greedy_ids, m_greedy = mf.greedy(model, bp, mf.GREEDY_NEW_TOKENS)
        # Also reject degenerate generations (a tied model tends to repeat one token forever,
        # which would not show a decode that ignores its context).
        distinct = len(set(greedy_ids))
        ok = m_greedy >= mf.MARGIN and distinct >= MIN_DISTINCT_GREEDY
        print(f"  {fx['name']}: seed {seed}: greedy margin {m_greedy:.3g}, {distinct} distinct greedy tokens"
              f"{'' if ok else '  -> rejected'}", file=sys.stderr)
        if ok:
            break
    else:
        raise SystemExit(f"{fx['name']}: no seed in {mf.MAX_SEED_TRIES} tries passes the margin check")
    check_config(model, fx)

    hf_g = mf.hf_generate(model, bp, mf.GREEDY_NEW_TOKENS)
    assert hf_g == greedy_ids, (hf_g, greedy_ids)
    dec = decode_logits(model, token_ids)
    dec_diff = float((dec - logits).abs().max())
    assert dec_diff < 1e-5, dec_diff  # static rope: the cached path matches the full forward
    ppl = perplexity_entry(model, tok, bos_id)
    print(f"  {fx['name']}: decode vs prefill max|diff| {dec_diff:.3g}; perplexity {ppl['ppl']:.6g} "
          f"over {ppl['tokens_evaluated']} tokens", file=sys.stderr)

    if fx["config_style"] == "published":
        config_json = published_config(fx, vocab, bos_id, eos_id)
    else:
        config_json = mf.transformers_config_json(model)
        config_json["dtype"] = fx["dtype"]
    expected = {
        "model_type": fx["model_type"],
        "description": fx["description"],
        "seed": seed,
        "generator": f"scripts/make_llama_fixtures.py (torch {torch.__version__}, "
                     f"transformers {transformers.__version__})",
        "token_ids": token_ids,
        "text": mf.REFERENCE_SENTENCE,
        "prompt": mf.PROMPT,
        "prompt_ids": prompt_ids,
        "greedy_ids": greedy_ids,
        "greedy_stops_at_eos": False,
        "min_routing_margin": None,
        "min_greedy_margin": m_greedy,
        "perplexity": ppl,
        "decode_logits": round_rows(dec),
        "logits": logits.tolist(),
    }
    files = mf.FixtureFiles(config_json, state, tokenizer_json, tokenizer_config, expected)
    size, diff = mf.write_fixture(out_root, fx, files, (token_ids, logits, greedy_ids, bp))
    return {"name": fx["name"], "seed": seed, "bytes": size, "reload_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(mf.REPO_ROOT / "tests" / "fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names to (re)generate")
    args = ap.parse_args()

    tok = mf.build_tokenizer()
    tokenizer_json = tok.to_str(pretty=True) + "\n"
    tokenizer_config = {
        "bos_token": mf.BOS,
        "eos_token": mf.EOS,
        "add_bos_token": True,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": COMMON["max_position_embeddings"],
    }
    names = [f["name"] for f in FIXTURES]
    wanted = set(args.only or names + [f["name"] for f in mf.FIXTURES])
    unknown = wanted - set(names) - {f["name"] for f in mf.FIXTURES}
    if unknown:
        raise SystemExit(f"unknown fixture(s): {sorted(unknown)}")
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    results = [make_fixture(fx, tok, out_root, tokenizer_json, tokenizer_config)
               for fx in FIXTURES if fx["name"] in wanted]
    for r in results:
        print(f"{r['name']}: seed {r['seed']}, {r['bytes']} bytes, reload max|diff| {r['reload_diff']:.3g}")


if __name__ == "__main__":
    main()
