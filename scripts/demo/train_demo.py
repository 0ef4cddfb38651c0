#!/usr/bin/env python3
"""Train the two small demo models shipped under models/: an MLA model (DeepSeek-V2 architecture,
models/demo-mla/) and its MHA twin (Llama architecture, models/demo-mha/), on the same
public-domain English corpus, tokenizer, data order, optimizer, schedule, steps and seed.

Usage (through the wrapper, which creates/reuses the pinned venv of scripts/fixtures/make_fixtures.sh):

    scripts/demo/train_demo.sh                     # corpus -> tokenizer -> train both -> write models/
    scripts/demo/train_demo.sh --only mla          # (re)train one model (the tokenizer is rebuilt
                                              #  deterministically, so the other stays valid)
    scripts/demo/train_demo.sh --bench 20          # time 20 steps of each model, write nothing
    scripts/demo/train_demo.sh --steps 200 --out /tmp/demo   # a quick smoke run elsewhere
    scripts/demo/train_demo.sh --references-only   # rewrite models/demo-*/reference.json only

Corpus: Jane Austen's six completed novels (public-domain texts, 1811-1818), taken from the
Debian package r-cran-janeaustenr (CRAN package janeaustenr by Julia Silge, MIT licence). The
script fetches the .deb with `apt-get download` (no installation, so no R is needed) into a cache
folder ($MLA_DEMO_CACHE, default $HOME/.cache/mla-rt/demo-corpus), unpacks it with `dpkg-deb -x`
and reads the texts out of R's lazy-load database (data/Rdata.rdb/.rdx) with the small R
unserializer in scripts/demo/demo_corpus.py. Only the novels' text is used: title pages, chapter/volume headings and the
modern editorial note after Northanger Abbey are dropped, and `_italic_` markers are removed.

Documents are paragraphs. The last 5% of each novel's paragraphs are the validation split; the
rest is the training split (the tokenizer is trained on it only). Each paragraph is encoded as
<|bos|> text <|eos|>; the streams are concatenated; training windows of CONTEXT tokens start at a
paragraph's <|bos|> (so position 0 is always BOS, as in `mla generate`), drawn with a seeded
generator: both models see exactly the same batches.

Everything is deterministic (fixed seeds, one CPU thread, torch deterministic algorithms). Run it
with one core: OMP_NUM_THREADS=1 (scripts/fixtures/cpu_env.py sets it if unset). The settings are in
scripts/demo/demo_settings.py; what writes a trained model's folder is in scripts/demo/demo_release.py.
"""

import os

import sys  # noqa: I001
from pathlib import Path as _Path

# cpu_env and expert_layout are shared with the fixture scripts.
sys.path.insert(0, str(_Path(__file__).resolve().parents[1] / "fixtures"))
import cpu_env  # noqa: E402,F401  (one thread, no hub: before torch and tokenizers)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from demo_corpus import load_corpus, log, split_books  # noqa: E402
from demo_release import (  # noqa: E402
    eval_loss,
    float32_samples,
    write_model,
    write_reference,
)
from demo_settings import (  # noqa: E402
    AUX_LOSS_ALPHA,
    BATCH,
    BETAS,
    BOS,
    CONTEXT,
    EOS,
    EVAL_EVERY,
    EXPERTS,
    EXPERTS_PER_TOK,
    FIRST_K_DENSE,
    GRAD_CLIP,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    MAX_POS,
    MHA_HEAD_DIM,
    MIN_LR_RATIO,
    MLA_SHAPE,
    MOE_INTERMEDIATE,
    PEAK_LR,
    RMS_EPS,
    ROPE_THETA,
    SEED,
    SHARED_EXPERTS,
    STEPS,
    VOCAB_SIZE,
    WARMUP,
    WEIGHT_DECAY,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Tokenizer and token streams
# --------------------------------------------------------------------------------------------


def build_tokenizer(train_paras) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_paras, trainer=trainer)
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    return tok


def encode_stream(tok, paras):
    ids = []
    for enc in tok.encode_batch(paras):
        ids += [0] + enc.ids + [1]
    return torch.tensor(ids, dtype=torch.long)


def batch_starts(stream: torch.Tensor, steps: int) -> torch.Tensor:
    """[steps, BATCH] window starts: positions of <|bos|> with a full window after them."""
    bos = torch.nonzero(stream[: len(stream) - CONTEXT] == 0).flatten()
    g = torch.Generator().manual_seed(SEED)
    return bos[torch.randint(len(bos), (steps, BATCH), generator=g)]


