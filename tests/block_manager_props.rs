//! Property tests of the block pool against a shadow model of what every cache slot holds:
//! no block leaked or freed twice, exact reference counts, copy-on-write before a shared write,
//! and prefix hits only for identical prefixes.

use mla_rt::kv::{BlockManager, SeqBlocks};
use proptest::prelude::*;

const BLOCK_SIZE: usize = 4;
const NUM_BLOCKS: usize = 12;

#[derive(Debug, Clone)]
enum Op {
    /// A new sequence with this prompt (tokens from a tiny alphabet, so prefixes repeat).
    Add(Vec<u32>),
    Append(usize, u32),
    Fork(usize),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(0u32..2, 1..18).prop_map(Op::Add),
        4 => (any::<usize>(), 0u32..2).prop_map(|(s, t)| Op::Append(s, t)),
        1 => any::<usize>().prop_map(Op::Fork),
        2 => any::<usize>().prop_map(Op::Free),
    ]
}

struct Seq {
    blocks: SeqBlocks,
    tokens: Vec<u32>,
}

/// What each slot of the cache holds, as the model would have written it.
struct Shadow {
    slots: Vec<Vec<Option<u32>>>,
}

impl Shadow {
    fn write(&mut self, seq: &Seq, from: usize) {
        for p in from..seq.tokens.len() {
            self.slots[seq.blocks.table[p / BLOCK_SIZE] as usize][p % BLOCK_SIZE] =
                Some(seq.tokens[p]);
        }
    }
}

fn check(m: &BlockManager, seqs: &[Seq], shadow: &Shadow) -> Result<(), TestCaseError> {
    m.check_invariants().map_err(TestCaseError::fail)?;
    let mut refs = [0u32; NUM_BLOCKS];
    for s in seqs {
        prop_assert_eq!(s.blocks.table.len(), s.tokens.len().div_ceil(BLOCK_SIZE));
        for &b in &s.blocks.table {
            refs[b as usize] += 1;
        }
        for (p, &t) in s.tokens.iter().enumerate() {
            let held = shadow.slots[s.blocks.table[p / BLOCK_SIZE] as usize][p % BLOCK_SIZE];
            prop_assert_eq!(
                held,
                Some(t),
                "position {} of {:?} reads another token",
                p,
                s.tokens
            );
        }
    }
    for (b, &r) in refs.iter().enumerate() {
        prop_assert_eq!(m.ref_count(b as u32), r, "reference count of block {}", b);
    }
    prop_assert_eq!(m.num_free(), refs.iter().filter(|&&r| r == 0).count());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn block_pool_stays_consistent(ops in prop::collection::vec(op(), 1..60), prefix_caching in any::<bool>()) {
        let mut m = BlockManager::new(NUM_BLOCKS, BLOCK_SIZE, prefix_caching);
        let mut seqs: Vec<Seq> = Vec::new();
        let mut shadow = Shadow { slots: vec![vec![None; BLOCK_SIZE]; NUM_BLOCKS] };
        for op in ops {
            match op {
                Op::Add(tokens) => {
                    let mut blocks = m.match_prefix(&tokens);
                    let hit = blocks.table.len() * BLOCK_SIZE;
                    prop_assert!(hit < tokens.len());
                    match m.reserve(&mut blocks, hit, tokens.len()) {
                        Ok(copies) => {
                            prop_assert!(copies.is_empty(), "hits are whole blocks: nothing to copy");
                            m.commit_full_blocks(&mut blocks, &tokens, tokens.len());
                            let seq = Seq { blocks, tokens };
                            shadow.write(&seq, hit);
                            seqs.push(seq);
                        }
                        Err(_) => m.free(&mut blocks),
                    }
                }
                Op::Append(i, token) if !seqs.is_empty() => {
                    let i = i % seqs.len();
                    let seq = &mut seqs[i];
                    let len = seq.tokens.len();
                    if let Ok(copies) = m.reserve(&mut seq.blocks, len, len + 1) {
                        for (from, to) in copies {
                            shadow.slots[to as usize] = shadow.slots[from as usize].clone();
                        }
                        seq.tokens.push(token);
                        let seq = &seqs[i];
                        shadow.write(seq, len);
                        let seq = &mut seqs[i];
                        m.commit_full_blocks(&mut seq.blocks, &seq.tokens, len + 1);
                    }
                }
                Op::Fork(i) if !seqs.is_empty() => {
                    let i = i % seqs.len();
                    let blocks = m.fork(&seqs[i].blocks);
                    let tokens = seqs[i].tokens.clone();
                    seqs.push(Seq { blocks, tokens });
                }
                Op::Free(i) if !seqs.is_empty() => {
                    let mut seq = seqs.swap_remove(i % seqs.len());
                    m.free(&mut seq.blocks);
                }
                _ => {}
            }
            check(&m, &seqs, &shadow)?;
        }
        for mut seq in seqs.drain(..) {
            m.free(&mut seq.blocks);
        }
        check(&m, &seqs, &shadow)?;
        prop_assert_eq!(m.num_free(), NUM_BLOCKS);
    }
}
