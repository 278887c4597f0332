//! Sampler semantics: greedy, temperature, top-k, top-p, penalty, seeds, NaN.

use glimpse_infer::{InferError, Sampler, SamplingConfig};

fn sampler(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampler {
    Sampler::new(SamplingConfig {
        temperature,
        top_k,
        top_p,
        repetition_penalty: 1.0,
        seed,
    })
    .expect("valid config")
}

/// Counts of each id over `n` draws.
fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
    let mut counts = vec![0; logits.len()];
    for _ in 0..n {
        counts[s.sample(logits, &[]).unwrap() as usize] += 1;
    }
    counts
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

const LOGITS: [f32; 6] = [0.3, 2.0, -1.0, 1.2, 1.9, 0.0];

#[test]
fn greedy_is_argmax_with_ties_to_the_lowest_id() {
    let mut s = Sampler::new(SamplingConfig::default()).unwrap();
    assert_eq!(s.sample(&LOGITS, &[]).unwrap(), 1);
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]).unwrap(), 1);
    assert_eq!(s.sample(&[5.0, 5.0], &[]).unwrap(), 0);
    assert_eq!(s.sample(&[-2.0, -1.0, -1.0], &[]).unwrap(), 1);
}

#[test]
fn temperature_to_zero_and_top_k_one_are_greedy() {
    let draw = |t: f32, k: Option<usize>, logits: &[f32], seed: u64| {
        sampler(t, k, None, seed).sample(logits, &[]).unwrap()
    };
    for seed in 0..500 {
        assert_eq!(draw(1e-3, None, &LOGITS, seed), 1);
        assert_eq!(draw(0.0, None, &LOGITS, seed), 1);
        // 1 / T overflows f32: greedy too, not a NaN weight.
        assert_eq!(draw(1e-45, None, &LOGITS, seed), 1);
        assert_eq!(draw(5.0, Some(1), &LOGITS, seed), 1);
        // top_k = 1 keeps greedy's tie rule even at a high temperature.
        assert_eq!(draw(5.0, Some(1), &[1.0, 4.0, 4.0], seed), 1);
    }
}

#[test]
fn frequencies_match_softmax_over_temperature() {
    // 20k draws: a frequency's standard error is at most 0.0035; 0.015 is > 4 sigma.
    const N: usize = 20_000;
    for t in [0.7f32, 1.0, 2.0] {
        let counts = histogram(&mut sampler(t, None, None, 42), &LOGITS, N);
        for (i, p) in softmax(&LOGITS, t as f64).iter().enumerate() {
            let f = counts[i] as f64 / N as f64;
            assert!(
                (f - p).abs() < 0.015,
                "T={t} id {i}: freq {f:.4} vs p {p:.4}"
            );
        }
    }
}

#[test]
fn top_k_restricts_draws_to_the_k_best() {
    let counts = histogram(&mut sampler(1.0, Some(3), None, 7), &LOGITS, 20_000);
    // The 3 best are ids 1 (2.0), 4 (1.9), 3 (1.2); renormalised among them.
    let kept = [LOGITS[1], LOGITS[4], LOGITS[3]];
    let p = softmax(&kept, 1.0);
    for (j, &id) in [1usize, 4, 3].iter().enumerate() {
        let f = counts[id] as f64 / 20_000.0;
        assert!((f - p[j]).abs() < 0.015, "id {id}: {f:.4} vs {:.4}", p[j]);
    }
    assert_eq!(counts[0] + counts[2] + counts[5], 0, "{counts:?}");
    // Ties with the k-th value stay in, as in transformers' TopKLogitsWarper.
    let counts = histogram(
        &mut sampler(1.0, Some(2), None, 7),
        &[1.0, 3.0, 2.0, 2.0],
        5_000,
    );
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(counts[2] > 0 && counts[3] > 0, "{counts:?}");
}

#[test]
fn top_p_keeps_exactly_the_nucleus() {
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let counts = histogram(&mut sampler(1.0, None, Some(0.8), 3), &logits, 20_000);
    assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
    let f0 = counts[0] as f64 / 20_000.0;
    assert!((f0 - 0.5 / 0.8).abs() < 0.015, "id 0: {f0:.4} vs 0.625");
    // Just above 0.8 the third token joins; 0.96 still leaves the fourth out.
    let counts = histogram(&mut sampler(1.0, None, Some(0.81), 3), &logits, 20_000);
    assert!(counts[2] > 0 && counts[3] == 0, "{counts:?}");
    let counts = histogram(&mut sampler(1.0, None, Some(0.96), 3), &logits, 20_000);
    assert!(counts[3] > 0, "{counts:?}");
    // top_p = 0 keeps one token: the best.
    let counts = histogram(&mut sampler(1.0, None, Some(0.0), 3), &logits, 1_000);
    assert_eq!(counts[0], 1_000);
}

