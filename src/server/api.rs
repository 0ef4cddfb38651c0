//! The requests of the OpenAI API as this server reads them: the bodies and their checks are
//! [`mla_rt::openai_request`]'s; here is what they need of the model (its name, tokenizer and
//! chat template) and how their errors become OpenAI's.

use super::errors::ApiError;
use crate::cli::generate::{prompt_ids, PromptInput};
use mla_rt::chat::ChatTemplate;
use mla_rt::error::Error;
use mla_rt::openai_request::{self as body, ChatMessage, RequestModel};
use mla_rt::tokenizer::TextTokenizer;

pub use body::{ChatRequest, CompletionRequest, DetokenizeRequest, Job, TokenizeRequest};

/// A request body's error: a field out of range is a 400 naming it.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Config { key, message, .. } => ApiError::invalid(message, Some(&key)),
            other => ApiError::invalid(other.to_string(), None),
        }
    }
}

/// What a request needs of the model.
pub struct ModelInfo<'a> {
    pub name: &'a str,
    pub tokenizer: &'a TextTokenizer,
    /// The chat template, or why there is none.
    pub template: Result<&'a ChatTemplate, &'a str>,
    pub vocab_size: usize,
    pub max_pos: usize,
}

impl RequestModel for ModelInfo<'_> {
    type Error = ApiError;

    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        check_model(requested, self.name)
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_pos(&self) -> usize {
        self.max_pos
    }

    fn text_ids(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        prompt_ids(
            self.tokenizer,
            None,
            PromptInput::Text(text.to_string()),
            usize::MAX,
            "prompt",
        )
        .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ApiError> {
        self.tokenizer
            .decode(ids)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    fn chat_ids(&self, messages: Vec<ChatMessage>) -> Result<Vec<u32>, ApiError> {
        chat_ids(self, messages)
    }
}

/// A request's `model`, if it names one, must be the served model's name.
pub fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        Some(m) if m != served => Err(ApiError::model_not_found(m, served)),
        _ => Ok(()),
    }
}

/// Token ids of a request's field `param`, each checked to be in the vocabulary.
pub fn token_ids(ids: &[i64], vocab_size: usize, param: &str) -> Result<Vec<u32>, ApiError> {
    Ok(body::token_ids(ids, vocab_size, param)?)
}

/// Token ids of chat `messages` rendered with the model's template.
pub fn chat_ids(model: &ModelInfo, list: Vec<ChatMessage>) -> Result<Vec<u32>, ApiError> {
    let template = model.template.map_err(|why| {
        ApiError::invalid(
            format!("this model has no chat template: {why}"),
            Some("messages"),
        )
    })?;
    if list.is_empty() {
        return Err(ApiError::invalid("`messages` is empty", Some("messages")));
    }
    prompt_ids(
        model.tokenizer,
        Some(template),
        PromptInput::Messages(body::messages(list)?),
        usize::MAX,
        "messages",
    )
    .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))
}
