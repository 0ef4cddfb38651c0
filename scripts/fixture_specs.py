"""The DeepSeek fixture definitions of scripts/make_fixtures.py: shared tiny dimensions and, per
fixture, the branches it covers (config, key style, tensor layout, dtype, sharding, seed base)."""

# --------------------------------------------------------------------------------------------
# Fixture definitions
# --------------------------------------------------------------------------------------------

COMMON = dict(
    hidden_size=48,
    num_attention_heads=4,
    # MLA has no separate KV heads; transformers uses num_attention_heads // num_key_value_heads
    # as a repeat count, so it must equal num_attention_heads (DeepseekV3Config defaults it to
    # 128, which breaks tiny models).
    num_key_value_heads=4,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    kv_lora_rank=24,
    intermediate_size=96,
    moe_intermediate_size=16,
    n_routed_experts=8,
    num_hidden_layers=3,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    attention_bias=False,
)

FIXTURES = [
    dict(
        name="v2-lite",
        model_type="deepseek_v2",
        description=(
            "DeepSeek-V2-Lite style: deepseek_v2, q_lora_rank null (q_proj), softmax routing, "
            "topk_method greedy, norm_topk_prob false, routed_scaling_factor 1.0, 2 shared experts, "
            "first_k_dense_replace 1 (layer 0 dense), YaRN rope (factor 4, mscale = mscale_all_dim "
            "= 0.707, so softmax scale x m^2 and attention_factor 1), interleaved rope pairs; "
            "published config style (rope_scaling with 'type', top-level rope_theta); published "
            "per-expert tensor layout; single model.safetensors, float32, untied lm_head."
        ),
        config=dict(
            q_lora_rank=None,
            num_experts_per_tok=2,
            n_shared_experts=2,
            first_k_dense_replace=1,
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            rope_theta=10000.0,
            rope_scaling={
                "type": "yarn",
                "factor": 4,
                "original_max_position_embeddings": 32,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 0.707,
                "mscale_all_dim": 0.707,
            },
            tie_word_embeddings=False,
        ),
        config_style="published",
        layout="per_expert",
        dtype="float32",
        shards=1,
        seed_base=1000,
    ),
    dict(
        name="v2-grouped",
        model_type="deepseek_v2",
        description=(
            "deepseek_v2 with q_lora_rank 32 (q_a_proj/q_a_layernorm/q_b_proj), softmax routing, "
            "topk_method group_limited_greedy (n_group 4, topk_group 2, group score = max, "
            "rejected groups zeroed), 3 experts per token, routed_scaling_factor 1.5, "
            "norm_topk_prob true in config BUT transformers' DeepseekV2 router ignores "
            "norm_topk_prob (weights = softmax score x 1.5, not renormalised), 1 shared expert, "
            "first_k_dense_replace 0 (every layer MoE), plain rope (theta 10000, no scaling); "
            "published config style; per-expert layout; sharded into 2 safetensors files + "
            "model.safetensors.index.json; weights stored bfloat16 (reference uses the "
            "bf16-rounded weights in float64)."
        ),
        config=dict(
            q_lora_rank=32,
            num_experts_per_tok=3,
            n_shared_experts=1,
            first_k_dense_replace=0,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=1.5,
            rope_theta=10000.0,
            rope_scaling=None,
            tie_word_embeddings=False,
        ),
        config_style="published",
        layout="per_expert",
        dtype="bfloat16",
        shards=2,
        seed_base=2000,
    ),
    dict(
        name="v3",
        model_type="deepseek_v3",
        description=(
            "DeepSeek-V3 style: deepseek_v3, q_lora_rank 32, sigmoid scoring, noaux_tc routing "
            "(e_score_correction_bias nonzero; n_group 4, topk_group 2, group score = sum of top-2 "
            "biased scores, experts outside kept groups excluded), 2 experts per token, "
            "norm_topk_prob true, routed_scaling_factor 2.5, 1 shared expert, "
            "first_k_dense_replace 1, rope_interleave true, YaRN (factor 4, mscale = "
            "mscale_all_dim = 1.0); transformers-5 config style (config.json exactly as "
            "transformers save_pretrained writes it: rope_parameters with rope_type and "
            "rope_theta inside); FUSED expert layout (mlp.experts.gate_up_proj [E, 2*I, H] gate "
            "rows first then up, mlp.experts.down_proj [E, H, I]); tie_word_embeddings true (no "
            "lm_head.weight in the file); single model.safetensors, float32."
        ),
        config=dict(
            q_lora_rank=32,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_interleave=True,
            rope_theta=10000.0,
            rope_scaling={
                "type": "yarn",
                "factor": 4,
                "original_max_position_embeddings": 32,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
            tie_word_embeddings=True,
        ),
        config_style="transformers",
        layout="fused",
        dtype="float32",
        shards=1,
        seed_base=3000,
    ),
    dict(
        name="v3-halfsplit",
        model_type="deepseek_v3",
        description=(
            "deepseek_v3 with rope_interleave false (rotate-half pairs (x[i], x[i+d/2])), "
            "q_lora_rank null, YaRN with mscale 1.0 and mscale_all_dim 0.8 (attention_factor = "
            "m(4,1.0)/m(4,0.8) != 1 on cos/sin, softmax scale x m(4,0.8)^2), noaux_tc with "
            "n_group 2, topk_group 1, 3 experts per token, norm_topk_prob false, "
            "routed_scaling_factor 2.5, 1 shared expert, first_k_dense_replace 1, rms_norm_eps 0.05 "
            "(the q/kv latent norms keep eps 1e-6); published "
            "config style; per-expert layout; single model.safetensors stored float16 "
            "(reference uses the f16-rounded weights in float64); untied lm_head."
        ),
        config=dict(
            # A large eps makes the latent norms (which transformers builds with the default
            # eps 1e-6, not rms_norm_eps) distinguishable from the layer norms.
            rms_norm_eps=0.05,
            q_lora_rank=None,
            num_experts_per_tok=3,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=2.5,
            rope_interleave=False,
            rope_theta=10000.0,
            rope_scaling={
                "type": "yarn",
                "factor": 4,
                "original_max_position_embeddings": 32,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
            },
            tie_word_embeddings=False,
        ),
        config_style="published",
        layout="per_expert",
        dtype="float16",
        shards=1,
        seed_base=4000,
    ),
]
