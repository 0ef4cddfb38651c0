//! Sliding-window perplexity, as the Hugging Face perplexity guide computes it: windows of
//! `context` tokens start every `stride` tokens, and each window scores only the tokens the
//! previous window did not reach, so every token after the first is scored exactly once, with
//! up to `context − 1` tokens of context.

use super::session::Session;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::KvCacheDtype;
use crate::model::{AttentionForm, LogitRows, Model};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    pub tokens_evaluated: usize,
    /// Sum of the negative log-likelihoods (natural log) of the scored tokens.
    pub nll_sum: f64,
}

impl Perplexity {
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens_evaluated.max(1) as f64
    }

    pub fn ppl(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// `-log softmax(logits)[target]`, in f64.
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Scores `ids` window by window; `on_window(done_tokens, so_far)` reports progress.
/// Window length and spacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub context: usize,
    pub stride: usize,
}

pub fn sliding_window<B: Backend>(
    model: &Model<B>,
    backend: &B,
    ids: &[u32],
    Windows { context, stride }: Windows,
    (block_size, form, cache_dtype): (usize, AttentionForm, KvCacheDtype),
    mut on_window: impl FnMut(usize, &Perplexity),
) -> Result<Perplexity> {
    if context < 2 || stride == 0 || stride > context {
        return Err(Error::InvalidInput(format!(
            "--context must be at least 2 and --stride between 1 and the context, found context {context}, stride {stride}"
        )));
    }
    if context > model.config.max_position_embeddings() {
        return Err(Error::InvalidInput(format!(
            "--context {context} exceeds max_position_embeddings ({})",
            model.config.max_position_embeddings()
        )));
    }
    if ids.len() < 2 {
        return Err(Error::InvalidInput(
            "the text has fewer than 2 tokens: nothing to score".into(),
        ));
    }
    let vocab = model.config.vocab_size();
    let mut result = Perplexity {
        tokens_evaluated: 0,
        nll_sum: 0.0,
    };
    let mut prev_end = 0;
    for begin in (0..ids.len()).step_by(stride) {
        let end = (begin + context).min(ids.len());
        let mut session =
            Session::with_cache_dtype(model, backend, end - begin, block_size, form, cache_dtype)?;
        let logits = backend.to_host(&session.feed(&ids[begin..end], LogitRows::All)?)?;
        // Target j is predicted by the row of the token before it.
        let first = prev_end.max(begin + 1);
        for (j, &target) in ids.iter().enumerate().take(end).skip(first) {
            let row = j - 1 - begin;
            let logits = &logits.data[row * vocab..(row + 1) * vocab];
            if !crate::backend::row_is_finite(logits) {
                return Err(Error::NonFinite(format!(
                    "the logits at token {} of the text are not finite (NaN or infinity)",
                    j - 1
                )));
            }
            result.nll_sum += nll(logits, target);
            result.tokens_evaluated += 1;
        }
        prev_end = end;
        on_window(end, &result);
        if end == ids.len() {
            break;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::nll;

    #[test]
    fn nll_is_cross_entropy() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((nll(&logits, 2) - (z.ln() - 3.0)).abs() < 1e-12);
        assert!((nll(&[0.0; 4], 1) - 4f64.ln()).abs() < 1e-12);
    }
}