#[test]
fn top_k_then_top_p_on_a_large_vocab() {
    // 150k ids; the 50 best are the last 50 ids. top_p after top_k.
    let logits: Vec<f32> = (0..150_000)
        .map(|i| (i as f32 * 7.3).sin() * 0.01 + (i / 149_950) as f32 * 10.0)
        .collect();
    let mut s = sampler(1.0, Some(50), Some(0.5), 11);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2_000 {
        let id = s.sample(&logits, &[]).unwrap();
        assert!(id >= 149_950, "drew {id} outside the top 50");
        seen.insert(id);
    }
    // top-p 0.5 of 50 near-equal tokens keeps about 25 of them.
    assert!((20..=30).contains(&seen.len()), "{} distinct", seen.len());
}

#[test]
fn repetition_penalty_moves_the_argmax() {
    let pen = |p: f32| {
        Sampler::new(SamplingConfig {
            repetition_penalty: p,
            ..SamplingConfig::greedy()
        })
        .unwrap()
    };
    // Positive: 2.0 / 1.5 = 1.33 < 1.5.
    assert_eq!(pen(1.0).sample(&[2.0, 1.5], &[0]).unwrap(), 0);
    assert_eq!(pen(1.5).sample(&[2.0, 1.5], &[0]).unwrap(), 1);
    // Negative: -1.0 * 1.5 = -1.5 < -1.2.
    assert_eq!(pen(1.0).sample(&[-1.0, -1.2], &[0]).unwrap(), 0);
    assert_eq!(pen(1.5).sample(&[-1.0, -1.2], &[0]).unwrap(), 1);
    // Once per distinct id: 2.0 / 1.5 = 1.33 > 1.0 (thrice would be 0.59).
    assert_eq!(pen(1.5).sample(&[2.0, 1.0], &[0, 0, 0]).unwrap(), 0);
    // Ids past the vocab (e.g. image placeholders) are ignored.
    assert_eq!(pen(1.5).sample(&[2.0, 1.0], &[0, 99]).unwrap(), 0);
}

#[test]
fn same_seed_same_draws_other_seed_other_draws() {
    let flat: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).cos()).collect();
    let draws = |seed| {
        let mut s = sampler(1.0, None, Some(0.9), seed);
        (0..200)
            .map(|_| s.sample(&flat, &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(1), draws(1));
    assert_ne!(draws(1), draws(2));
}

#[test]
fn nan_is_never_drawn_and_never_panics() {
    let logits = [f32::NAN, 1.0, f32::NAN, 0.5, f32::NEG_INFINITY];
    for (t, k, p) in [
        (0.0, None, None),
        (1.0, None, None),
        (1.0, Some(2), Some(0.9)),
    ] {
        let mut s = sampler(t, k, p, 5);
        for _ in 0..1_000 {
            let id = s.sample(&logits, &[]).unwrap();
            assert!(id == 1 || id == 3, "drew {id}");
        }
    }
    for t in [0.0, 1.0] {
        let mut s = sampler(t, None, None, 5);
        let all_bad = [f32::NAN, f32::NEG_INFINITY, f32::NAN];
        assert!(matches!(
            s.sample(&all_bad, &[]),
            Err(InferError::Logits(_))
        ));
        assert!(matches!(s.sample(&[], &[]), Err(InferError::Logits(_))));
        // +inf takes all the mass.
        assert_eq!(s.sample(&[1.0, f32::INFINITY, 2.0], &[]).unwrap(), 1);
    }
}

#[test]
fn bad_settings_are_refused() {
    let bad = [
        SamplingConfig {
            temperature: -1.0,
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            temperature: f32::NAN,
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            top_p: Some(1.5),
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            repetition_penalty: 0.0,
            ..SamplingConfig::greedy()
        },
    ];
    for cfg in bad {
        let err = Sampler::new(cfg.clone()).unwrap_err();
        assert!(matches!(err, InferError::Config(_)), "{cfg:?}");
        assert!(!err.to_string().contains('\n'));
    }
}
