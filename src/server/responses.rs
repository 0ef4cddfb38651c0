//! The JSON the server answers with, in OpenAI's shapes: whole responses and stream chunks of
//! `/v1/completions` (`text_completion`) and `/v1/chat/completions` (`chat.completion`,
//! `chat.completion.chunk`), their log-probabilities and `usage`.

use mla_rt::engine::logits::TokenLogprobs;
use mla_rt::engine::request::FinishReason;
use mla_rt::tokenizer::TextTokenizer;
use serde_json::{json, Value};

/// Which endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What every response and chunk of one request shares.
pub struct Header {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Header {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Header {
            endpoint,
            id: format!("{prefix}-{created:x}{n:08x}"),
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A whole response.
    pub fn response(&self, choices: Vec<Value>, usage: Value) -> Value {
        json!({
            "id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": choices, "usage": usage,
        })
    }

    /// A stream chunk; `usage` only in the last one, where the client asked for it.
    pub fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut c = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": choices,
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        c
    }

    /// A choice of a response (`text` the whole text) or of a chunk (`text` the delta;
    /// `first` for the chat's first chunk, which carries the role).
    pub fn choice(
        &self,
        index: usize,
        text: &str,
        logprobs: Option<Value>,
        finish: Option<FinishReason>,
        chunk: Option<bool>,
    ) -> Value {
        // `FinishReason` serializes as OpenAI names it ("stop", "length"); None as null.
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => json!({
                "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
            }),
            (Endpoint::Chat, None) => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish,
            }),
            (Endpoint::Chat, Some(first)) => {
                let delta = match (first, text.is_empty()) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, false) => json!({"content": text}),
                    (false, true) => json!({}),
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }
}

pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// A token's text as its own decode gives it (what the log-probabilities name).
fn token_text(tokenizer: &TextTokenizer, id: u32) -> String {
    tokenizer.decode(&[id]).unwrap_or_default()
}

/// Log-probabilities of `tokens` for `endpoint`: the completions API's parallel lists (with
/// each token's offset in the text from `offset`), or the chat API's `content` list.
pub fn logprobs(
    endpoint: Endpoint,
    tokenizer: &TextTokenizer,
    tokens: &[TokenLogprobs],
    mut offset: usize,
) -> Value {
    match endpoint {
        Endpoint::Completions => {
            let (mut texts, mut lps, mut tops, mut offsets) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for t in tokens {
                let text = token_text(tokenizer, t.token);
                offsets.push(offset);
                offset += text.len();
                texts.push(text);
                lps.push(t.logprob);
                let top: serde_json::Map<String, Value> = t
                    .top
                    .iter()
                    .map(|&(id, lp)| (token_text(tokenizer, id), json!(lp)))
                    .collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
        }
        Endpoint::Chat => {
            let entry = |id: u32, lp: f32| {
                let text = token_text(tokenizer, id);
                json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut e = entry(t.token, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
    }
}