def val_windows(stream: torch.Tensor):
    return [stream[i:i + CONTEXT] for i in range(0, len(stream) - 1, CONTEXT) if len(stream) - i >= 2]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def rope_parameters():
    return {"rope_type": "default", "rope_theta": ROPE_THETA}


def mla_config(attn="sdpa"):
    return DeepseekV2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,  # must equal num_attention_heads (MLA has no KV groups)
        intermediate_size=INTERMEDIATE,
        moe_intermediate_size=MOE_INTERMEDIATE,
        n_routed_experts=EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOK,
        n_shared_experts=SHARED_EXPERTS,
        first_k_dense_replace=FIRST_K_DENSE,
        topk_method="greedy",
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=RMS_EPS,
        hidden_act="silu",
        attention_bias=False,
        tie_word_embeddings=False,
        rope_parameters=rope_parameters(),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        attn_implementation=attn,
        experts_implementation="eager",
        **MLA_SHAPE,
    )


def mha_config(attn="sdpa"):
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=MHA_HEAD_DIM,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POS,
        rms_norm_eps=RMS_EPS,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        rope_parameters=rope_parameters(),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        attn_implementation=attn,
    )


class RouterAux:
    """Switch-Transformer load-balancing loss over the MLA model's routers (forward hooks):
    E * sum_e f_e * P_e, f_e = fraction of token slots routed to e, P_e = mean router prob.
    Also accumulates the expert loads for the model card."""

    def __init__(self, model):
        self.terms, self.loads = [], {}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules()
                        if n.endswith("mlp.gate") and hasattr(m, "top_k")]

    def _hook(self, name):
        def fn(mod, inputs, output):
            logits, _, idx = output
            probs = logits.softmax(-1)
            counts = torch.bincount(idx.flatten(), minlength=mod.num_experts).to(probs.dtype)
            f = counts / counts.sum()
            self.terms.append(mod.num_experts * (f * probs.mean(0)).sum())
            self.loads[name] = self.loads.get(name, 0) + counts.detach()
        return fn

    def pop(self):
        t, self.terms = self.terms, []
        return torch.stack(t).sum() if t else torch.zeros(())


def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    prog = (step - WARMUP) / max(1, steps - WARMUP)
    return PEAK_LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * prog)))


def make_optimizer(model):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR, betas=BETAS, eps=1e-8,
    )


