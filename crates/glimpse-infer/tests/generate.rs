//! The generation loop against a scripted model.

mod common;

use common::{SpDecoder, TEXT};
use glimpse_infer::{generate, FinishReason, GenerationConfig, InferError, TokenModel};
use std::time::Duration;

const VOCAB: usize = 300;

#[derive(Debug, thiserror::Error)]
#[error("boom at step {0}\n  (second line of a backtrace-like message)")]
struct Boom(usize);

/// Emits a fixed id sequence as one-hot logits; counts forward passes.
struct Scripted {
    script: Vec<u32>,
    prefills: usize,
    steps: usize,
    fail_at_step: Option<usize>,
    fed: Vec<u32>,
}

impl Scripted {
    fn new(script: Vec<u32>) -> Self {
        Self {
            script,
            prefills: 0,
            steps: 0,
            fail_at_step: None,
            fed: Vec::new(),
        }
    }

    fn logits(&self, pos: usize) -> Vec<f32> {
        let mut l = vec![0.0; VOCAB];
        // Past the script: a flat distribution (greedy picks id 0, `<unk>`).
        if let Some(&id) = self.script.get(pos) {
            l[id as usize] = 10.0;
        }
        l
    }
}

impl TokenModel for Scripted {
    type Error = Boom;

    fn prefill(&mut self) -> Result<Vec<f32>, Boom> {
        self.prefills += 1;
        std::thread::sleep(Duration::from_millis(2));
        Ok(self.logits(0))
    }

    fn step(&mut self, token: u32) -> Result<Vec<f32>, Boom> {
        self.steps += 1;
        self.fed.push(token);
        if self.fail_at_step == Some(self.steps) {
            return Err(Boom(self.steps));
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(self.logits(self.steps))
    }
}

fn cfg(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        eos_ids: vec![2],
        ..GenerationConfig::new(max_new_tokens)
    }
}

