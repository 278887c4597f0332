//! UTF-8-safe streaming and stop strings, on tokenizers built in the test.

mod common;

use common::{SpDecoder, TEXT};
use glimpse_infer::{StopStrings, TextStream};
use tokenizers::Tokenizer;

/// Feeds `ids` one by one; returns the piece of every push, then the finish piece.
fn stream_all(tok: &Tokenizer, ids: &[u32], stops: &[&str]) -> (Vec<String>, String, bool) {
    let mut s = TextStream::new(tok, StopStrings::new(stops.iter().copied()));
    let mut pieces = Vec::new();
    let mut stopped = false;
    for &id in ids {
        let p = s.push(id).expect("push");
        pieces.push(p.text.to_owned());
        stopped = p.stopped;
    }
    pieces.push(s.finish().expect("finish").to_owned());
    (pieces, s.into_text(), stopped)
}

fn non_empty(pieces: &[String]) -> Vec<&str> {
    pieces
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect()
}

#[test]
fn byte_level_pieces_are_whole_characters() {
    let tok = common::byte_level();
    let ids = common::byte_level_ids(&tok);
    assert_eq!(tok.decode(&ids, true).unwrap(), TEXT);
    let (pieces, text, stopped) = stream_all(&tok, &ids, &[]);
    assert!(!stopped);
    assert_eq!(text, TEXT);
    assert_eq!(pieces.concat(), TEXT);
    // é, 中, 文, ö: one empty push per byte before a character's last.
    assert_eq!(
        pieces.iter().filter(|p| p.is_empty()).count(),
        1 + 2 + 2 + 1 + 1
    );
    assert_eq!(
        non_empty(&pieces),
        ["h", "é", "llo", " ", "中", "文", " w", "ö", "rld"]
    );
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
}

#[test]
fn sentencepiece_byte_fallback_keeps_spaces() {
    for kind in [SpDecoder::LlamaSequence, SpDecoder::Metaspace] {
        let tok = common::sentencepiece(kind);
        let ids = common::sentencepiece_ids(&tok);
        assert_eq!(tok.decode(&ids, true).unwrap(), TEXT, "{kind:?}");
        let (pieces, text, _) = stream_all(&tok, &ids, &[]);
        assert_eq!(text, TEXT, "{kind:?}");
        assert_eq!(pieces.concat(), TEXT, "{kind:?}");
        assert_eq!(
            non_empty(&pieces),
            ["h", "é", "llo", " ", "中", "文", " w", "ö", "rl", "d"],
            "{kind:?}"
        );
    }
}

#[test]
fn special_tokens_are_skipped() {
    let tok = common::byte_level();
    let mut ids = common::byte_level_ids(&tok);
    ids.insert(4, common::id(&tok, "<|eos|>"));
    let (pieces, text, _) = stream_all(&tok, &ids, &[]);
    assert_eq!(text, TEXT);
    assert_eq!(pieces[4], "");
}

#[test]
fn stop_string_over_two_tokens_is_never_streamed() {
    let tok = common::sentencepiece(SpDecoder::LlamaSequence);
    let ids = common::sentencepiece_ids(&tok);
    // "rld" = "rl" + "d": the push of "rl" must print nothing.
    let (pieces, text, stopped) = stream_all(&tok, &ids, &["rld"]);
    assert!(stopped);
    assert_eq!(text, "héllo 中文 wö");
    assert_eq!(pieces.concat(), "héllo 中文 wö");
    assert_eq!(
        pieces[14], "",
        "the push of \"rl\" printed a part of the stop string"
    );
    // "ö" = <0xC3><0xB6>, and "o 中" spanning five tokens.
    for (stop, want) in [("ö", "héllo 中文 w"), ("o 中", "héll")] {
        let (pieces, text, stopped) = stream_all(&tok, &ids, &[stop]);
        assert!(stopped, "{stop}");
        assert_eq!(text, want, "{stop}");
        assert_eq!(pieces.concat(), want, "{stop}");
    }
}

#[test]
fn held_back_text_is_released_when_no_stop_comes() {
    let tok = common::byte_level();
    let ids = common::byte_level_ids(&tok);
    // " wo" and "rlx" are prefixes of what comes, but never complete.
    let (pieces, text, stopped) = stream_all(&tok, &ids, &["rlx", " wo"]);
    assert!(!stopped);
    assert_eq!(text, TEXT);
    assert_eq!(pieces.concat(), TEXT);
    // " " is held until "中" rules out " wo", " w" until "ö" does; "rld"
    // arrives as one token and no tail of it starts "rlx", so it goes at once.
    assert_eq!(
        non_empty(&pieces),
        ["h", "é", "llo", " 中", "文", " wö", "rld"]
    );
}

#[test]
fn finish_shows_an_incomplete_character_like_decode() {
    let tok = common::sentencepiece(SpDecoder::LlamaSequence);
    let ids = [common::id(&tok, "▁h"), common::id(&tok, "<0xE4>")];
    let (pieces, text, _) = stream_all(&tok, &ids, &[]);
    assert_eq!(pieces, ["h", "", "\u{FFFD}"]);
    assert_eq!(text, tok.decode(&ids, true).unwrap());
}
