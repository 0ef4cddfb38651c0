//! The request bodies of the OpenAI API (`/v1/completions`, `/v1/chat/completions`,
//! `/tokenize`, `/detokenize`) as `mla serve` reads them, checked, and what they become: a
//! [`Job`] of engine requests, one per choice (prompts × `n`). Unknown fields are ignored, as
//! OpenAI's clients send many; a known field of the wrong type fails to deserialize, and one out
//! of range is an [`Error::Config`] whose `key` is the field (`path` is [`BODY`]).
//!
//! Everything here is pure: what needs the model (its name, tokenizer and chat template) comes
//! through [`RequestModel`], which the server implements on its tokenizer and the fuzz target on
//! a stand-in.

use crate::chat::Message;
use crate::engine::request::Request;
use crate::engine::sampler::{SamplingParams, MAX_LOGPROBS};
use crate::error::{Error, Result};
use serde::Deserialize;

/// The `path` of this module's errors: they are about the request body.
pub const BODY: &str = "request body";
/// Most choices one request may ask for per prompt (`n`).
pub const MAX_CHOICES: usize = 128;
/// Most choices one request may ask for in all (prompts × `n`): every choice holds a copy of
/// its prompt, so a small body of many short prompts must not become millions of requests.
pub const MAX_JOB_CHOICES: usize = 1024;
/// `max_tokens` of a completion that gives none (OpenAI's and vLLM's).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A prompt as `/v1/completions` takes it: text, token ids, or a batch of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdBatch(Vec<Vec<i64>>),
}

