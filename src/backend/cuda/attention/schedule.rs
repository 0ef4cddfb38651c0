//! The split-KV schedule of the tensor-core attention kernels (pure host code, tested on any
//! machine): which query rows each CTA serves over which cached tokens, and the groups of
//! splits their combine merges. `WorkItem` and `RowGroup` mirror kernels/attention/params.cuh;
//! the nouns are defined in the module doc of `attention`.

use crate::backend::cuda::tuning;
use crate::backend::AttentionBatch;
use cudarc::driver::DeviceRepr;

/// Query rows per CTA and cached tokens per shared-memory tile (`ROWS`, `KV_TILE` in the kernel).
pub const ROWS: usize = 16;
pub const KV_TILE: usize = 32;
pub const NO_ROW: u32 = u32::MAX;
/// The group of the empty runs that fill a unit of several.
pub const NO_GROUP: u32 = u32::MAX;

/// One CTA's job: `rows` (each `token · heads + head`, or `NO_ROW`), all of sequence `seq` and
/// reading KV head `kv_head`, over the cached tokens `[kv_begin, kv_end)`, as one of the splits
/// of row group `group` (or `NO_GROUP`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkItem {
    pub seq: u32,
    pub kv_head: u32,
    pub kv_begin: u32,
    pub kv_end: u32,
    pub rows: [u32; ROWS],
    pub group: u32,
}

/// The splits of one row group: items `item_first + j·item_stride` for `j < items`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGroup {
    pub item_first: u32,
    pub items: u32,
    pub item_stride: u32,
    pub rows: [u32; ROWS],
}

impl RowGroup {
    /// Indices of this group's items.
    pub fn item_indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.items as usize).map(|j| (self.item_first + j as u32 * self.item_stride) as usize)
    }
}

// SAFETY: #[repr(C)] structs of u32 only, laid out as the kernel's `WorkItem` and `RowGroup`.
unsafe impl DeviceRepr for WorkItem {}
// SAFETY: as above.
unsafe impl DeviceRepr for RowGroup {}

/// Rows of one sequence and KV head that CTAs serve together, with the tokens any of them sees.
struct Unit {
    seq: usize,
    kv_head: usize,
    runs: Vec<[u32; ROWS]>,
    begin: usize,
    end: usize,
}

