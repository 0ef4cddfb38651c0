//! The model's `tokenizer.json` (Hugging Face tokenizers) plus the BOS/EOS conventions of its
//! `tokenizer_config.json`, and a streaming detokenizer that never splits a UTF-8 character.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    bos: Option<u32>,
    eos: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`; BOS is prepended when `tokenizer_config.json` says
    /// `add_bos_token` (default true, as in DeepSeek's files) and a BOS id is known.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        crate::util::files::require_regular_file(&path)?;
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let tok_config: Value = if crate::util::files::exists_in_any_form(&config_path) {
            crate::error::read_json(&config_path)?
        } else {
            Value::Object(Default::default())
        };
        let bad_key = |key: &str, want: &str| Error::Tokenizer {
            path: config_path.clone(),
            message: format!("key `{key}`: expected {want}"),
        };
        if !tok_config.is_object() {
            return Err(Error::Tokenizer {
                path: config_path.clone(),
                message: "expected a JSON object".into(),
            });
        }
        let token_id = |key: &str| -> Option<u32> {
            let token = match tok_config.get(key)? {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            inner.token_to_id(token)
        };
        let add_bos = match tok_config.get("add_bos_token") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad_key("add_bos_token", "true or false")),
        };
        for key in ["bos_token", "eos_token"] {
            if !matches!(
                tok_config.get(key),
                None | Some(Value::Null | Value::String(_) | Value::Object(_))
            ) {
                return Err(bad_key(key, "a string or {\"content\": ...}"));
            }
        }
        let bos = if add_bos {
            config.bos_token_id().or_else(|| token_id("bos_token"))
        } else {
            None
        };
        let mut eos = config.eos_token_ids().to_vec();
        if let Some(id) = token_id("eos_token") {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        Ok(TextTokenizer {
            inner,
            path,
            bos,
            eos,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`, with BOS first when the model expects it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_bos(text, true)
    }

    /// Token ids of a rendered chat prompt: templates that write the BOS text themselves
    /// must not get a second one.
    pub fn encode_chat(&self, text: &str, bos_text: &str) -> Result<Vec<u32>> {
        self.encode_with_bos(text, bos_text.is_empty() || !text.starts_with(bos_text))
    }

    fn encode_with_bos(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.err(e))?;
        let bos = if add_bos { self.bos } else { None };
        Ok(bos
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| self.err(e))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// Every end-of-sequence id: the model's and the tokenizer's.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream {
            tokenizer: self,
            state: Detokenizer::default(),
        }
    }
}

/// Turns generated ids into text pieces as soon as they form whole characters.
pub struct TokenStream<'t> {
    tokenizer: &'t TextTokenizer,
    state: Detokenizer,
}

impl TokenStream<'_> {
    /// Adds one id; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.state.push(self.tokenizer, id)
    }

    /// Whatever text is still held back at the end of generation.
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.state.finish(self.tokenizer)
    }
}

/// [`TokenStream`]'s state, for callers that keep it apart from the tokenizer.
///
/// Decoding ids one by one breaks byte-level tokens that split a character and drops the
/// spaces some decoders add between tokens, so it decodes a short window and emits what the
/// newest id added.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// Adds one id; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(now[before.len()..].to_string()))
        } else {
            Ok(None)
        }
    }

    /// Whatever text is still held back at the end of generation.
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now
            .get(before.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }
}
