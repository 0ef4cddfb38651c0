use super::*;
use crate::error::Error;

#[test]
fn slots_follow_the_block_table() {
    let mut m = BlockManager::new(4, 4, false);
    let mut other = SeqBlocks::default();
    m.reserve(&mut other, 0, 1).unwrap(); // takes block 0
    let mut seq = SeqBlocks::default();
    m.reserve(&mut seq, 0, 6).unwrap();
    assert_eq!(seq.table, vec![1, 2]);
    let slots: Vec<u32> = (0..6).map(|p| slot(&seq.table, p, 4)).collect();
    assert_eq!(slots, vec![4, 5, 6, 7, 8, 9]);
    assert!(m.reserve(&mut seq, 6, 7).unwrap().is_empty());
    assert_eq!(m.num_free(), 1);
    m.check_invariants().unwrap();
}

#[test]
fn full_cache_is_an_error_and_allocates_nothing() {
    let mut m = BlockManager::new(2, 4, false);
    let mut seq = SeqBlocks::default();
    let err = m.reserve(&mut seq, 0, 9).unwrap_err();
    assert!(matches!(err, Error::CacheFull { needed: 3, free: 2 }));
    assert_eq!(m.num_free(), 2);
    assert!(seq.table.is_empty());
    m.reserve(&mut seq, 0, 8).unwrap();
    m.free(&mut seq);
    assert_eq!(m.num_free(), 2);
    m.check_invariants().unwrap();
}

#[test]
fn prefix_blocks_are_reused_and_the_last_token_is_always_computed() {
    let mut m = BlockManager::new(8, 4, true);
    let tokens: Vec<u32> = (0..10).collect();
    let mut a = m.match_prefix(&tokens);
    assert!(a.table.is_empty());
    m.reserve(&mut a, 0, 10).unwrap();
    m.commit_full_blocks(&mut a, &tokens, 10);
    // Same first 8 tokens: both full blocks hit.
    let b = m.match_prefix(&tokens);
    assert_eq!(b.table, a.table[..2]);
    assert_eq!(m.ref_count(a.table[0]), 2);
    // Exactly 8 tokens: the second block would cover the last token, so only one hits.
    let c = m.match_prefix(&tokens[..8]);
    assert_eq!(c.table, a.table[..1]);
    // A different first block: nothing.
    let mut other = tokens.clone();
    other[0] = 99;
    assert!(m.match_prefix(&other).table.is_empty());
    m.check_invariants().unwrap();
}

#[test]
fn freed_cached_blocks_survive_until_evicted_least_recent_first() {
    let mut m = BlockManager::new(3, 2, true);
    let tokens = [1, 2, 3, 4, 5];
    let mut a = SeqBlocks::default();
    m.reserve(&mut a, 0, 5).unwrap();
    m.commit_full_blocks(&mut a, &tokens, 5);
    let first = a.table.clone();
    m.free(&mut a);
    assert_eq!(m.num_free(), 3);
    // Still cached after the free.
    let mut b = m.match_prefix(&tokens);
    assert_eq!(b.table, first[..2]);
    m.free(&mut b);
    // Taking all three blocks evicts both cached prefixes.
    let mut c = SeqBlocks::default();
    m.reserve(&mut c, 0, 6).unwrap();
    assert_eq!(m.stats.evictions, 2);
    m.free(&mut c);
    assert!(m.match_prefix(&tokens).table.is_empty());
    m.check_invariants().unwrap();
}

#[test]
fn appending_to_a_shared_partial_block_copies_it_first() {
    let mut m = BlockManager::new(4, 4, false);
    let mut a = SeqBlocks::default();
    m.reserve(&mut a, 0, 6).unwrap();
    let mut b = m.fork(&a);
    assert_eq!(m.ref_count(a.table[1]), 2);
    let copies = m.reserve(&mut b, 6, 7).unwrap();
    assert_eq!(copies, vec![(a.table[1], b.table[1])]);
    assert_ne!(a.table[1], b.table[1]);
    assert_eq!(a.table[0], b.table[0]);
    // a is now the only user of its block: it writes in place.
    assert!(m.reserve(&mut a, 6, 7).unwrap().is_empty());
    m.check_invariants().unwrap();
}

/// The row parts the GPU kernels index by (kernels/fp8.cuh) read back every value the quantizer
/// wrote: codes times their group's scale, then the bf16 tail.
#[test]
fn fp8_row_parts_address_what_the_quantizer_wrote() {
    use cache_dtype::Fp8Layout;
    use fp8_layout::{MhaFp8Layout, MlaFp8Layout};
    let layouts = [
        Fp8Layout::Mla(MlaFp8Layout {
            latent: 200,
            rope: 8,
        }),
        Fp8Layout::Mla(MlaFp8Layout {
            latent: 512,
            rope: 64,
        }),
        Fp8Layout::Mha(MhaFp8Layout {
            kv_heads: 3,
            head_dim: 24,
        }),
    ];
    for layout in layouts {
        let width = layout.width();
        let values: Vec<f32> = (0..width)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * (1 + i / 60) as f32)
            .collect();
        let mut bytes = vec![0u8; layout.bytes_per_token()];
        layout.quantize(&values, &mut bytes);
        let mut want = vec![0.0f32; width];
        layout.dequantize(&bytes, &mut want);
        let p = layout.parts();
        assert_eq!(p.row_bytes, bytes.len());
        for (c, &w) in want.iter().enumerate() {
            let got = if c < p.codes {
                let at = p.scales_at + 4 * (c / p.group);
                let scale = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                crate::util::e4m3::e4m3_to_f32(bytes[c]) * scale
            } else {
                let at = p.tail_at + 2 * (c - p.codes);
                half::bf16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
            };
            assert_eq!(got, w, "{layout:?} value {c}");
        }
    }
}
