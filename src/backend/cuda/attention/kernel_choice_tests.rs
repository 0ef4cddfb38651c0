//! Which kernel serves which layout and where the 64-row kernels pay (kernel_choice.rs), on any
//! machine: the choices are host code, the shared-memory sizes come from build.rs.

use super::super::layout::{absorbed_layout, materialised_layout, mha_layout};
use super::*;
use crate::backend::{MhaDims, MlaDims};

const H100_SHARED: usize = 232_448;

fn deepseek(heads: usize) -> MlaDims {
    MlaDims::deepseek(heads, 0.07)
}

fn function(l: &AttentionLayout, max_shared: usize) -> Option<&'static str> {
    kernel_for(l, max_shared, false).map(|k| k.handle.name)
}

fn mha(head_dim: usize, kv_heads: usize) -> AttentionLayout {
    let dims = MhaDims {
        heads: 32,
        kv_heads,
        head_dim,
        softmax_scale: 0.1,
        sliding_window: None,
    };
    let width = 2 * kv_heads * head_dim;
    mha_layout(&dims, 32 * head_dim + width, width)
}

/// CTAs per SM that fit the shared memory of an SM of sm_80+ (228 KiB, 1 KiB of it reserved
/// per CTA).
fn fits_an_sm(k: &AttentionKernel) -> bool {
    k.ctas_per_sm * (k.shared_bytes + 1024) <= 228 * 1024
}

#[test]
fn the_decode_shapes_get_the_register_accumulator_kernel() {
    for heads in [1, 16, 63, 64, 128] {
        let absorbed = absorbed_layout(&deepseek(heads));
        let k = kernel_for(&absorbed, H100_SHARED, false).unwrap();
        let hopper = kernel_for(&absorbed, H100_SHARED, true).unwrap();
        if heads < 64 {
            assert_eq!(k.handle.name, "attention_mma_latent576_bf16");
            // Two stages of 32 latent rows (padded), the scores, P and the row state: 84.5 KiB.
            assert_eq!((k.shared_bytes, k.ctas_per_sm), (86_528, 2));
            assert_eq!(hopper, k);
        } else {
            // 64 heads of a token per CTA, one CTA per SM; wgmma on Hopper.
            assert_eq!(k.handle.name, "attention_mma_wide_latent576_bf16");
            assert_eq!(hopper.handle.name, "attention_wgmma_latent576_bf16");
            assert_eq!((k.runs_per_cta, k.ctas_per_sm), (4, 1));
            assert_eq!((hopper.runs_per_cta, hopper.ctas_per_sm), (4, 1));
            // The queries, two 64-token tiles and P (224 KiB) and the row state.
            assert_eq!(
                hopper.shared_bytes,
                (3 * 64 * 576 + 64 * 64) * 2 + 5 * 64 * 4
            );
            assert!(!hopper.persistent && !k.persistent);
        }
        assert_eq!((k.split_tokens(), hopper.split_tokens()), (32, 32));
        for k in [k, hopper] {
            assert!(fits_an_sm(&k), "{k:?}");
        }
        let materialised = materialised_layout(&deepseek(heads));
        assert_eq!(
            function(&materialised, H100_SHARED),
            Some("attention_mma_head192_bf16")
        );
    }
    assert_eq!(
        function(&mha(128, 8), H100_SHARED),
        Some("attention_mma_head128_bf16")
    );
    // Too little shared memory: no tensor-core kernel for the latent.
    assert_eq!(function(&absorbed_layout(&deepseek(16)), 48 * 1024), None);
}

#[test]
fn other_widths_get_the_wmma_kernel_with_its_shared_memory_placed_here() {
    for (l, dq, dv, values) in [(mha(64, 8), 64, 64, true), (mha(96, 4), 96, 96, true)] {
        let k = kernel_for(&l, H100_SHARED, false).unwrap();
        assert_eq!(k.handle.name, "attention_wmma_bf16");
        let ParamsKind::Wmma(plan) = k.params else {
            panic!("{k:?} takes WmmaParams");
        };
        // q, k and v tiles, two score tiles, P, O, then the fixed row state (build.rs).
        let v_tile = if values { 32 * dv * 2 } else { 0 };
        assert_eq!(plan.k as usize, 16 * dq * 2);
        assert_eq!(plan.v as usize, plan.k as usize + 32 * dq * 2);
        assert_eq!(plan.s as usize, plan.v as usize + v_tile);
        assert_eq!(
            plan.stats as usize,
            plan.s as usize + 4096 + 1024 + 16 * dv * 4
        );
        assert_eq!(k.shared_bytes, plan.stats as usize + 4 * 16 * 4);
        assert!([plan.k, plan.v, plan.s, plan.p, plan.o, plan.stats]
            .iter()
            .all(|offset| offset % 32 == 0));
    }
    // Query rows whose pairs of values are not 4-byte aligned: the WMMA kernel, which reads
    // them value by value.
    for odd in [1, 3] {
        let mut l = mha(128, 8);
        l.q1.head_stride = 128 + odd;
        assert_eq!(function(&l, H100_SHARED), Some("attention_wmma_bf16"));
        let mut l = materialised_layout(&deepseek(16));
        l.q2.offset += odd;
        assert_eq!(function(&l, H100_SHARED), Some("attention_wmma_bf16"));
    }
}