def train(kind: str, train_stream, val_wins, steps: int, bench: int = 0):
    torch.manual_seed(SEED)
    model = DeepseekV2ForCausalLM(mla_config()) if kind == "mla" else LlamaForCausalLM(mha_config())
    model.train()
    aux = RouterAux(model) if kind == "mla" else None
    opt = make_optimizer(model)
    starts = batch_starts(train_stream, steps)
    offs = torch.arange(CONTEXT)
    hist, t0, run_loss, run_n = [], time.time(), 0.0, 0
    n_steps = bench or steps
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        x = train_stream[starts[step][:, None] + offs]
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        total = loss + AUX_LOSS_ALPHA * aux.pop() if aux else loss
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run_loss += float(loss.detach())
        run_n += 1
        if bench:
            if step == 1:
                t1 = time.time()
            continue
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            vl = eval_loss(model, val_wins)
            el = time.time() - t0
            hist.append({"step": step + 1, "train_loss": run_loss / run_n, "val_loss": vl, "elapsed_s": el})
            log(f"  [{kind}] step {step + 1}/{steps}  lr {lr_at(step, steps):.2e}  train {run_loss / run_n:.4f}"
                f"  val {vl:.4f} (ppl {math.exp(vl):.1f})  {el:.0f}s")
            run_loss, run_n = 0.0, 0
    if bench:
        dt = (time.time() - t1) / (n_steps - 2)
        log(f"  [{kind}] {dt:.3f} s/step ({BATCH * CONTEXT / dt:.0f} tokens/s); {steps} steps would take "
            f"{dt * steps / 60:.1f} min")
        return None
    loads = None
    if aux:
        loads = {k: (v / v.sum()).tolist() for k, v in sorted(aux.loads.items())}
        for h in aux.handles:
            h.remove()
    return model, {"history": hist, "train_seconds": time.time() - t0, "expert_load": loads}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO_ROOT / "models"))
    ap.add_argument("--cache", default=os.environ.get("MLA_DEMO_CACHE",
                                                      str(Path.home() / ".cache/mla-rt/demo-corpus")))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--only", choices=["mla", "mha"], nargs="*")
    ap.add_argument("--bench", type=int, default=0, help="time this many steps per model and exit")
    ap.add_argument("--references-only", action="store_true",
                    help="rewrite reference.json of the models already in --out (no training)")
    ap.add_argument("--write-validation", metavar="FILE",
                    help="write the validation split as plain text (paragraphs separated by blank "
                         "lines; the README's `mla perplexity` figures use it) and exit")
    args = ap.parse_args()

    books, corpus = load_corpus(Path(args.cache))
    train_paras, val_paras = split_books(books)
    if args.write_validation:
        Path(args.write_validation).write_text("\n\n".join(val_paras))
        log(f"wrote {len(val_paras)} validation paragraphs to {args.write_validation}")
        return
    log(f"corpus: {corpus['deb']} ({corpus['debian_version']}), {corpus['corpus_chars']:,} chars, "
        f"{corpus['paragraphs']} paragraphs ({len(train_paras)} train / {len(val_paras)} val), "
        f"sha256 {corpus['corpus_sha256']}")
    tok = build_tokenizer(train_paras)
    assert build_tokenizer(train_paras).to_str() == tok.to_str(), "tokenizer training not deterministic"
    train_stream, val_stream = encode_stream(tok, train_paras), encode_stream(tok, val_paras)
    val_wins = val_windows(val_stream)
    corpus["train_tokens"], corpus["val_tokens"] = len(train_stream), len(val_stream)
    log(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_stream):,} tokens, "
        f"val {len(val_stream):,} tokens ({len(val_wins)} windows)")

    kinds = args.only or ["mla", "mha"]
    if args.bench:
        for kind in kinds:
            train(kind, train_stream, val_wins, args.steps, bench=args.bench)
        return

    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    if args.references_only:
        ref_text = None
        for kind in ["mla", "mha"]:  # the MLA model picks the sentence, the twin reuses it
            if kind not in kinds:
                continue
            folder = out_root / f"demo-{kind}"
            if ref_text is None and kind == "mha" and (out_root / "demo-mla" / "reference.json").exists():
                ref_text = json.loads((out_root / "demo-mla" / "reference.json").read_text())["text"]
            ref_text, greedy = write_reference(folder, kind, tok, val_paras, ref_text, float32_samples(folder, tok))
            log(f"{folder}/reference.json: {ref_text!r}")
            for g in greedy:
                log(f"  float64 greedy {g['prompt']!r}: top2 margin {g['min_top2_logit_margin']:.3g}, routing "
                    f"margin {g['min_routing_margin']}, same as float32 generate: {g['same_as_float32_generate']}")
        return
    results = []
    ref_text = None
    if "mla" not in kinds:  # reuse the reference sentence chosen by the MLA model
        ref_file = out_root / "demo-mla" / "reference.json"
        if ref_file.exists():
            ref_text = json.loads(ref_file.read_text())["text"]
    for kind in kinds:
        log(f"training {kind}: {args.steps} steps")
        model, stats = train(kind, train_stream, val_wins, args.steps)
        r = write_model(kind, model, tok, corpus, stats, args.steps, val_wins, val_paras, out_root, ref_text)
        ref_text = r["ref_text"]
        results.append(r)
        log(f"{kind}: {r['params']['total']:,} params, {r['safetensors_bytes']:,} bytes, "
            f"{r['train_seconds'] / 60:.1f} min, val loss {r['val_loss']:.4f} (ppl {r['val_ppl']:.2f})")
        for s in r["samples"]:
            log(f"  {s['prompt']!r} -> {s['text']!r}")
        for g in r["greedy_check"]:
            log(f"  float64 greedy {g['prompt']!r}: top2 margin {g['min_top2_logit_margin']:.3g}, routing margin "
                f"{g['min_routing_margin']}, same as float32 generate: {g['same_as_float32_generate']}")
    summary = [{k: r[k] for k in ("kind", "params", "safetensors_bytes", "val_loss", "val_ppl", "steps",
                                  "train_tokens", "train_seconds", "expert_load")} | {"samples": [s["text"] for s in r["samples"]]}
               for r in results]
    print(json.dumps({"corpus": {k: v for k, v in corpus.items() if k != "data"}, "models": summary}, indent=2))


if __name__ == "__main__":
    main()