/// The sampling fields both endpoints share (vLLM's extras included).
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopField>,
    pub n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A chat message: `content` as text or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: ContentField,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /tokenize`: a prompt, or chat messages.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub model: Option<String>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
    pub model: Option<String>,
}

/// What turning a request into a [`Job`] needs of the served model. `Error` is the caller's
/// error type; this module's own errors reach it through `From<Error>`.
pub trait RequestModel {
    type Error: From<Error>;
    /// A request's `model`, if it names one, must be the served model's name.
    fn check_model(&self, requested: Option<&str>) -> Result<(), Self::Error>;
    fn vocab_size(&self) -> usize;
    /// The most tokens a sequence (prompt and output) may hold.
    fn max_pos(&self) -> usize;
    /// Token ids of a text prompt of `/v1/completions`.
    fn text_ids(&self, text: &str) -> Result<Vec<u32>, Self::Error>;
    /// The text of `ids`, for `echo`.
    fn decode(&self, ids: &[u32]) -> Result<String, Self::Error>;
    /// Token ids of chat `messages` rendered with the model's template.
    fn chat_ids(&self, messages: Vec<ChatMessage>) -> Result<Vec<u32>, Self::Error>;
}

/// One choice: which prompt it continues and the engine request.
pub struct Choice {
    pub prompt: usize,
    pub request: Request,
}

/// A prompt of the request: its token count and, for `echo`, its text.
pub struct Prompt {
    pub tokens: usize,
    pub text: String,
}

/// What one HTTP request asks the engine for.
pub struct Job {
    pub prompts: Vec<Prompt>,
    /// Ordered by choice index: prompt 0's `n` choices, then prompt 1's…
    pub choices: Vec<Choice>,
    /// Choices per prompt.
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Alternatives per token whose log-probabilities to report, if any are asked for.
    pub logprobs: Option<usize>,
    pub echo: bool,
}

impl Job {
    /// Prompt tokens of `usage`: each prompt once, however many choices it has.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.tokens).sum()
    }
}

/// A 400 naming field `param`.
fn invalid(param: &str, message: impl Into<String>) -> Error {
    Error::config(BODY, param, message)
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    v: Option<T>,
    param: &str,
    ok: impl Fn(T) -> bool,
    want: &str,
) -> Result<Option<T>> {
    match v {
        Some(x) if !ok(x) => Err(invalid(param, format!("`{param}` must be {want}, not {x}"))),
        other => Ok(other),
    }
}

impl Sampling {
    /// The engine's sampling parameters for choice `choice`.
    fn params(&self, logprobs: Option<usize>, choice: usize) -> Result<SamplingParams> {
        let d = SamplingParams::default();
        let temperature = range(
            self.temperature,
            "temperature",
            |t: f32| (0.0..=2.0).contains(&t),
            "in [0, 2]",
        )?;
        let top_p = range(
            self.top_p,
            "top_p",
            |p: f32| p > 0.0 && p <= 1.0,
            "in (0, 1]",
        )?;
        let top_k = range(
            self.top_k,
            "top_k",
            |k: i64| k >= -1,
            "-1 (off), 0 (off) or positive",
        )?;
        let min_p = range(
            self.min_p,
            "min_p",
            |p: f32| (0.0..=1.0).contains(&p),
            "in [0, 1]",
        )?;
        let penalty = |v, p| range(v, p, |x: f32| (-2.0..=2.0).contains(&x), "in [-2, 2]");
        let presence = penalty(self.presence_penalty, "presence_penalty")?;
        let frequency = penalty(self.frequency_penalty, "frequency_penalty")?;
        let repetition = range(
            self.repetition_penalty,
            "repetition_penalty",
            |x: f32| x > 0.0 && x.is_finite(),
            "positive",
        )?;
        let min_tokens = range(self.min_tokens, "min_tokens", |m: i64| m >= 0, "0 or more")?;
        // A seed for each choice; without one, every request draws its own.
        let seed = match self.seed {
            Some(s) => s.wrapping_add(choice as u64),
            None => fresh_seed(),
        };
        Ok(SamplingParams {
            // OpenAI's default temperature is 1.
            temperature: temperature.unwrap_or(1.0),
            top_k: top_k.map_or(0, |k| k.max(0) as usize),
            top_p: top_p.unwrap_or(d.top_p),
            seed,
            min_p: min_p.unwrap_or(0.0),
            presence_penalty: presence.unwrap_or(0.0),
            frequency_penalty: frequency.unwrap_or(0.0),
            repetition_penalty: repetition.unwrap_or(1.0),
            min_tokens: min_tokens.map_or(0, |m| m as usize),
            logprobs,
        })
    }

    fn stops(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }

    fn n(&self) -> Result<usize> {
        let n = range(
            self.n,
            "n",
            |n: i64| n >= 1 && n <= MAX_CHOICES as i64,
            "between 1 and 128",
        )?;
        Ok(n.map_or(1, |n| n as usize))
    }
}

/// Token ids of a request's field `param`, each checked to be in the vocabulary.
pub fn token_ids(ids: &[i64], vocab_size: usize, param: &str) -> Result<Vec<u32>> {
    match ids.iter().find(|&&t| t < 0 || t as usize >= vocab_size) {
        Some(t) => Err(invalid(
            param,
            format!(
                "token id {t} is outside the vocabulary (0 … {})",
                vocab_size.saturating_sub(1)
            ),
        )),
        None => Ok(ids.iter().map(|&t| t as u32).collect()),
    }
}

fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The choices of `prompts` (token ids, checked), `n` each, asking for `max_tokens` (or the
/// default `default_max`, or all the context left).
#[allow(clippy::too_many_arguments)]
fn job(
    max_pos: usize,
    sampling: &Sampling,
    prompts: Vec<(Vec<u32>, String)>,
    max_tokens: Option<i64>,
    default_max: Option<usize>,
    logprobs: Option<usize>,
    echo: bool,
    param: &str,
) -> Result<Job> {
    let n = sampling.n()?;
    let max_tokens = range(max_tokens, "max_tokens", |m: i64| m >= 1, "at least 1")?;
    if prompts.len().saturating_mul(n) > MAX_JOB_CHOICES {
        return Err(invalid(
            param,
            format!(
                "{} prompts with `n` {n} make {} choices; one request may ask for at most \
                 {MAX_JOB_CHOICES}",
                prompts.len(),
                prompts.len().saturating_mul(n)
            ),
        ));
    }
    let stop = sampling.stops();
    let mut choices = Vec::with_capacity(prompts.len() * n);
    let mut infos = Vec::with_capacity(prompts.len());
    for (p, (ids, text)) in prompts.into_iter().enumerate() {
        if ids.len() > max_pos {
            return Err(invalid(
                param,
                format!(
                    "this model's maximum context length is {max_pos} tokens; the {param} has {}",
                    ids.len()
                ),
            ));
        }
        let room = max_pos + 1 - ids.len();
        let max = match (max_tokens, default_max) {
            (Some(m), _) if m as usize > room => {
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "this model's maximum context length is {max_pos} tokens; the {param} has \
                         {} and max_tokens asks for {m} more (at most {room})",
                        ids.len()
                    ),
                ))
            }
            (Some(m), _) => m as usize,
            (None, Some(d)) => d.min(room),
            (None, None) => room,
        };
        for c in 0..n {
            choices.push(Choice {
                prompt: p,
                request: Request {
                    id: format!("{p}.{c}"),
                    prompt: ids.clone(),
                    sampling: sampling.params(logprobs, p * n + c)?,
                    max_tokens: max,
                    stop: stop.clone(),
                    ignore_eos: sampling.ignore_eos.unwrap_or(false),
                },
            });
        }
        infos.push(Prompt {
            tokens: ids.len(),
            text,
        });
    }
    Ok(Job {
        prompts: infos,
        choices,
        n,
        stream: sampling.stream.unwrap_or(false),
        include_usage: sampling
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        echo,
    })
}

impl CompletionRequest {
    pub fn job<M: RequestModel>(self, model: &M) -> Result<Job, M::Error> {
        model.check_model(self.sampling.model.as_deref())?;
        let logprobs = range(
            self.logprobs,
            "logprobs",
            |l: i64| (0..=MAX_LOGPROBS as i64).contains(&l),
            "between 0 and 20",
        )?;
        let echo = self.echo.unwrap_or(false);
        if echo && logprobs.is_some() {
            return Err(invalid(
                "echo",
                "`echo` with `logprobs` (log-probabilities of the prompt) is not supported",
            )
            .into());
        }
        let ids = |ids: Vec<i64>| -> Result<(Vec<u32>, String), M::Error> {
            let ids = token_ids(&ids, model.vocab_size(), "prompt")?;
            let text = match echo {
                true => model.decode(&ids)?,
                false => String::new(),
            };
            Ok((ids, text))
        };
        let text =
            |t: String| -> Result<(Vec<u32>, String), M::Error> { Ok((model.text_ids(&t)?, t)) };
        let prompts: Vec<(Vec<u32>, String)> = match self.prompt {
            PromptField::Text(t) => vec![text(t)?],
            PromptField::Texts(ts) => ts.into_iter().map(text).collect::<Result<_, _>>()?,
            PromptField::Ids(i) => vec![ids(i)?],
            PromptField::IdBatch(b) => b.into_iter().map(ids).collect::<Result<_, _>>()?,
        };
        if prompts.is_empty() || prompts.iter().any(|(ids, _)| ids.is_empty()) {
            return Err(invalid("prompt", "the prompt is empty").into());
        }
        let max_tokens = self.sampling.max_tokens;
        Ok(job(
            model.max_pos(),
            &self.sampling,
            prompts,
            max_tokens,
            Some(DEFAULT_COMPLETION_TOKENS),
            logprobs.map(|l| l as usize),
            echo,
            "prompt",
        )?)
    }
}

/// The messages as the chat template takes them: text parts joined.
pub fn messages(list: Vec<ChatMessage>) -> Result<Vec<Message>> {
    list.into_iter()
        .map(|m| {
            let content = match m.content {
                ContentField::Text(t) => t,
                ContentField::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(invalid(
                                    "messages",
                                    format!(
                                    "content parts of type `{kind}` are not supported (text only)"
                                ),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message {
                role: m.role,
                content,
            })
        })
        .collect()
}

impl ChatRequest {
    pub fn job<M: RequestModel>(self, model: &M) -> Result<Job, M::Error> {
        model.check_model(self.sampling.model.as_deref())?;
        let top = range(
            self.top_logprobs,
            "top_logprobs",
            |l: i64| (0..=MAX_LOGPROBS as i64).contains(&l),
            "between 0 and 20",
        )?;
        let logprobs = match (self.logprobs.unwrap_or(false), top) {
            (true, top) => Some(top.unwrap_or(0) as usize),
            (false, Some(_)) => {
                return Err(invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`").into())
            }
            (false, None) => None,
        };
        let ids = model.chat_ids(self.messages)?;
        let max_tokens = self.max_completion_tokens.or(self.sampling.max_tokens);
        Ok(job(
            model.max_pos(),
            &self.sampling,
            vec![(ids, String::new())],
            max_tokens,
            None,
            logprobs,
            false,
            "messages",
        )?)
    }
}
