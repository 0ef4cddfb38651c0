//! Chat templates: the Jinja template in a model's `tokenizer_config.json`, rendered with
//! minijinja the way transformers renders it (trim_blocks, lstrip_blocks, Python string methods).

use crate::error::{read_json, Error, Result};
use crate::template_limits::{MAX_RENDERED_BYTES, TEMPLATE_FUEL};
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
        // minijinja 2.24 panics on some templates (`'%(é)s' | format(1)` slices its format string
        // inside a character): a panic of the template engine is this template's error.
        let render = std::panic::AssertUnwindSafe(|| self.render_unguarded(messages));
        std::panic::catch_unwind(render).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!("chat_template: the template engine failed: {what}"),
            })
        })
    }

    fn render_unguarded(&self, messages: &[Message]) -> Result<String> {
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
        crate::template_limits::bound(&mut env);
        let template = env.template_from_str(&self.source).map_err(err)?;
        let mut out = BoundedText::default();
        let rendered = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => true,
            },
            &mut out,
        );
        match rendered {
            _ if out.overflowed => Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "chat_template: the rendered prompt passed {} MiB",
                    MAX_RENDERED_BYTES >> 20
                ),
            }),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "chat_template: rendering took more than {TEMPLATE_FUEL} template steps"
                ),
            }),
            Err(e) => Err(err(e)),
            Ok(_) => String::from_utf8(out.bytes).map_err(|_| Error::Tokenizer {
                path: self.path.clone(),
                message: "chat_template: the rendered prompt is not UTF-8".into(),
            }),
        }
    }
}

/// The rendered text, refusing writes past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedText {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered prompt too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> (tempfile::TempDir, ChatTemplate) {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({ "chat_template": source, "bos_token": "<s>" });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let template = ChatTemplate::load(dir.path()).unwrap();
        (dir, template)
    }

    fn user(text: &str) -> Vec<Message> {
        vec![Message {
            role: "user".into(),
            content: text.into(),
        }]
    }

    #[test]
    fn a_template_renders_the_messages() {
        let (_dir, t) =
            template("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}");
        assert_eq!(t.render(&user("hi")).unwrap(), "<s>hi");
    }

    #[test]
    fn endless_and_huge_templates_stop_with_an_error_naming_the_file() {
        let start = std::time::Instant::now();
        let (_dir, t) = template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let err = t.render(&user("hi")).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("template steps"),
            "{err}"
        );
        let (_dir, t) = template("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
        let err = t.render(&user("hi")).unwrap_err().to_string();
        assert!(err.contains("passed 64 MiB"), "{err}");
        // One step that would build a huge value: each refused before it is built.
        for (source, want) in [
            ("{{ 444444444444 * [1] }}", "444444444444 items"),
            (
                "{{ '%99999999999s' | format(3) }}",
                "format width 99999999999",
            ),
            (
                "{{ ('x' * 99999999) | join('yy') | join('zz') }}",
                "join would make",
            ),
            ("{{ messages | map(attribute='content') | join(', ') }}", ""),
        ] {
            let (_dir, t) = template(source);
            match (t.render(&user("hi")), want) {
                (Ok(text), "") => assert_eq!(text, "hi"),
                (Err(e), want) if !want.is_empty() => {
                    assert!(e.to_string().contains(want), "{source}: {e}")
                }
                (other, _) => panic!("{source}: {other:?}"),
            }
        }
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
    }
}