/// Groups the step's rows by (sequence, KV head) into runs of at most 16 — a token's heads
/// first, then the next token — and those into units of up to `runs_per_cta` runs, and cuts
/// each unit's visible tokens into even splits (multiples of `split_tokens`, a multiple of the
/// tile: without a window every split then starts at such a multiple), about `target_ctas`
/// CTAs in all: long sequences get many splits, short ones few, so every CTA has about the same
/// work. A split of a unit is `runs_per_cta` consecutive items (runs the unit lacks are items
/// of `NO_ROW` only), which one CTA serves together.
///
/// A decode step (one query token per sequence) gets a shape that depends on its sequences and
/// heads alone, not on their contexts, so that a CUDA graph captured over one step serves the
/// next: its units' splits number at most `target_ctas` + units (each unit's rounded share is at
/// most half a split over its exact share, or one where raised to one), and filler units (rows
/// `NO_ROW`, group `NO_GROUP`, the first token of sequence 0) make up the rest. See
/// [`decode_split_bound`] for the most splits one of its groups can have.
pub fn schedule(
    batch: &AttentionBatch,
    heads: usize,
    group: usize,
    window: usize,
    target_ctas: usize,
    runs_per_cta: usize,
    split_tokens: usize,
) -> (Vec<WorkItem>, Vec<RowGroup>) {
    let runs_per_cta = runs_per_cta.max(1);
    let mut units: Vec<Unit> = Vec::new();
    let mut token = 0;
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        for kv_head in 0..heads / group.max(1) {
            let pairs: Vec<(usize, u32)> = (0..seq.query_len)
                .flat_map(|i| {
                    (0..group).map(move |g| (i, ((token + i) * heads + kv_head * group + g) as u32))
                })
                .collect();
            for unit in pairs.chunks(ROWS * runs_per_cta) {
                let (first_tok, last_tok) = (unit[0].0, unit[unit.len() - 1].0);
                let begin = if window > 0 {
                    (first_pos + first_tok + 1).saturating_sub(window)
                } else {
                    0
                };
                let runs = unit
                    .chunks(ROWS)
                    .map(|run| {
                        let mut rows = [NO_ROW; ROWS];
                        for (r, &(_, pair)) in rows.iter_mut().zip(run) {
                            *r = pair;
                        }
                        rows
                    })
                    .collect();
                units.push(Unit {
                    seq: s,
                    kv_head,
                    runs,
                    begin,
                    end: first_pos + last_tok + 1,
                });
            }
        }
        token += seq.query_len;
    }
    // Each unit gets its share of the CTAs in proportion to its tokens (rounded, at least one,
    // splits no shorter than tuning::MIN_SPLIT_TOKENS), and its tokens cut evenly: equal
    // sequences then make about target_ctas equal CTAs, one wave instead of a full wave and a
    // ragged one. Units too short for two splits take one and are left out of the shares, so
    // that the others' splits do not depend on them (a padded batch's filler sequences).
    let work: usize = units
        .iter()
        .map(|u| u.end - u.begin)
        .filter(|&len| len > tuning::MIN_SPLIT_TOKENS)
        .sum::<usize>()
        .max(1);
    let target = target_ctas.max(1);
    let unit_count = units.len();
    let mut items = Vec::new();
    let mut groups = Vec::new();
    for Unit {
        seq: s,
        kv_head,
        runs,
        begin,
        end,
    } in units
    {
        let len = end - begin;
        let splits =
            ((len * target + work / 2) / work).clamp(1, len.div_ceil(tuning::MIN_SPLIT_TOKENS));
        let chunk = len
            .div_ceil(splits)
            .next_multiple_of(split_tokens.next_multiple_of(KV_TILE));
        let first = items.len() as u32;
        let first_group = groups.len();
        for kv_begin in (begin..end).step_by(chunk) {
            for r in 0..runs_per_cta {
                items.push(WorkItem {
                    seq: s as u32,
                    kv_head: kv_head as u32,
                    kv_begin: kv_begin as u32,
                    kv_end: (kv_begin + chunk).min(end) as u32,
                    rows: runs.get(r).copied().unwrap_or([NO_ROW; ROWS]),
                    group: match r < runs.len() {
                        true => (first_group + r) as u32,
                        false => NO_GROUP,
                    },
                });
            }
        }
        let per_run = (items.len() as u32 - first) / runs_per_cta as u32;
        for (r, rows) in runs.iter().enumerate() {
            groups.push(RowGroup {
                item_first: first + r as u32,
                items: per_run,
                item_stride: runs_per_cta as u32,
                rows: *rows,
            });
        }
    }
    if is_decode(batch) {
        let filler = WorkItem {
            seq: 0,
            kv_head: 0,
            kv_begin: 0,
            kv_end: 1,
            rows: [NO_ROW; ROWS],
            group: NO_GROUP,
        };
        items.resize((target + unit_count) * runs_per_cta, filler);
    }
    (items, groups)
}

/// Whether every sequence of the step computes one token (its schedule's shape is fixed).
pub fn is_decode(batch: &AttentionBatch) -> bool {
    !batch.seqs.is_empty() && batch.seqs.iter().all(|s| s.query_len == 1)
}

/// The most splits a group of a decode step's schedule can have, whatever the contexts: a
/// unit's share of `target_ctas`, all of it where one context holds nearly every token (the
/// combine of a decode step with several splits somewhere is sized for this many).
pub fn decode_split_bound(target_ctas: usize) -> usize {
    target_ctas.max(1)
}

