//! Which kernel serves which layout and where the 64-row kernels pay (attention_kernels.rs),
//! on any machine: the choices are host code.

use super::super::layout::{absorbed_layout, materialised_layout, mha_layout};
use super::*;
use crate::backend::{MhaDims, MlaDims};

const H100_SHARED: usize = 232_448;

fn deepseek(heads: usize) -> MlaDims {
    MlaDims::deepseek(heads, 0.07)
}

fn function(l: &AttentionLayout, max_shared: usize) -> Option<&'static str> {
    kernel_for(l, max_shared, false).map(|k| k.function)
}

#[test]
fn the_decode_shapes_get_the_register_accumulator_kernel() {
    for heads in [1, 16, 63, 64, 128] {
        let absorbed = absorbed_layout(&deepseek(heads));
        let k = kernel_for(&absorbed, H100_SHARED, false).unwrap();
        let hopper = kernel_for(&absorbed, H100_SHARED, true).unwrap();
        let rs = kernel_choice(
            &absorbed,
            H100_SHARED,
            WideAttention::WgmmaRs,
            NarrowAttention::Shallow,
        )
        .unwrap();
        let deep = kernel_choice(
            &absorbed,
            H100_SHARED,
            WideAttention::Off,
            NarrowAttention::Deep,
        )
        .unwrap();
        assert_eq!(deep.function, "attention_mma_deep_latent576_bf16");
        // One CTA per SM, five 37 KiB stages of 32 latent rows (padded) and the scores.
        assert_eq!((deep.runs_per_cta, deep.ctas_per_sm), (1, 1));
        assert_eq!(
            deep.shared_bytes,
            5 * 32 * 584 * 2 + 4 * 16 * 40 * 4 + 16 * 40 * 2 + 256
        );
        let seesaw = kernel_choice(
            &absorbed,
            H100_SHARED,
            WideAttention::WgmmaSeesaw,
            NarrowAttention::Shallow,
        )
        .unwrap();
        // For every head count, 64 rows per CTA (those the heads lack are empty).
        assert_eq!(seesaw.function, "attention_wgmma_seesaw_latent576_bf16");
        assert_eq!((seesaw.runs_per_cta, seesaw.ctas_per_sm), (4, 1));
        let tma = kernel_choice(
            &absorbed,
            H100_SHARED,
            WideAttention::WgmmaSeesawTma,
            NarrowAttention::Shallow,
        )
        .unwrap();
        // The same kernel but for how its tiles arrive: the cache rows' tensor map.
        assert_eq!(
            (tma.function, tma.tensor_map),
            ("attention_wgmma_seesaw_tma_latent576_bf16", true)
        );
        assert_eq!(
            (tma.shared_bytes, tma.runs_per_cta),
            (seesaw.shared_bytes, 4)
        );
        assert!(!seesaw.tensor_map && !k.tensor_map && !hopper.tensor_map);
        // Its splits start at a 64-token tile (a box's start); the others' at a 32-token one.
        assert_eq!((tma.split_tokens(), seesaw.split_tokens()), (64, 32));
        if heads < 64 {
            assert_eq!(k.function, "attention_mma_latent576_bf16");
            assert_eq!(hopper, k);
            assert_eq!(rs, k);
        } else {
            let persistent = kernel_choice(
                &absorbed,
                H100_SHARED,
                WideAttention::WgmmaPersistent,
                NarrowAttention::Shallow,
            )
            .unwrap();
            assert_eq!(
                (persistent.function, persistent.persistent),
                ("attention_wgmma_latent576_bf16", true)
            );
            assert_eq!(persistent.label(), "attention_wgmma_latent576 persistent");
            assert!(!rs.persistent && !k.persistent && !hopper.persistent);
            assert_eq!(rs.function, "attention_wgmma_rs_latent576_bf16");
            // Queries and two tiles (216 KiB) and 1,568 bytes of barriers and row state.
            assert_eq!(seesaw.shared_bytes, 3 * 64 * 576 * 2 + 32 + 6 * 64 * 4);
            assert!(seesaw.shared_bytes + 1024 <= 228 * 1024);
            assert_eq!((rs.runs_per_cta, rs.ctas_per_sm), (4, 1));
            // 64 heads of a token per CTA, one CTA per SM; wgmma on Hopper.
            assert_eq!(k.function, "attention_mma_wide_latent576_bf16");
            assert_eq!(hopper.function, "attention_wgmma_latent576_bf16");
            assert_eq!((k.runs_per_cta, k.ctas_per_sm), (4, 1));
            assert_eq!((hopper.runs_per_cta, hopper.ctas_per_sm), (4, 1));
        }
        // CTAs per SM that fit the shared memory of an SM of sm_80+ (228 KiB, 1 KiB of it
        // reserved per CTA).
        for k in [k, hopper, rs, deep] {
            assert!(
                k.ctas_per_sm * (k.shared_bytes + 1024) <= 228 * 1024,
                "{k:?}"
            );
        }
        let materialised = materialised_layout(&deepseek(heads));
        assert_eq!(
            function(&materialised, H100_SHARED),
            Some("attention_mma_head192_bf16")
        );
    }
    let mha = |head_dim, kv_heads| {
        let dims = MhaDims {
            heads: 32,
            kv_heads,
            head_dim,
            softmax_scale: 0.1,
            sliding_window: None,
        };
        let width = 2 * kv_heads * head_dim;
        mha_layout(&dims, 32 * head_dim + width, width)
    };
    assert_eq!(
        function(&mha(128, 8), H100_SHARED),
        Some("attention_mma_head128_bf16")
    );
    // Other widths: the WMMA kernel; too little shared memory: neither for the latent.
    assert_eq!(
        function(&mha(64, 8), H100_SHARED),
        Some("attention_tc_bf16")
    );
    assert_eq!(
        function(&mha(96, 4), H100_SHARED),
        Some("attention_tc_bf16")
    );
    assert_eq!(function(&absorbed_layout(&deepseek(16)), 48 * 1024), None);
    // Query rows whose pairs of values are not 4-byte aligned: the WMMA kernel, which reads
    // them value by value.
    for odd in [1, 3] {
        let mut l = mha(128, 8);
        l.q1.head_stride = 128 + odd;
        assert_eq!(function(&l, H100_SHARED), Some("attention_tc_bf16"));
        let mut l = materialised_layout(&deepseek(16));
        l.q2.offset += odd;
        assert_eq!(function(&l, H100_SHARED), Some("attention_tc_bf16"));
    }
    // Where the deep build's 194 KiB do not fit (sm_86: 99 KiB), the two-stage one serves.
    let fallback = kernel_choice(
        &absorbed_layout(&deepseek(16)),
        99 * 1024,
        WideAttention::Off,
        NarrowAttention::Deep,
    );
    assert_eq!(
        fallback.map(|k| k.function),
        Some("attention_mma_latent576_bf16")
    );
}

