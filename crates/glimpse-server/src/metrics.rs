//! Prometheus metrics (`GET /metrics`, text format): requests by endpoint
//! and status, prompt and completion tokens, queue depth and busy slots,
//! time-to-first-token and inter-token-latency histograms.

use std::sync::Arc;
use std::time::Duration;

use glimpse_engine::LoadedModel;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// 2.5 ms to ~40 s: a decode step on a small model to a long prefill.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0025, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Family<ModelLabels, Counter>,
    completion_tokens: Family<ModelLabels, Counter>,
    queue_depth: Family<ModelLabels, Gauge>,
    busy_slots: Family<ModelLabels, Gauge>,
    ttft: Histograms,
    itl: Histograms,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("glimpse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of accepted generation requests",
            prompt_tokens.clone(),
        );
        let completion_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "completion_tokens",
            "Generated tokens",
            completion_tokens.clone(),
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Requests waiting for a decoding slot",
            queue_depth.clone(),
        );
        let busy_slots = Family::<ModelLabels, Gauge>::default();
        registry.register("busy_slots", "Decoding slots in use", busy_slots.clone());
        let ttft = Histograms::new_with_constructor(latency_histogram);
        registry.register(
            "time_to_first_token_seconds",
            "Request arrival to its first generated token",
            ttft.clone(),
        );
        let itl = Histograms::new_with_constructor(latency_histogram);
        registry.register(
            "inter_token_latency_seconds",
            "Gap between consecutive generated tokens of one request",
            itl.clone(),
        );
        Self {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            queue_depth,
            busy_slots,
            ttft,
            itl,
        }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    pub fn tokens(&self, model: &str, prompt: usize, completion: usize) {
        let labels = ModelLabels {
            model: model.to_string(),
        };
        self.prompt_tokens
            .get_or_create(&labels)
            .inc_by(prompt as u64);
        self.completion_tokens
            .get_or_create(&labels)
            .inc_by(completion as u64);
    }

    pub fn first_token(&self, model: &str, after: Duration) {
        self.ttft
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .observe(after.as_secs_f64());
    }

    pub fn inter_token(&self, model: &str, gap: Duration) {
        self.itl
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .observe(gap.as_secs_f64());
    }

    /// The text exposition, with the scheduler gauges read now.
    pub fn render(&self, models: &[Arc<LoadedModel>]) -> String {
        for m in models {
            if let Some(stats) = m.stats() {
                let labels = ModelLabels {
                    model: m.id.clone(),
                };
                self.queue_depth
                    .get_or_create(&labels)
                    .set(stats.queued() as i64);
                self.busy_slots
                    .get_or_create(&labels)
                    .set(stats.busy() as i64);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