#[cfg(feature = "experimental-kernels")]
#[test]
fn experimental_kernels_serve_only_when_asked_for() {
    let choose =
        |l: &AttentionLayout, wide, narrow| kernel_choice(l, H100_SHARED, wide, narrow).unwrap();
    for heads in [1, 16, 63, 64, 128] {
        let absorbed = absorbed_layout(&deepseek(heads));
        let k = kernel_for(&absorbed, H100_SHARED, false).unwrap();
        let shallow = NarrowAttention::Shallow;
        let rs = choose(&absorbed, WideAttention::WgmmaRs, shallow);
        let deep = choose(&absorbed, WideAttention::Off, NarrowAttention::Deep);
        assert_eq!(deep.handle.name, "attention_mma_deep_latent576_bf16");
        // One CTA per SM, five 37 KiB stages of 32 latent rows (padded) and the scores.
        assert_eq!((deep.runs_per_cta, deep.ctas_per_sm), (1, 1));
        assert_eq!(
            deep.shared_bytes,
            5 * 32 * 584 * 2 + 4 * 16 * 40 * 4 + 16 * 40 * 2 + 256
        );
        // For every head count, 64 rows per CTA (those the heads lack are empty).
        let seesaw = choose(&absorbed, WideAttention::WgmmaSeesaw, shallow);
        assert_eq!(seesaw.handle.name, "attention_wgmma_seesaw_latent576_bf16");
        assert_eq!((seesaw.runs_per_cta, seesaw.ctas_per_sm), (4, 1));
        // Queries and two tiles (216 KiB) and 1,568 bytes of barriers and row state.
        assert_eq!(seesaw.shared_bytes, 3 * 64 * 576 * 2 + 32 + 6 * 64 * 4);
        // The same kernel but for how its tiles arrive: the cache rows' tensor map.
        let tma = choose(&absorbed, WideAttention::WgmmaSeesawTma, shallow);
        assert_eq!(
            (tma.handle.name, tma.params),
            ("attention_wgmma_seesaw_tma_latent576_bf16", ParamsKind::Tma)
        );
        assert_eq!(
            (tma.shared_bytes, tma.runs_per_cta),
            (seesaw.shared_bytes, 4)
        );
        assert_eq!(seesaw.params, ParamsKind::Attention);
        // Its splits start at a 64-token tile (a box's start); the others' at a 32-token one.
        assert_eq!((tma.split_tokens(), seesaw.split_tokens()), (64, 32));
        if heads < 64 {
            assert_eq!(rs, k);
        } else {
            let persistent = choose(&absorbed, WideAttention::WgmmaPersistent, shallow);
            assert_eq!(
                (persistent.handle.name, persistent.persistent),
                ("attention_wgmma_latent576_bf16", true)
            );
            assert_eq!(persistent.label(), "attention_wgmma_latent576 persistent");
            assert!(!rs.persistent);
            assert_eq!(rs.handle.name, "attention_wgmma_rs_latent576_bf16");
            assert_eq!((rs.runs_per_cta, rs.ctas_per_sm), (4, 1));
        }
        for k in [rs, deep, seesaw] {
            assert!(fits_an_sm(&k), "{k:?}");
        }
    }
    // Where the deep build's 194 KiB do not fit (sm_86: 99 KiB), the two-stage one serves.
    let fallback = kernel_choice(
        &absorbed_layout(&deepseek(16)),
        99 * 1024,
        WideAttention::Off,
        NarrowAttention::Deep,
    );
    assert_eq!(
        fallback.map(|k| k.handle.name),
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

/// Layouts over FP8 rows get the FP8 builds (the 64-row one only where 64-row kernels are
/// asked for, Hopper included: the wgmma kernels read bf16 only) or the exact kernel.
#[test]
fn fp8_rows_get_the_fp8_builds_or_none() {
    use crate::kv::cache_dtype::Fp8Layout;
    use crate::kv::fp8_layout::{MhaFp8Layout, MlaFp8Layout};
    let latent = Some(Fp8Layout::Mla(MlaFp8Layout {
        latent: 512,
        rope: 64,
    }));
    let name = |l: &AttentionLayout, wide| {
        kernel_choice(l, H100_SHARED, wide, NarrowAttention::Shallow).map(|k| k.handle.name)
    };
    let v2 = absorbed_layout(&deepseek(16)).with_cache_rows(latent);
    let v3 = absorbed_layout(&deepseek(128)).with_cache_rows(latent);
    for wide in [WideAttention::Off, WideAttention::Mma, WideAttention::Wgmma] {
        assert_eq!(name(&v2, wide), Some("attention_mma_fp8_latent576_bf16"));
    }
    assert_eq!(
        name(&v3, WideAttention::Off),
        Some("attention_mma_fp8_latent576_bf16")
    );
    for wide in [WideAttention::Mma, WideAttention::Wgmma] {
        assert_eq!(
            name(&v3, wide),
            Some("attention_mma_wide_fp8_latent576_bf16")
        );
    }
    let mha_fp8 = |d: usize| {
        let rows = Fp8Layout::Mha(MhaFp8Layout {
            kv_heads: 8,
            head_dim: d,
        });
        mha(d, 8).with_cache_rows(Some(rows))
    };
    assert_eq!(
        name(&mha_fp8(128), WideAttention::Off),
        Some("attention_mma_fp8_head128_bf16")
    );
    // Other head widths have no FP8 build: the exact kernel serves them.
    assert_eq!(name(&mha_fp8(64), WideAttention::Off), None);
    assert_eq!(name(&mha_fp8(132), WideAttention::Off), None);
    assert!(kernel_for(&v3, H100_SHARED, true).is_some_and(|k| k.params == ParamsKind::Fp8));
}
