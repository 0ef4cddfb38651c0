//! Chat templates: the Jinja template in a model's `tokenizer_config.json`, rendered with
//! minijinja the way transformers renders it (trim_blocks, lstrip_blocks, Python string methods).

use crate::error::{read_json, Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a request generates from: plain text, or a chat rendered by the model's template.
#[derive(Debug)]
pub enum PromptInput {
    Text(String),
    Messages(Vec<Message>),
}

pub struct ChatTemplate {
    path: PathBuf,
    source: String,
    bos_token: String,
    eos_token: String,
}

/// `"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json writes special tokens.
fn token_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of `dir/tokenizer_config.json`; an error that says so when there is none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let missing = |what: &str| Error::Tokenizer {
            path: path.clone(),
            message: format!("{what}; --chat and \"messages\" need a chat_template"),
        };
        if !path.is_file() {
            return Err(missing("file not found"));
        }
        let config: Value = read_json(&path)?;
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            // A list of named templates: the one named "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| missing("no template named \"default\" in chat_template"))?,
            _ => return Err(missing("no chat_template key")),
        };
        Ok(ChatTemplate {
            path,
            source,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
        })
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let err = |e: minijinja::Error| Error::Tokenizer {
            path: self.path.clone(),
            message: format!("chat_template: {e}"),
        };
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        let template = env.template_from_str(&self.source).map_err(err)?;
        template
            .render(minijinja::context! {
                messages => messages,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            })
            .map_err(err)
    }
}