#[cfg(test)]
mod tests {
    use super::super::kernel_choice::{supports, values_in_keys};
    use super::super::layout::test_support::{
        assert_close, materialise, mha_case, mla_inputs, MhaCase, MlaInputs,
    };
    use super::super::layout::{absorbed_layout, materialised_layout, mha_layout, HostPlan};
    use super::super::layout::{AttentionLayout, Segment, Source};
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, MlaDims, SeqChunk};
    use crate::util::rng::SplitMix64;

    /// attention_wmma_bf16 and its combine step by step on host f32 buffers: the schedule, the
    /// rows' (token, head) and positions, the tile loop with its masks, base-2 softmax and the
    /// LSE merge.
    fn emulate<'a>(
        batch: &AttentionBatch,
        plan: &HostPlan,
        l: &AttentionLayout,
        target_ctas: usize,
        runs_per_cta: usize,
        buffer: impl Fn(Source) -> &'a [f32],
    ) -> Vec<f32> {
        let (items, groups) = schedule(
            batch,
            l.heads,
            l.group,
            l.window,
            target_ctas,
            runs_per_cta,
            KV_TILE,
        );
        let seg = |s: &Segment, row: usize, head: usize| -> Vec<f32> {
            let start = row * s.width + s.offset + head * s.head_stride;
            buffer(s.source)[start..start + s.len].to_vec()
        };
        let dv = l.v.len;
        let scale_log2 = l.scale * std::f32::consts::LOG2_E;
        let mut partial_o = vec![0.0f32; items.len() * ROWS * dv];
        let mut partial_lse = vec![f32::NEG_INFINITY; items.len() * ROWS];
        for (x, item) in items.iter().enumerate() {
            let table = &plan.block_tables[plan.table_start[item.seq as usize] as usize..];
            for (i, &pair) in item.rows.iter().enumerate().filter(|(_, &p)| p != NO_ROW) {
                let (t, h) = (pair as usize / l.heads, pair as usize % l.heads);
                let pos = plan.row_pos[t] as usize;
                let mut query = seg(&l.q1, t, h);
                query.extend(seg(&l.q2, t, h));
                let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
                let mut o = vec![0.0f32; dv];
                for tile in (item.kv_begin as usize..item.kv_end as usize).step_by(KV_TILE) {
                    let keys: Vec<usize> = (tile..tile + KV_TILE)
                        .filter(|&p| {
                            p < item.kv_end as usize
                                && p <= pos
                                && (l.window == 0 || p + l.window > pos)
                        })
                        .collect();
                    let kv: Vec<(Vec<f32>, Vec<f32>)> = keys
                        .iter()
                        .map(|&p| {
                            let slot = table[p / plan.block_size] as usize * plan.block_size
                                + p % plan.block_size;
                            let g = item.kv_head as usize;
                            let mut k = seg(&l.k1, slot, g);
                            k.extend(seg(&l.k2, slot, g));
                            (k, seg(&l.v, slot, g))
                        })
                        .collect();
                    let s: Vec<f32> = kv
                        .iter()
                        .map(|(k, _)| {
                            k.iter().zip(&query).map(|(a, b)| a * b).sum::<f32>() * scale_log2
                        })
                        .collect();
                    let m_new = s.iter().copied().fold(m, f32::max);
                    let (alpha, p): (f32, Vec<f32>) = if m_new == f32::NEG_INFINITY {
                        (1.0, vec![0.0; s.len()])
                    } else {
                        (
                            (m - m_new).exp2(),
                            s.iter().map(|v| (v - m_new).exp2()).collect(),
                        )
                    };
                    sum = sum * alpha + p.iter().sum::<f32>();
                    for (c, o) in o.iter_mut().enumerate() {
                        *o =
                            *o * alpha + p.iter().zip(&kv).map(|(p, (_, v))| p * v[c]).sum::<f32>();
                    }
                    m = m_new;
                }
                let at = x * ROWS + i;
                for c in 0..dv {
                    partial_o[at * dv + c] = if sum > 0.0 { o[c] / sum } else { 0.0 };
                }
                partial_lse[at] = if sum > 0.0 {
                    m + sum.log2()
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let mut out = vec![f32::NAN; plan.rows() * l.heads * dv];
        for g in &groups {
            for (i, &pair) in g.rows.iter().enumerate().filter(|(_, &p)| p != NO_ROW) {
                let at: Vec<usize> = g.item_indices().map(|x| x * ROWS + i).collect();
                let m = at
                    .iter()
                    .map(|&a| partial_lse[a])
                    .fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f32> = at
                    .iter()
                    .map(|&a| {
                        if partial_lse[a] == f32::NEG_INFINITY {
                            0.0
                        } else {
                            (partial_lse[a] - m).exp2()
                        }
                    })
                    .collect();
                let total: f32 = w.iter().sum();
                for c in 0..dv {
                    out[pair as usize * dv + c] = at
                        .iter()
                        .zip(&w)
                        .map(|(&a, w)| w * partial_o[a * dv + c])
                        .sum::<f32>()
                        / total;
                }
            }
        }
        out
    }

    const BLOCK: usize = 16;
    const SHAPES: &[(usize, usize)] = &[(1, 1), (150, 1), (40, 4), (300, 2), (70, 20)];

    #[test]
    fn the_tensor_core_algorithm_matches_the_cpu_backend_in_every_form() {
        let mut rng = SplitMix64(4);
        let dims = MlaDims {
            heads: 5,
            qk_nope: 16,
            qk_rope: 16,
            v_head: 16,
            kv_lora_rank: 32,
            softmax_scale: 0.3,
        };
        let MlaInputs {
            batch,
            cache,
            q,
            q_lat,
            kv_b,
        } = mla_inputs(&mut rng, SHAPES, BLOCK, &dims);
        let plan = HostPlan::paged(&batch, cache.num_blocks, BLOCK).unwrap();
        let layer0 = cache.all_rows(0);
        let l = absorbed_layout(&dims);
        assert!(supports(&l, 232_448) && values_in_keys(&l));
        let want = CpuBackend::EXACT
            .mla_attention_absorbed(&q_lat, &q, &cache, 0, &batch, &dims)
            .unwrap();
        for (target, runs) in [(1, 1), (10, 1), (264, 1), (10, 4), (264, 4)] {
            let got = emulate(&batch, &plan, &l, target, runs, |s| match s {
                Source::QLat => &q_lat.data,
                Source::Q => &q.data,
                _ => &layer0,
            });
            assert_close(
                &got,
                &want.data,
                2e-5,
                &format!("absorbed, target {target}, {runs} runs per CTA"),
            );
        }

        let (plan, slots) = HostPlan::contiguous(&batch, cache.num_blocks, BLOCK).unwrap();
        let (context, expanded) = materialise(&cache, &slots, &dims, &kv_b);
        let l = materialised_layout(&dims);
        assert!(supports(&l, 232_448) && !values_in_keys(&l));
        let want = CpuBackend::EXACT
            .mla_attention_materialised(&q, &cache, 0, &batch, &kv_b.clone().into(), &dims)
            .unwrap();
        let got = emulate(&batch, &plan, &l, 50, 1, |s| match s {
            Source::Context => &context,
            Source::Expanded => &expanded.data,
            _ => &q.data,
        });
        assert_close(&got, &want.data, 2e-5, "materialised");

        for case in [(4, 4, 16, None), (8, 2, 32, None), (6, 1, 16, Some(37))] {
            let MhaCase {
                dims,
                batch,
                cache,
                q,
                want,
            } = mha_case(&mut rng, case, SHAPES, BLOCK);
            let plan = HostPlan::paged(&batch, cache.num_blocks, BLOCK).unwrap();
            let layer0 = cache.all_rows(0);
            let l = mha_layout(&dims, q.shape[1], cache.width);
            assert!(supports(&l, 232_448));
            let got = emulate(&batch, &plan, &l, 40, 1, |s| match s {
                Source::Q => &q.data,
                _ => &layer0,
            });
            let what = format!("MHA {dims:?}");
            assert_close(&got, &want.data, 2e-5, &what);
        }
    }

    #[test]
    fn every_row_sees_its_visible_tokens_exactly_once() {
        let b = AttentionBatch {
            block_size: 64,
            seqs: [(1usize, 1usize), (5000, 1), (130, 4), (64, 64), (20_000, 2)]
                .iter()
                .map(|&(context_len, query_len)| SeqChunk {
                    block_table: (0..context_len.div_ceil(64) as u32).collect(),
                    context_len,
                    query_len,
                })
                .collect(),
        };
        let positions: Vec<usize> = b
            .seqs
            .iter()
            .flat_map(|s| s.context_len - s.query_len..s.context_len)
            .collect();
        for (heads, group, window) in [
            (1, 1, 0),
            (16, 16, 0),
            (20, 4, 0),
            (128, 128, 0),
            (8, 2, 100),
        ] {
            for (target, runs, split_tokens) in [
                (1, 1, 32),
                (7, 1, 32),
                (264, 1, 32),
                (10_000, 1, 32),
                (7, 4, 32),
                (264, 4, 32),
                (264, 4, 64),
                (10_000, 4, 64),
            ] {
                let (items, groups) =
                    schedule(&b, heads, group, window, target, runs, split_tokens);
                if window == 0 {
                    assert!(items
                        .iter()
                        .all(|i| i.kv_begin as usize % split_tokens == 0));
                }
                let mut covered = vec![0usize; positions.len() * heads];
                for (index, g) in groups.iter().enumerate() {
                    let mine: Vec<&WorkItem> = g.item_indices().map(|x| &items[x]).collect();
                    assert!(mine.iter().all(|it| it.group as usize == index));
                    let rows: Vec<u32> = g.rows.iter().copied().filter(|&r| r != NO_ROW).collect();
                    // One sequence and one KV head per group.
                    for &r in &rows {
                        assert_eq!(r as usize % heads / group, mine[0].kv_head as usize);
                        covered[r as usize] += 1;
                    }
                    let last = *rows.last().unwrap() as usize / heads;
                    let first = rows[0] as usize / heads;
                    let begin = if window > 0 {
                        (positions[first] + 1).saturating_sub(window)
                    } else {
                        0
                    };
                    // A unit of several runs reads from its first run's first token to its last
                    // run's last (the kernel masks the rest); one run reads exactly its own.
                    let mut next = mine[0].kv_begin;
                    assert!(next as usize <= begin && (runs > 1 || next as usize == begin));
                    for it in mine.iter().copied() {
                        assert_eq!(
                            (it.rows, it.seq, it.kv_head),
                            (g.rows, mine[0].seq, mine[0].kv_head)
                        );
                        assert_eq!(it.kv_begin, next);
                        assert!(it.kv_end > it.kv_begin);
                        next = it.kv_end;
                    }
                    assert!(
                        next as usize > positions[last]
                            && (runs > 1 || next as usize == positions[last] + 1),
                        "the last row sees its whole prefix"
                    );
                }
                // The items a CTA serves together share their sequence, KV head and tokens, and
                // their groups the number of splits (the in-kernel combine counts the first
                // group's); the runs that fill a unit are empty and in no group.
                assert_eq!(items.len() % runs, 0);
                for quad in items.chunks(runs) {
                    let key = |i: &WorkItem| (i.seq, i.kv_head, i.kv_begin, i.kv_end);
                    assert!(quad.iter().all(|i| key(i) == key(&quad[0])));
                    let splits = groups[quad[0].group as usize].items;
                    for it in quad {
                        match it.group {
                            NO_GROUP => assert_eq!(it.rows, [NO_ROW; ROWS]),
                            g => assert_eq!(groups[g as usize].items, splits),
                        }
                    }
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "heads {heads}/{group}, target {target}"
                );
            }
        }
    }

    #[test]
    fn a_decode_schedule_has_one_shape_whatever_the_contexts() {
        let decode = |lens: &[usize]| AttentionBatch {
            block_size: 64,
            seqs: lens
                .iter()
                .map(|&context_len| SeqChunk {
                    block_table: (0..context_len.div_ceil(64) as u32).collect(),
                    context_len,
                    query_len: 1,
                })
                .collect(),
        };
        let contexts: [&[usize]; 5] = [
            &[1, 1, 1],
            &[1, 100_000, 1],
            &[5000, 5000, 5000],
            &[130, 64, 20_000],
            &[100_000, 100_000, 100_000],
        ];
        for (heads, group) in [(16, 16), (128, 128), (20, 4)] {
            for (target, runs) in [(1, 1), (7, 1), (264, 1), (264, 4), (10_000, 4)] {
                let shapes: Vec<(usize, usize)> = contexts
                    .iter()
                    .map(|lens| {
                        let b = decode(lens);
                        let (items, groups) = schedule(&b, heads, group, 0, target, runs, 64);
                        for g in &groups {
                            assert!(g.items as usize <= decode_split_bound(target));
                            // Every real item reads tokens of its own sequence.
                            for i in g.item_indices() {
                                let it = &items[i];
                                assert!(it.kv_begin < it.kv_end);
                                assert!(it.kv_end as usize <= lens[it.seq as usize]);
                            }
                        }
                        // Filler units come last and are whole: no rows, no group, one token.
                        assert!(items.len() % runs == 0);
                        let units: Vec<&[WorkItem]> = items.chunks(runs).collect();
                        let real = units.iter().take_while(|u| u[0].group != NO_GROUP).count();
                        assert!(units[real..].iter().flat_map(|u| u.iter()).all(|i| {
                            i.rows == [NO_ROW; ROWS] && i.group == NO_GROUP && i.kv_end == 1
                        }));
                        (items.len(), groups.len())
                    })
                    .collect();
                assert!(
                    shapes.iter().all(|s| *s == shapes[0]),
                    "heads {heads}/{group}, target {target}, runs {runs}: {shapes:?}"
                );
            }
        }
    }
}
