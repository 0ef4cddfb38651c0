"""The demo models' settings, shared by scripts/demo/train_demo.py (which trains with them) and
scripts/demo/demo_release.py (whose config.json and model card report them)."""

SEED = 20240611

BOS, EOS = "<|bos|>", "<|eos|>"
VOCAB_SIZE = 3072  # including the two special tokens
CONTEXT = 256
MAX_POS = 512

# Shared model shape.
HIDDEN = 256
LAYERS = 6
HEADS = 4
RMS_EPS = 1e-6
ROPE_THETA = 10000.0
MOE_INTERMEDIATE = 160
EXPERTS, EXPERTS_PER_TOK, SHARED_EXPERTS = 8, 2, 1
FIRST_K_DENSE = 2
# Dense MLP width: equal to the width a token activates in an MoE layer
# ((EXPERTS_PER_TOK + SHARED_EXPERTS) * MOE_INTERMEDIATE = 480), so the MHA twin (dense everywhere,
# one intermediate_size for all layers) matches the MLA model's per-token FFN compute in every layer.
INTERMEDIATE = (EXPERTS_PER_TOK + SHARED_EXPERTS) * MOE_INTERMEDIATE
MHA_HEAD_DIM = 32  # = MLA v_head_dim = qk_nope_head_dim: q/k/v/o widths 128 (MLA q/k 192, v 128)

MLA_SHAPE = dict(
    q_lora_rank=None,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
)

# Optimisation (identical for both models).
BATCH = 8
STEPS = 2200
PEAK_LR = 2e-3
MIN_LR_RATIO = 0.1
WARMUP = 100
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
AUX_LOSS_ALPHA = 0.01  # Switch-style load-balancing loss on the MLA model's routers
EVAL_EVERY = 300

REF_POSITIONS = 8
REF_TOKENS = (36, 44)  # length range (without BOS) of the reference sentence
ROUTING_MARGIN = 1e-3  # router-logit gap at the top-k boundary
SAMPLE_PROMPTS = ["The", "Once upon a time"]
SAMPLE_TOKENS = 40
