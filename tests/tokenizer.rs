//! Streaming detokenization: byte-level tokens that split a UTF-8 character must not reach
//! the output as replacement characters.

mod common;

use mla_rt::config::ModelConfig;
use mla_rt::tokenizer::TextTokenizer;

#[test]
fn streamed_text_equals_decoded_text_with_multibyte_characters() {
    let dir = common::fixtures_dir().join("v2-lite");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tokenizer = TextTokenizer::load(&dir, &config).unwrap();
    let text = "The café served crème brûlée — 東京 🚢 ahoy";
    let ids = tokenizer.encode(text).unwrap();
    // The fixture vocabulary is English: the CJK and emoji characters become single bytes.
    assert!(ids.len() > text.chars().count() / 2);
    let mut stream = tokenizer.stream();
    let mut pieces = Vec::new();
    for &id in &ids[1..] {
        if let Some(piece) = stream.push(id).unwrap() {
            assert!(
                !piece.contains('\u{FFFD}'),
                "piece {piece:?} holds a broken character"
            );
            pieces.push(piece);
        }
    }
    pieces.extend(stream.finish().unwrap());
    let streamed: String = pieces.concat();
    assert_eq!(streamed, tokenizer.decode(&ids).unwrap());
    assert_eq!(streamed, text);
    // Held back at least once: a 3-byte character cannot complete on its first byte.
    assert!(pieces.len() < ids.len() - 1);
}
