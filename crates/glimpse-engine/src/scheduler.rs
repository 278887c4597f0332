//! Continuous batching: up to `parallel` sequences decode together, one
//! batched decoder forward per step across all of them, each with its own
//! KV cache, sampler and stop rules. A new request is prefilled between
//! steps and joins the batch; a finished or cancelled one leaves at once.
//! Requests beyond the slots wait in a bounded queue; beyond that,
//! [`PipelineError::Busy`].
//!
//! One thread per model runs the loop; callers hand it prepared prompts
//! (template rendered, images encoded: that work happens on the caller's
//! thread, so a bad image fails its own request before it queues) and
//! receive [`Event`]s on a channel. A dropped receiver cancels the request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_infer::{FinishReason, GenerationConfig, Sequence};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::pipeline::causal_lm::one_line;
use crate::pipeline::{PipelineError, Result};

/// What a request's receiver gets, in order: `Token`s, then one `Done` or
/// one `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// One generated token and the text it made printable (often empty
    /// inside a multi-byte character or a possible stop string).
    Token {
        text: String,
    },
    Done(Summary),
    /// The request failed after it was accepted; one line.
    Error(String),
}

/// How a finished request went.
#[derive(Debug, Clone)]
pub struct Summary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt positions the images fill.
    pub image_tokens: usize,
    /// Submission to the first token.
    pub time_to_first_token: Duration,
    /// Submission to the end.
    pub total: Duration,
    /// The whole generated text (cut before a stop string).
    pub text: String,
}

/// A prompt ready for the decoder, with its generation settings.
pub struct Prepared<P> {
    /// What the model's prefill reads (ids, or ids and image rows).
    pub prompt: P,
    pub prompt_ids: Vec<u32>,
    pub image_tokens: usize,
    pub generation: GenerationConfig,
}

/// A model the scheduler can drive: prefill one prompt into a fresh cache,
/// then advance many caches by one token each in one batched forward.
pub trait BatchModel: Send + Sync + 'static {
    type Prompt: Send + 'static;
    type Cache: Send;

    fn tokenizer(&self) -> &Tokenizer;

    /// # Shapes
    /// -> the prompt's last-position logits (V,)
    fn prefill(&self, prompt: &Self::Prompt) -> Result<(Self::Cache, Vec<f32>)>;

    /// # Shapes
    /// `ids`: B tokens, one per cache -> B rows of logits (V,)
    fn step_many(&self, ids: &[u32], caches: &mut [&mut Self::Cache]) -> Result<Vec<Vec<f32>>>;
}

#[derive(Debug, Clone, Copy)]
pub struct SchedulerOptions {
    /// Sequences decoding together.
    pub parallel: usize,
    /// Requests waiting for a slot before new ones are refused.
    pub queue: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            parallel: 4,
            queue: 64,
        }
    }
}

/// Live counts, for metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    queued: AtomicUsize,
    busy: AtomicUsize,
}

impl SchedulerStats {
    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Slots decoding a sequence.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }
}

struct Job<P> {
    prepared: Prepared<P>,
    events: UnboundedSender<Event>,
    submitted: Instant,
}

/// The handle callers submit through; dropping it lets the loop finish
/// the sequences it holds and end.
pub struct Scheduler<P> {
    jobs: SyncSender<Job<P>>,
    stats: Arc<SchedulerStats>,
    options: SchedulerOptions,
}

impl<P: Send + 'static> Scheduler<P> {
    /// Starts the loop on its own thread.
    pub fn start<M>(model: Arc<M>, options: SchedulerOptions, name: &str) -> Result<Self>
    where
        M: BatchModel<Prompt = P>,
    {
        if options.parallel == 0 {
            return Err(PipelineError::Usage("--parallel must be at least 1".into()));
        }
        // Room for a job per free slot (taken between steps) plus the
        // queue; `submit` holds the queue to its length.
        let (jobs, rx) = sync_channel(options.queue + options.parallel);
        let stats = Arc::new(SchedulerStats::default());
        let loop_stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("scheduler {name}"))
            .spawn(move || run(&*model, rx, options.parallel, &loop_stats))
            .map_err(|e| {
                PipelineError::Internal(format!("cannot start the scheduler thread: {e}"))
            })?;
        Ok(Self {
            jobs,
            stats,
            options,
        })
    }

    /// Queues a request; its events arrive on `events`. Refused with
    /// [`PipelineError::Busy`] when the queue is full.
    pub fn submit(&self, prepared: Prepared<P>, events: UnboundedSender<Event>) -> Result<()> {
        let job = Job {
            prepared,
            events,
            submitted: Instant::now(),
        };
        // Counted before the send: the loop may take the job at once.
        let waiting = self.stats.queued.fetch_add(1, Ordering::SeqCst);
        let free = self.options.parallel.saturating_sub(self.stats.busy());
        if waiting >= self.options.queue + free {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(self.busy());
        }
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => self.busy(),
                    TrySendError::Disconnected(_) => {
                        PipelineError::Busy("the scheduler has stopped".into())
                    }
                })
            }
        }
    }

    fn busy(&self) -> PipelineError {
        PipelineError::Busy(format!(
            "all {} slots are busy and {} requests are waiting; try again shortly",
            self.options.parallel, self.options.queue
        ))
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }
}

/// A sequence holding a slot.
struct Active<'t, C> {
    sequence: Sequence<'t>,
    cache: C,
    events: UnboundedSender<Event>,
    /// The token the next step feeds.
    last: u32,
    submitted: Instant,
    first_token: Duration,
    image_tokens: usize,
}