#[test]
fn length_stops_without_an_extra_step() {
    let tok = common::sentencepiece(SpDecoder::LlamaSequence);
    let ids = common::sentencepiece_ids(&tok);
    let mut m = Scripted::new(ids.clone());
    let mut streamed = String::new();
    let g = generate(&mut m, &[1, 5, 6], &tok, &cfg(4), |s| {
        streamed.push_str(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.tokens, ids[..4]);
    assert_eq!(g.text, "héllo");
    assert_eq!(streamed, g.text);
    assert_eq!((m.prefills, m.steps, g.decode_steps), (1, 3, 3));
    assert_eq!(m.fed, ids[..3]);
    assert_eq!(g.prompt_tokens, 3);
}

#[test]
fn eos_is_reported_in_tokens_not_in_text() {
    let tok = common::sentencepiece(SpDecoder::Metaspace);
    let mut script = common::sentencepiece_ids(&tok);
    script.extend([2, 259, 259]);
    let mut m = Scripted::new(script.clone());
    let mut pieces = Vec::new();
    let g = generate(&mut m, &[1], &tok, &cfg(100), |s| {
        pieces.push(s.to_owned());
        Ok(())
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Eos);
    assert_eq!(g.tokens, script[..17]);
    assert_eq!(*g.tokens.last().unwrap(), 2);
    assert_eq!(g.text, TEXT);
    assert_eq!(pieces.concat(), TEXT);
    assert_eq!(m.steps, 16, "no step after the eos");
    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(json["finish_reason"], "eos");
    assert_eq!(json["tokens"].as_array().unwrap().len(), 17);
}

#[test]
fn stop_string_cuts_the_text_and_ends_generation() {
    let tok = common::byte_level();
    let script = common::byte_level_ids(&tok);
    let mut m = Scripted::new(script.clone());
    let mut streamed = String::new();
    let mut c = cfg(100);
    c.stop_strings = vec!["中文".into(), "zzz".into()];
    let g = generate(&mut m, &[], &tok, &c, |s| {
        streamed.push_str(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::StopString);
    assert_eq!(g.text, "héllo ");
    assert_eq!(streamed, "héllo ");
    // The token completing "文" (its last byte, index 10) ends it.
    assert_eq!(g.tokens, script[..11]);
    assert_eq!(m.steps, 10);
    assert_eq!(
        serde_json::to_value(g.finish_reason).unwrap(),
        "stop_string"
    );
}

#[test]
fn timings_are_measured() {
    let tok = common::byte_level();
    let mut m = Scripted::new(common::byte_level_ids(&tok));
    let g = generate(&mut m, &[1; 10], &tok, &cfg(8), |_| Ok(())).unwrap();
    assert_eq!(g.decode_steps, 7);
    // The fake sleeps 2 ms in prefill and 1 ms per step.
    assert!(g.prefill_secs >= 0.002, "{}", g.prefill_secs);
    assert!(g.decode_secs >= 0.007, "{}", g.decode_secs);
    assert!(g.total_secs >= g.prefill_secs + g.decode_secs);
    let p = g.prompt_tok_per_s();
    assert!(p > 0.0 && p <= 10.0 / 0.002, "{p}");
    let d = g.decode_tok_per_s();
    assert!(d > 0.0 && d <= 1000.0, "{d}");
    assert!((d - 7.0 / g.decode_secs).abs() < 1e-9);
}

#[test]
fn zero_new_tokens_runs_no_forward_pass() {
    let tok = common::byte_level();
    let mut m = Scripted::new(vec![5]);
    let g = generate(&mut m, &[1, 2], &tok, &cfg(0), |_| Ok(())).unwrap();
    assert_eq!((m.prefills, m.steps), (0, 0));
    assert!(g.tokens.is_empty() && g.text.is_empty());
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.decode_tok_per_s(), 0.0);
}

#[test]
fn model_errors_propagate_on_one_line() {
    let tok = common::byte_level();
    let mut m = Scripted::new(common::byte_level_ids(&tok));
    m.fail_at_step = Some(3);
    let err = generate(&mut m, &[], &tok, &cfg(100), |_| Ok(())).unwrap_err();
    match &err {
        InferError::Model(msg) => assert!(msg.starts_with("boom at step 3"), "{msg}"),
        other => panic!("expected a model error, got {other:?}"),
    }
    assert!(!err.to_string().contains('\n'), "{err}");
    assert_eq!(m.steps, 3, "nothing after the failure");
}

#[test]
fn output_errors_stop_generation() {
    let tok = common::byte_level();
    let mut m = Scripted::new(common::byte_level_ids(&tok));
    let mut calls = 0;
    let err = generate(&mut m, &[], &tok, &cfg(100), |_| {
        calls += 1;
        if calls == 2 {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed").into());
        }
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(&err, InferError::Output(m) if m == "pipe closed"),
        "{err:?}"
    );
    // "h" (1 push), "é" (2 pushes, the 2nd prints): failure at push 3, after 2 steps.
    assert_eq!(m.steps, 2);
}

#[test]
fn sampling_settings_reach_the_sampler() {
    let tok = common::byte_level();
    let mut c = cfg(5);
    c.sampling.temperature = -1.0;
    let err = generate(&mut Scripted::new(vec![5]), &[], &tok, &c, |_| Ok(())).unwrap_err();
    assert!(matches!(err, InferError::Config(_)), "{err:?}");
}

/// Same logits at every position.
struct Fixed(Vec<f32>);

impl TokenModel for Fixed {
    type Error = Boom;
    fn prefill(&mut self) -> Result<Vec<f32>, Boom> {
        Ok(self.0.clone())
    }
    fn step(&mut self, _: u32) -> Result<Vec<f32>, Boom> {
        Ok(self.0.clone())
    }
}

#[test]
fn repetition_penalty_sees_prompt_and_generated_ids() {
    let tok = common::byte_level();
    let mut logits = vec![0.0; VOCAB];
    logits[b'a' as usize] = 2.0;
    logits[b'b' as usize] = 1.5;
    let mut c = cfg(3);
    c.sampling.repetition_penalty = 1.5;
    // "a" is in the prompt: 2.0 / 1.5 = 1.33 < 1.5, so "b" first; then "b"
    // is penalised too (1.0 < 1.33) and "a" wins from then on.
    let g = generate(&mut Fixed(logits.clone()), &[b'a' as u32], &tok, &c, |_| {
        Ok(())
    })
    .unwrap();
    assert_eq!(g.text, "baa");
    c.sampling.repetition_penalty = 1.0;
    let g = generate(&mut Fixed(logits), &[b'a' as u32], &tok, &c, |_| Ok(())).unwrap();
    assert_eq!(g.text, "aaa");
}
