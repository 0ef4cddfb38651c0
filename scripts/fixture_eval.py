"""Reference computations shared by scripts/make_fixtures.py and scripts/make_llama_fixtures.py:
token-by-token decode logits through transformers' KV cache, and sliding-window perplexity.

Imported by both generators (not run on its own); the caller has already configured torch
(float64 model, one thread, deterministic algorithms).
"""

import math

import torch
from transformers import DynamicCache

# Fixture folders written by scripts/make_llama_fixtures.py (lets make_fixtures.py accept them
# in --only, since make_fixtures.sh passes the same arguments to both generators).
LLAMA_FIXTURE_NAMES = ("llama-gqa", "llama-mha", "mistral", "qwen2")

# decode_logits are stored rounded to this many significant digits (the tests need 1e-4
# relative; full repr would double every expected.json).
DECODE_SIG_DIGITS = 7

# Plain English written for this script, not part of the tokenizer's training text; the same
# passage for every fixture. [BOS] + its encoding is 211 tokens with the fixture tokenizer.
PPL_TEXT = (
    "On the first warm day of the year, the whole town walks down to the river. The baker brings "
    "a basket of bread, the painter sets up her easel on the stone bridge, and the children run "
    "along the banks. An old farmer sits near the mill and tells anyone who will listen how the "
    "river flooded the fields when he was young. When the sun goes down, the families carry their "
    "baskets home and the town is quiet again."
)
PPL_CONTEXT = 32
PPL_STRIDE = 16
PPL_RECIPE = (
    "Hugging Face sliding-window perplexity, float64. ids = [BOS] + tokenizer.encode(text).ids "
    "(stored as 'ids', L = len(ids)). Windows: begin = 0, stride, 2*stride, ...; end = "
    "min(begin + context, L); stop after the window whose end == L. Each window is an independent "
    "forward of ids[begin:end] (positions 0..end-begin-1, fresh cache, no BOS inserted). With "
    "prev_end = end of the previous window (0 for the first), labels = ids[begin:end] with all but "
    "the last trg_len = end - prev_end set to -100, shifted by one as transformers does, so window "
    "scores exactly the targets t with max(prev_end, begin + 1) <= t < end: target ids[t] is "
    "scored with the window's logits row t - begin - 1 (context ids[begin:t]). Every t in 1..L-1 "
    "is scored exactly once (tokens_evaluated = L - 1; the first window scores t = 1..context-1, "
    "later windows t = prev_end..end-1). nll = (sum over scored t of -log_softmax(row)[ids[t]]) / "
    "tokens_evaluated, ppl = exp(nll). Each window's mean loss is weighted by its exact number of "
    "scored targets, not by 'valid labels - 1' as in the HF docs (which undercounts by one in every "
    "window after the first, whose first label is already masked)."
)


def round_sig(x: float, digits: int = DECODE_SIG_DIGITS) -> float:
    return float(f"{x:.{digits}g}")


def round_rows(t: torch.Tensor, digits: int = DECODE_SIG_DIGITS) -> list:
    return [[round_sig(v, digits) for v in row] for row in t.tolist()]


@torch.no_grad()
def decode_logits(model, ids) -> torch.Tensor:
    """Logits when ids are fed one token at a time through transformers' DynamicCache ([T, V],
    float64): row p is the output of the step that consumed ids[p] at position p."""
    cache = DynamicCache(config=model.config)
    rows = []
    for p, t in enumerate(ids):
        out = model(input_ids=torch.tensor([[t]], dtype=torch.long), cache=cache, use_cache=True)
        cache = out.cache
        assert cache.get_seq_length() == p + 1, (p, cache.get_seq_length())
        rows.append(out.logits[0, -1].to(torch.float64))
    return torch.stack(rows)


@torch.no_grad()
def perplexity(model, ids, context: int = PPL_CONTEXT, stride: int = PPL_STRIDE) -> dict:
    """Sliding-window perplexity of ids (PPL_RECIPE). Also checks each window against the loss
    transformers computes from the same labels (which it evaluates in float32)."""
    L = len(ids)
    token_nll = []
    scored = []
    prev_end = 0
    for begin in range(0, L, stride):
        end = min(begin + context, L)
        trg_len = end - prev_end
        window = ids[begin:end]
        labels = [-100] * (len(window) - trg_len) + window[len(window) - trg_len:]
        out = model(
            input_ids=torch.tensor([window], dtype=torch.long),
            labels=torch.tensor([labels], dtype=torch.long),
            use_cache=False,
        )
        logp = torch.log_softmax(out.logits[0].to(torch.float64), dim=-1)
        window_nll = []
        for i in range(1, len(window)):  # label i is predicted by logits row i - 1
            if labels[i] != -100:
                window_nll.append(-float(logp[i - 1, labels[i]]))
                scored.append(begin + i)
        hf_loss = float(out.loss)
        mine = math.fsum(window_nll) / len(window_nll)
        assert abs(mine - hf_loss) <= 1e-5 * max(1.0, abs(mine)), (begin, mine, hf_loss)
        token_nll += window_nll
        prev_end = end
        if end == L:
            break
    assert scored == list(range(1, L)), scored
    nll = math.fsum(token_nll) / len(token_nll)
    return {
        "text": None,  # filled in by the caller (keeps key order stable)
        "ids": list(ids),
        "context": context,
        "stride": stride,
        "tokens_evaluated": len(token_nll),
        "nll": nll,
        "ppl": math.exp(nll),
    }


def perplexity_entry(model, tok, bos_id: int, routing_margin=None) -> dict:
    """The expected.json "perplexity" object. routing_margin (MoE models): called after the
    windows ran, returns the smallest routing margin the windows saw (null for dense models)."""
    ids = [bos_id] + tok.encode(PPL_TEXT).ids
    r = perplexity(model, ids)
    r["text"] = PPL_TEXT
    r["min_routing_margin"] = routing_margin() if routing_margin else None
    r["recipe"] = PPL_RECIPE
    return r
