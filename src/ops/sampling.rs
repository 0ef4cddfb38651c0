//! Row reductions that sampling needs, shared by the backends (which compute them on their
//! device) and the sampler (which draws from them).

/// Sum of `exp((x − max) / temperature)` over a row, in f64: the total weight
/// `engine::sampler::Sampler::sample_head` needs (the devices compute the same per element).
pub fn softmax_total(row: &[f32], temperature: f32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter()
        .map(|&l| (((l - max) / temperature) as f64).exp())
        .sum()
}

/// The `k` largest `(id, logit)` of a row (all of them for `k` = 0), largest first, ties by lower
/// id.
pub fn sorted_candidates(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // The order is total (ids break ties), so selecting the k best before sorting them gives
    // the same list as sorting the whole row, without sorting a whole vocabulary.
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_by(order);
    candidates
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}
