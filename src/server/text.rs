//! A streamed choice's text: tokens turned into whole characters as they come, and stop strings
//! held back. What could still become a stop string is not sent until it cannot; at the first
//! stop string the text ends, as the engine's final text does.

use mla_rt::tokenizer::{Detokenizer, TextTokenizer};

#[derive(Debug, Default)]
pub struct ChoiceText {
    detokenizer: Detokenizer,
    /// Everything decoded so far.
    text: String,
    /// How much of `text` has been sent.
    sent: usize,
    /// Whether a stop string was found (nothing more is sent).
    stopped: bool,
}

impl ChoiceText {
    /// The text `token` adds that can be sent now.
    pub fn push(&mut self, tokenizer: &TextTokenizer, token: u32, stops: &[String]) -> String {
        if tokenizer.is_eos(token) || self.stopped {
            return String::new();
        }
        if let Ok(Some(piece)) = self.detokenizer.push(tokenizer, token) {
            self.text.push_str(&piece);
        }
        let end = match stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            Some(at) => {
                self.stopped = true;
                at
            }
            None => self.text.len() - held_back(&self.text, stops),
        };
        self.take(end)
    }

    /// What is left to send of `final_text`, the engine's text of the finished choice (the text
    /// sent so far is a prefix of it, unless a decoding edge case made them differ: then
    /// nothing more).
    pub fn finish(&mut self, final_text: &str) -> String {
        let sent = &self.text[..self.sent];
        let rest = match final_text.strip_prefix(sent) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        };
        self.sent = self.text.len();
        rest
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.sent);
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }
}

/// Bytes at the end of `text` that begin some stop string (and so may become one), at a
/// character boundary.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n))
                .filter(|&n| text.ends_with(&s[..n]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_stop_string_is_held_back_until_it_cannot_be_one() {
        let stops = vec!["END".to_string()];
        assert_eq!(held_back("the E", &stops), 1);
        assert_eq!(held_back("the EN", &stops), 2);
        assert_eq!(held_back("the ENX", &stops), 0);
        assert_eq!(held_back("anything", &[]), 0);
        let mut c = ChoiceText {
            text: "abc EN".into(),
            ..ChoiceText::default()
        };
        let end = c.text.len() - held_back(&c.text, &stops);
        assert_eq!(c.take(end), "abc ");
        c.text.push_str("D more");
        let at = c.text.find("END").unwrap();
        assert_eq!(c.take(at), "");
        assert_eq!(c.finish("abc "), "");
        let mut c = ChoiceText {
            text: "abc".into(),
            ..ChoiceText::default()
        };
        assert_eq!(c.take(3), "abc");
        assert_eq!(c.finish("abc def"), " def");
    }
}