fn run<M: BatchModel>(
    model: &M,
    jobs: Receiver<Job<M::Prompt>>,
    parallel: usize,
    stats: &SchedulerStats,
) {
    let mut active: Vec<Active<'_, M::Cache>> = Vec::with_capacity(parallel);
    // Each request's last event (done or failed) waits here until the busy
    // count no longer holds its slot: a client that saw its answer end then
    // sees the slot free.
    let mut last_words: Vec<LastWord> = Vec::new();
    let mut open = true;
    while open || !active.is_empty() {
        // Fill free slots: block only when nothing is decoding.
        while open && active.len() < parallel {
            let job = if active.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match job {
                Ok(job) => {
                    // The slot is counted busy before the job leaves the
                    // queue count and before its prefill (which sends its
                    // first token): `submit` never sees the slot free twice.
                    stats.busy.fetch_add(1, Ordering::SeqCst);
                    stats.queued.fetch_sub(1, Ordering::SeqCst);
                    match admit(model, job, &mut last_words) {
                        Some(a) => active.push(a),
                        None => {
                            stats.busy.fetch_sub(1, Ordering::SeqCst);
                            send_all(&mut last_words);
                        }
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // A client that went away frees its slot before the step.
        active.retain(|a| !a.events.is_closed());
        stats.busy.store(active.len(), Ordering::SeqCst);
        if active.is_empty() {
            continue;
        }
        let ids: Vec<u32> = active.iter().map(|a| a.last).collect();
        let stepped = guarded(|| {
            let mut caches: Vec<&mut M::Cache> = active.iter_mut().map(|a| &mut a.cache).collect();
            model.step_many(&ids, &mut caches)
        });
        match stepped {
            Ok(rows) => {
                let mut keep = Vec::with_capacity(active.len());
                for (mut a, logits) in active.drain(..).zip(rows) {
                    if advance(&mut a, &logits, &mut last_words) {
                        keep.push(a);
                    }
                }
                active = keep;
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!("decode step failed: {msg}");
                for a in active.drain(..) {
                    last_words.push((a.events, Event::Error(msg.clone())));
                }
            }
        }
        stats.busy.store(active.len(), Ordering::SeqCst);
        send_all(&mut last_words);
    }
    stats.busy.store(0, Ordering::SeqCst);
}

/// Prefills a queued request; `None` when it already ended (cancelled
/// while queued, failed, or finished by its first token).
fn admit<'t, M: BatchModel>(
    model: &'t M,
    job: Job<M::Prompt>,
    last_words: &mut Vec<LastWord>,
) -> Option<Active<'t, M::Cache>> {
    let Job {
        prepared,
        events,
        submitted,
    } = job;
    if events.is_closed() {
        return None;
    }
    let sequence = match Sequence::new(
        model.tokenizer(),
        &prepared.prompt_ids,
        &prepared.generation,
    ) {
        Ok(s) => s,
        Err(e) => {
            last_words.push((events, Event::Error(one_line(e))));
            return None;
        }
    };
    if sequence.finished().is_some() {
        // A budget of zero tokens: done without a forward pass.
        let done = summary(
            &sequence,
            FinishReason::Length,
            prepared.image_tokens,
            submitted,
            Duration::ZERO,
        );
        last_words.push((events, Event::Done(done)));
        return None;
    }
    match guarded(|| model.prefill(&prepared.prompt)) {
        Ok((cache, logits)) => {
            let mut a = Active {
                sequence,
                cache,
                events,
                last: 0,
                submitted,
                first_token: Duration::ZERO,
                image_tokens: prepared.image_tokens,
            };
            advance(&mut a, &logits, last_words).then_some(a)
        }
        Err(e) => {
            last_words.push((events, Event::Error(e.to_string())));
            None
        }
    }
}

/// Feeds one row of logits; false when the sequence left (finished,
/// failed, or its receiver is gone).
fn advance<C>(a: &mut Active<'_, C>, logits: &[f32], last_words: &mut Vec<LastWord>) -> bool {
    let step = match a.sequence.accept(logits) {
        Ok(step) => step,
        Err(e) => {
            last_words.push((a.events.clone(), Event::Error(one_line(e))));
            return false;
        }
    };
    if a.sequence.generated().len() == 1 {
        a.first_token = a.submitted.elapsed();
    }
    if a.events.send(Event::Token { text: step.text }).is_err() {
        return false;
    }
    a.last = step.token;
    match step.finished {
        Some(reason) => {
            let done = summary(
                &a.sequence,
                reason,
                a.image_tokens,
                a.submitted,
                a.first_token,
            );
            last_words.push((a.events.clone(), Event::Done(done)));
            false
        }
        None => true,
    }
}

/// A request's final event and where it goes.
type LastWord = (UnboundedSender<Event>, Event);

fn send_all(last_words: &mut Vec<LastWord>) {
    for (events, event) in last_words.drain(..) {
        let _ = events.send(event);
    }
}

fn summary(
    sequence: &Sequence<'_>,
    reason: FinishReason,
    image_tokens: usize,
    submitted: Instant,
    first_token: Duration,
) -> Summary {
    Summary {
        finish_reason: reason,
        prompt_tokens: sequence.prompt_len(),
        completion_tokens: sequence.generated().len(),
        image_tokens,
        time_to_first_token: first_token,
        total: submitted.elapsed(),
        text: sequence.text().to_string(),
    }
}

/// Runs model code so that a panic inside it fails the requests it was
/// serving instead of the scheduler thread (and every later request).
fn guarded<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(PipelineError::Internal(format!(
            "model code panicked: {}",
            one_line(what)
        )))
    })
}
