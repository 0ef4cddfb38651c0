//! Tests of the layouts: the split count, and every form's layout, read by `emulate`, against the
//! CPU backend.

use super::test_support::{assert_close, materialise, mha_case, mla_inputs, MhaCase, MlaInputs};
use super::*;
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, SeqChunk};
use crate::util::rng::SplitMix64;

const BLOCK: usize = 4;
const SHAPES: &[(usize, usize)] = &[(1, 1), (9, 3), (4, 4), (13, 1), (6, 2)];

#[test]
fn splits_fill_the_gpu_without_going_below_the_minimum() {
    let batch = |n: usize, len: usize| AttentionBatch {
        block_size: 64,
        seqs: (0..n)
            .map(|_| SeqChunk {
                block_table: (0..len.div_ceil(64) as u32).collect(),
                context_len: len,
                query_len: 1,
            })
            .collect(),
    };
    let plan = |n, len| HostPlan::paged(&batch(n, len), 100_000, 64).unwrap();
    let split_len = |n, len| exact_splits(&plan(n, len), 16, 8448, 1 << 20).0;
    // One long sequence, 16 heads, 8448 warps wanted: cut into 64-token splits at most.
    assert_eq!(split_len(1, 32_768), 64);
    // A big batch fills the GPU by itself: no split.
    assert_eq!(split_len(1024, 4096), 4096);
    // Whole granules of 64 tokens: 1 to 64 tokens take one length, 65 two splits of it.
    assert_eq!(split_len(4, 5), 64);
    assert_eq!(split_len(4, 64), 64);
    assert_eq!(split_len(4, 65), 64);
    assert_eq!(split_len(1024, 65), 128);
    // In between: about the target (whole granules may leave a few splits short of it).
    let len = split_len(8, 16_384);
    let warps = 8 * 16 * 16_384usize.div_ceil(len);
    assert!(
        (8448 * 7 / 8..=2 * 8448).contains(&warps),
        "{len} → {warps}"
    );
    // The grid depends on rows and heads, not on the contexts, and covers every split.
    for n in [1, 4, 1024] {
        let grids: Vec<usize> = [1, 65, 4096, 32_768]
            .iter()
            .map(|&len| {
                let (split, grid) = exact_splits(&plan(n, len), 16, 8448, 1 << 20);
                assert!(len.div_ceil(split) <= grid, "{n} × {len}");
                grid
            })
            .collect();
        assert!(grids.iter().all(|&g| g == grids[0]), "{n}: {grids:?}");
    }
    // A small cache bounds the grid.
    assert_eq!(exact_splits(&plan(1, 5), 16, 8448, 256).1, 4);
}

#[test]
fn mha_layouts_read_what_the_cpu_backend_reads() {
    let mut rng = SplitMix64(1);
    for case in [(4, 4, 8, None), (6, 2, 8, None), (4, 1, 16, Some(3))] {
        let MhaCase {
            dims,
            batch,
            cache,
            q,
            want,
        } = mha_case(&mut rng, case, SHAPES, BLOCK);
        let width = cache.width;
        let layer0 = cache.all_rows(0);
        let plan = HostPlan::paged(&batch, cache.num_blocks, BLOCK).unwrap();
        for split in [1, 3, 64] {
            let got = emulate(
                &plan,
                &mha_layout(&dims, q.shape[1], width),
                split,
                |s| match s {
                    Source::Q => &q.data,
                    _ => &layer0,
                },
            );
            assert_close(&got, &want.data, 1e-5, &format!("{dims:?}, split {split}"));
        }
    }
}

#[test]
fn mla_layouts_read_what_the_cpu_backend_reads() {
    let mut rng = SplitMix64(2);
    let dims = MlaDims {
        heads: 3,
        qk_nope: 8,
        qk_rope: 4,
        v_head: 6,
        kv_lora_rank: 16,
        softmax_scale: 0.25,
    };
    let MlaInputs {
        batch,
        cache,
        q,
        q_lat,
        kv_b,
    } = mla_inputs(&mut rng, SHAPES, BLOCK, &dims);

    let want = CpuBackend::EXACT
        .mla_attention_absorbed(&q_lat, &q, &cache, 0, &batch, &dims)
        .unwrap();
    let plan = HostPlan::paged(&batch, cache.num_blocks, BLOCK).unwrap();
    let layer0 = cache.all_rows(0);
    let got = emulate(&plan, &absorbed_layout(&dims), 5, |s| match s {
        Source::QLat => &q_lat.data,
        Source::Q => &q.data,
        _ => &layer0,
    });
    assert_close(&got, &want.data, 1e-5, "absorbed");

    // Materialised: gather the context rows, expand them with kv_b as the GPU does.
    let want = CpuBackend::EXACT
        .mla_attention_materialised(&q, &cache, 0, &batch, &kv_b.clone().into(), &dims)
        .unwrap();
    let (plan, slots) = HostPlan::contiguous(&batch, cache.num_blocks, BLOCK).unwrap();
    let (context, expanded) = materialise(&cache, &slots, &dims, &kv_b);
    let got = emulate(&plan, &materialised_layout(&dims), 2, |s| match s {
        Source::Context => &context,
        Source::Expanded => &expanded.data,
        _ => &q.data,
    });
    assert_close(&got, &want.data, 1e-5, "materialised");
}