#[test]
fn the_wide_kernel_only_where_contexts_are_long_and_plenty() {
    let batch = |seqs: usize, context: usize| AttentionBatch {
        block_size: 64,
        seqs: (0..seqs)
            .map(|_| crate::backend::SeqChunk {
                block_table: (0..context.div_ceil(64) as u32).collect(),
                context_len: context,
                query_len: 1,
            })
            .collect(),
    };
    let v3 = absorbed_layout(&deepseek(128));
    use WideAttention::{Mma, Off, Wgmma};
    // (sequences, context, elsewhere, on Hopper)
    for (seqs, context, mma, hopper) in [
        (128, 4096, Mma, Wgmma),
        (32, 16384, Mma, Wgmma),
        (32, 4096, Mma, Wgmma),
        (128, 1024, Off, Wgmma),
        (32, 1024, Off, Wgmma),
        (1, 16384, Off, Wgmma),
        (1, 4096, Off, Wgmma),
        (1, 1024, Off, Off),
        (1, 131_072, Mma, Wgmma),
    ] {
        for (on_hopper, want) in [(false, mma), (true, hopper)] {
            assert_eq!(
                wide_pays(&batch(seqs, context), &v3, 132, on_hopper),
                want,
                "{seqs} × {context}, Hopper: {on_hopper}"
            );
        }
    }
}
