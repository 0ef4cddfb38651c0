//! MoE routing math: router logits of one token → chosen experts and their weights.
//!
//! Host-side and exact; the CPU backend routes with it and GPU routing kernels are tested against it.

use crate::config::{MoeConfig, ScoringFunc, TopkMethod};

/// One chosen expert of one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    pub expert: usize,
    pub weight: f32,
}

/// Chooses `num_experts_per_tok` experts for one token from its router logits.
/// `bias` is V3's `e_score_correction_bias` (it steers the choice, never the weights).
pub fn route(logits: &[f32], bias: Option<&[f32]>, moe: &MoeConfig) -> Vec<Route> {
    let e = logits.len();
    let scores: Vec<f32> = match moe.scoring_func {
        ScoringFunc::Softmax => softmax(logits),
        ScoringFunc::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
    };
    let group_size = e / moe.n_group.max(1);
    let chosen: Vec<usize> = match moe.topk_method {
        TopkMethod::Greedy => top_k(&scores, moe.num_experts_per_tok),
        // transformers zeroes the scores of dropped groups (softmax scores are positive, so a
        // zero is never chosen over a kept expert).
        TopkMethod::GroupLimitedGreedy => {
            let masked = keep_best_groups(&scores, group_size, moe.topk_group, 0.0, |g| {
                g.iter().copied().fold(f32::NEG_INFINITY, f32::max)
            });
            top_k(&masked, moe.num_experts_per_tok)
        }
        TopkMethod::NoauxTc => {
            let choice: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            let masked = keep_best_groups(
                &choice,
                group_size,
                moe.topk_group,
                f32::NEG_INFINITY,
                |g| top_k(g, 2.min(g.len())).iter().map(|&i| g[i]).sum(),
            );
            top_k(&masked, moe.num_experts_per_tok)
        }
    };
    let mut weights: Vec<f32> = chosen.iter().map(|&i| scores[i]).collect();
    // transformers' DeepSeek-V2 router never normalises (it ignores norm_topk_prob, which is
    // false in every published V2 checkpoint); V3 normalises when asked.
    if moe.topk_method == TopkMethod::NoauxTc && moe.norm_topk_prob {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    let scale = moe.routed_scaling_factor as f32;
    chosen
        .into_iter()
        .zip(weights)
        .map(|(expert, w)| Route {
            expert,
            weight: w * scale,
        })
        .collect()
}

/// `scores` with every expert outside the `keep` best groups (ranked by `group_score`)
/// replaced by `dropped`.
fn keep_best_groups(
    scores: &[f32],
    group_size: usize,
    keep: usize,
    dropped: f32,
    group_score: impl Fn(&[f32]) -> f32,
) -> Vec<f32> {
    let group_scores: Vec<f32> = scores.chunks(group_size).map(group_score).collect();
    let kept = top_k(&group_scores, keep);
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            if kept.contains(&(i / group_size)) {
                s
            } else {
                dropped
            }
        })
        .collect()
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|v| v / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(method: TopkMethod, scoring: ScoringFunc) -> MoeConfig {
        MoeConfig {
            n_routed_experts: 8,
            n_shared_experts: 1,
            num_experts_per_tok: 2,
            moe_intermediate_size: 4,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
            routed_scaling_factor: 1.0,
            topk_method: method,
            n_group: 4,
            topk_group: 2,
            norm_topk_prob: false,
            scoring_func: scoring,
        }
    }

    fn experts(routes: &[Route]) -> Vec<usize> {
        routes.iter().map(|r| r.expert).collect()
    }

    #[test]
    fn greedy_softmax_picks_largest_and_keeps_probabilities() {
        let moe = config(TopkMethod::Greedy, ScoringFunc::Softmax);
        let logits = [0.1, 2.0, -1.0, 0.5, 1.5, 0.0, -0.3, 0.2];
        let routes = route(&logits, None, &moe);
        assert_eq!(experts(&routes), vec![1, 4]);
        let p = softmax(&logits);
        assert!((routes[0].weight - p[1]).abs() < 1e-7);
        assert!((routes[1].weight - p[4]).abs() < 1e-7);
    }

    #[test]
    fn group_limited_greedy_drops_groups_by_their_max() {
        let moe = config(TopkMethod::GroupLimitedGreedy, ScoringFunc::Softmax);
        // Groups of 2; g1 = {2,3} and g2 = {4,5} have the best maxima, and the best two experts
        // are both in g1.
        let logits = [1.0, 0.9, 3.0, 2.95, 2.9, -5.0, 0.0, -1.0];
        assert_eq!(experts(&route(&logits, None, &moe)), vec![2, 3]);
        // One group kept: g2 (max 2.6) wins, so expert 2 (2.5, second best overall) is dropped.
        let logits = [2.0, 0.0, 2.5, 1.9, 2.6, 2.4, 0.0, 0.0];
        let mut moe1 = moe.clone();
        moe1.topk_group = 1;
        assert_eq!(experts(&route(&logits, None, &moe1)), vec![4, 5]);
    }

    #[test]
    fn v3_normalises_and_scales() {
        let mut moe = config(TopkMethod::NoauxTc, ScoringFunc::Sigmoid);
        moe.norm_topk_prob = true;
        moe.routed_scaling_factor = 2.5;
        let routes = route(&[0.1, 2.0, -1.0, 0.5, 1.5, 0.0, -0.3, 0.2], None, &moe);
        let sum: f32 = routes.iter().map(|r| r.weight).sum();
        assert!((sum - 2.5).abs() < 1e-6);
    }

    #[test]
    fn v2_scales_but_never_normalises() {
        let mut moe = config(TopkMethod::Greedy, ScoringFunc::Softmax);
        moe.norm_topk_prob = true;
        moe.routed_scaling_factor = 2.5;
        let logits = [0.1, 2.0, -1.0, 0.5, 1.5, 0.0, -0.3, 0.2];
        let routes = route(&logits, None, &moe);
        let p = softmax(&logits);
        assert!((routes[0].weight - 2.5 * p[1]).abs() < 1e-6);
        assert!((routes[1].weight - 2.5 * p[4]).abs() < 1e-6);
    }

    #[test]
    fn noaux_tc_uses_bias_for_choice_only_and_sums_top_two_per_group() {
        let mut moe = config(TopkMethod::NoauxTc, ScoringFunc::Sigmoid);
        moe.topk_group = 1;
        // Group score is the sum of the top two choice scores: g0 = {0,1}, g1 = {2,3}, ...
        // g1 has the single best expert but g2 has the better pair.
        let logits = [-4.0, -4.0, 4.0, -4.0, 2.0, 2.0, -4.0, -4.0];
        let routes = route(&logits, None, &moe);
        assert_eq!(experts(&routes), vec![4, 5]);
        // A bias flips the choice inside the kept group but weights stay the unbiased sigmoid.
        let bias = [0.0, 0.0, 0.0, 0.0, -0.5, 0.0, 0.0, 0.0];
        let logits = [-4.0, -4.0, 0.0, -4.0, 2.0, 1.9, 1.8, 1.7];
        moe.topk_group = 2;
        let routes = route(&logits, Some(&bias), &moe);
        assert_eq!(experts(&routes), vec![5, 6]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((routes[0].weight - sig(1.9)).abs() < 1e-7);
    }

    #[test]
    fn noaux_tc_never_picks_experts_of_dropped_groups_even_with_negative_scores() {
        let mut moe = config(TopkMethod::NoauxTc, ScoringFunc::Sigmoid);
        moe.topk_group = 1;
        moe.num_experts_per_tok = 2;
        // Bias makes every kept choice score negative; a zeroed (instead of −∞) dropped expert would win.
        let bias = [-2.0; 8];
        let logits = [-3.0, -3.0, 0.5, 0.4, -3.0, -3.0, -3.0, -3.0];
        assert_eq!(experts(&route(&logits, Some(&bias), &moe)), vec![2, 3]);
    }
}
