//! The runner: corpus replay, then generated cases, each in a child process
//! under a memory budget and a time limit.
//!
//! A `#[test]` calls [`fuzz`] with its [`Target`]. In the test process
//! (the parent) that draws the cases, writes them to a temporary file and
//! re-runs the test binary itself (`current_exe() <test> --exact`) with
//! `GLIMPSE_FUZZ_CHILD` set; in that child the same call runs the cases in
//! order, each inside `catch_unwind` with the allocator armed
//! ([`crate::alloc`]), and prints one line when a case begins and one when
//! it ends. The parent reads those lines: a case that does not end within
//! the time limit is a hang (the child is killed), a child that dies during
//! a case (allocation refused → abort, stack overflow, signal) is a crash of
//! that case; either way a fresh child goes on from the next case. So one
//! bad input costs one case, never the run, and nothing a case does can
//! take the machine's memory: the allocator refuses past the budget and
//! `RLIMIT_AS` backs it up for memory that does not come from the heap.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::{BoxedStrategy, Strategy as _, ValueTree as _};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::alloc;

/// One input: its bytes and how the generator made it (for reports).
#[derive(Debug, Clone)]
pub struct Case {
    pub bytes: Vec<u8>,
    pub why: String,
}

impl Case {
    pub fn new(bytes: impl Into<Vec<u8>>, why: impl Into<String>) -> Self {
        Self {
            bytes: bytes.into(),
            why: why.into(),
        }
    }
}

/// What a target made of one input. `Accepted` and `Refused` both pass the
/// property; `Violation` is a target's own check failing (a parse that
/// accepted absurd sizes, a load that accepted integer weights), written
/// `class: detail` so that the class groups reports.
#[derive(Debug)]
pub enum Verdict {
    Accepted(String),
    Refused(String),
    Violation(String),
}

impl Verdict {
    /// `Ok` → accepted, `Err` → refused, with the error's one-line text.
    pub fn of<T, E: std::fmt::Display>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> Self {
        match r {
            Ok(v) => Verdict::Accepted(ok(v)),
            Err(e) => Verdict::Refused(e.to_string()),
        }
    }
}

/// A fuzz target: what it runs on one input and how inputs are drawn.
pub struct Target {
    /// Folder under `corpus/`.
    pub name: &'static str,
    /// The `#[test]` function that calls [`fuzz`] with this target (the
    /// child process is started with it as its exact filter).
    pub test_fn: &'static str,
    /// File extension of corpus files.
    pub ext: &'static str,
    pub run: fn(&[u8]) -> Verdict,
    /// Valid inputs; [`seeds_accepted`] checks the target accepts each.
    pub seeds: fn() -> Vec<Case>,
    /// Mutations of the seeds (and generated inputs).
    pub strategy: fn() -> BoxedStrategy<Case>,
    /// Generated cases per run when `GLIMPSE_FUZZ_CASES` is not set.
    pub default_cases: usize,
    /// Heap growth one case may reach, in MiB, unless `GLIMPSE_FUZZ_MAX_MB`.
    pub budget_mb: usize,
}

pub(crate) const MARK: &str = "@@glimpse-fuzz";
/// What the child tells the parent when a case panicked or an allocation
/// was refused, before it writes the backtrace.
pub(crate) const REPORTING_LINE: &[u8] = b"\n@@glimpse-fuzz\tP\n";
/// Time a child gets to write a backtrace after [`REPORTING_LINE`].
const REPORT_TIME: Duration = Duration::from_secs(60);
const CHILD_ENV: &str = "GLIMPSE_FUZZ_CHILD";
const CASES_FILE_ENV: &str = "GLIMPSE_FUZZ_CASES_FILE";
const START_ENV: &str = "GLIMPSE_FUZZ_START";
const BUDGET_ENV: &str = "GLIMPSE_FUZZ_BUDGET_BYTES";

/// Run settings, from the environment (documented in docs/reliability.md).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Generated cases per target (`GLIMPSE_FUZZ_CASES`).
    pub cases: Option<usize>,
    /// `GLIMPSE_FUZZ_SEED`: a number, or `random`.
    pub seed: u64,
    /// One case's time limit (`GLIMPSE_FUZZ_TIMEOUT_S`, default 5).
    pub timeout: Duration,
    /// Overrides every target's budget (`GLIMPSE_FUZZ_MAX_MB`).
    pub budget_mb: Option<usize>,
    /// Write new failing inputs to the corpus (`GLIMPSE_FUZZ_SAVE`, default 1).
    pub save: bool,
    /// A target stops drawing new cases after this much wall time
    /// (`GLIMPSE_FUZZ_TIME_S`, default 120; 0 for no limit).
    pub wall: Option<Duration>,
    /// A target stops after this many distinct failures
    /// (`GLIMPSE_FUZZ_MAX_FAILURES`, default 24), after ten times as many
    /// failing cases, or after 4 hangs, which cost the full time limit each.
    pub max_failures: usize,
    /// Appends every case's outcome to this file (`GLIMPSE_FUZZ_LOG`): to
    /// see what the generators reach, not only what fails.
    pub log: Option<PathBuf>,
}

impl Settings {
    pub fn from_env() -> Self {
        let num = |k: &str| -> Option<u64> {
            let v = std::env::var(k).ok()?;
            match v.trim().parse() {
                Ok(n) => Some(n),
                Err(_) => panic!("{k}={v:?} is not a whole number"),
            }
        };
        let seed = match std::env::var("GLIMPSE_FUZZ_SEED").ok().as_deref() {
            None | Some("") => 1,
            Some("random") => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            Some(_) => num("GLIMPSE_FUZZ_SEED").unwrap_or(1),
        };
        Self {
            cases: num("GLIMPSE_FUZZ_CASES").map(|n| n as usize),
            seed,
            timeout: Duration::from_secs(num("GLIMPSE_FUZZ_TIMEOUT_S").unwrap_or(5).max(1)),
            budget_mb: num("GLIMPSE_FUZZ_MAX_MB").map(|n| n as usize),
            save: num("GLIMPSE_FUZZ_SAVE").unwrap_or(1) != 0,
            wall: match num("GLIMPSE_FUZZ_TIME_S").unwrap_or(120) {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            max_failures: num("GLIMPSE_FUZZ_MAX_FAILURES").unwrap_or(24) as usize,
            log: std::env::var_os("GLIMPSE_FUZZ_LOG").map(PathBuf::from),
        }
    }
}

/// The corpus folder of a target: `crates/glimpse-fuzz/corpus/<name>`.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// Whether this process is the child that runs `target`'s cases.
pub fn is_child_of(target: &Target) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|c| c == target.name)
}

/// Runs `target`: corpus first, then generated cases. In the test process
/// this panics with a report when any case failed; in the child process it
/// is the worker.
pub fn fuzz(target: &Target) {
    if let Ok(child_of) = std::env::var(CHILD_ENV) {
        if child_of == target.name {
            worker(target);
        }
        return;
    }
    assert!(
        alloc::installed(),
        "the test binary must install glimpse_fuzz::CountingAlloc as #[global_allocator]"
    );
    let settings = Settings::from_env();
    let report = run_parent(target, &settings);
    eprintln!("{}", report.summary);
    if !report.failures.is_empty() {
        panic!("{}", report.failure_text());
    }
}

/// Runs each seed in this process and panics unless the target accepts
/// all of them: a fuzzer whose seeds are refused only explores error paths.
pub fn seeds_accepted(target: &Target) {
    let mut bad = Vec::new();
    for case in (target.seeds)() {
        match (target.run)(&case.bytes) {
            Verdict::Accepted(_) => {}
            other => bad.push(format!("{}: {other:?}", case.why)),
        }
    }
    assert!(
        bad.is_empty(),
        "{}: seeds not accepted:\n{}",
        target.name,
        bad.join("\n")
    );
}

// ---------------------------------------------------------------- child

/// The first panic of the current case: message, location, frames.
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

fn panic_hook(info: &std::panic::PanicHookInfo) {
    crate::alloc::tell_parent_reporting();
    crate::alloc::unbudgeted(|| record_panic(info));
}

fn record_panic(info: &std::panic::PanicHookInfo) {
    let msg = payload_text(info.payload());
    let loc = info
        .location()
        .map(|l| format!("{}:{}", short_path(l.file()), l.line()))
        .unwrap_or_else(|| "unknown".into());
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames = Frames::parse(&bt);
    let sig = format!(
        "panic at {loc}{}",
        frames
            .first_glimpse()
            .filter(|f| !f.contains(&loc))
            .map(|f| format!(" in {f}"))
            .unwrap_or_default()
    );
    let text = format!("{msg} [at {loc}] [frames: {}]", frames.summary(4));
    let mut slot = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some((sig, text));
    }
}

fn worker(target: &Target) {
    let path = std::env::var(CASES_FILE_ENV).expect("cases file");
    let start: usize = std::env::var(START_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let budget: usize = std::env::var(BUDGET_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512 << 20);
    let cases = read_cases(Path::new(&path)).expect("read cases file");
    // as the glimpse binary does: bounded work meets its memory budget
    glimpse_data::mem_budget::install();
    std::panic::set_hook(Box::new(panic_hook));
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    for (i, case) in cases.iter().enumerate().skip(start) {
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let begin = format!("{MARK}\tB\t{i}\n");
        let _ = err.write_all(begin.as_bytes());
        let _ = out.write_all(begin.as_bytes());
        let _ = out.flush();
        let t0 = Instant::now();
        alloc::arm(budget);
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(case)));
        let peak = alloc::disarm();
        let ms = t0.elapsed().as_millis();
        let (kind, sig, msg) = match result {
            Ok(Verdict::Accepted(m)) => ("accepted", String::new(), m),
            Ok(Verdict::Refused(m)) => ("refused", String::new(), m),
            Ok(Verdict::Violation(m)) => {
                let class = m.split(':').next().unwrap_or("").trim().to_string();
                ("violation", format!("violation: {class}"), m)
            }
            Err(payload) => {
                let caught = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
                let (sig, text) =
                    caught.unwrap_or_else(|| ("panic".into(), payload_text(payload.as_ref())));
                ("panic", sig, text)
            }
        };
        let line = format!(
            "{MARK}\tE\t{i}\t{kind}\t{peak}\t{ms}\t{}\t{}\n",
            one_line(&sig, 300),
            one_line(&msg, 600)
        );
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

// ---------------------------------------------------------------- parent

/// A case that failed the property.
#[derive(Debug, Clone)]
pub struct Failure {
    /// "panic", "violation", "memory", "hang", "stack-overflow", "crash".
    pub kind: String,
    /// What groups failures: kind and the first glimpse location.
    pub signature: String,
    pub message: String,
    /// Where the input came from: a corpus file or generated case k.
    pub origin: String,
    pub input: String,
    pub why: String,
    /// Where it was saved, when it was.
    pub saved: Option<PathBuf>,
}

/// What one target's run came to.
pub struct Report {
    pub target: &'static str,
    pub summary: String,
    pub accepted: usize,
    pub refused: usize,
    pub failures: Vec<Failure>,
}

impl Report {
    /// Failures grouped by signature: one example each, with the count.
    pub fn failure_text(&self) -> String {
        let mut groups: BTreeMap<&str, Vec<&Failure>> = BTreeMap::new();
        for f in &self.failures {
            groups.entry(&f.signature).or_default().push(f);
        }
        let mut out = format!(
            "glimpse-fuzz {}: {} failing case(s), {} distinct\n",
            self.target,
            self.failures.len(),
            groups.len()
        );
        for (sig, fs) in groups {
            let f = fs[0];
            out.push_str(&format!(
                "- [{}] x{}: {sig}\n    message: {}\n    input ({}): {}\n    made by: {}\n",
                f.kind,
                fs.len(),
                f.message,
                f.origin,
                f.input,
                one_line(&f.why, 400),
            ));
            if let Some(p) = fs.iter().find_map(|f| f.saved.as_ref()) {
                out.push_str(&format!("    saved: {}\n", p.display()));
            }
        }
        out
    }
}

enum Line {
    Begin(usize),
    Reporting,
    End {
        index: usize,
        kind: String,
        peak: usize,
        ms: u64,
        sig: String,
        msg: String,
    },
}

fn parse_line(line: &str) -> Option<Line> {
    let at = line.find(MARK)?;
    let mut parts = line[at + MARK.len()..].trim_start_matches('\t').split('\t');
    match parts.next()? {
        "B" => Some(Line::Begin(parts.next()?.parse().ok()?)),
        "P" => Some(Line::Reporting),
        "E" => Some(Line::End {
            index: parts.next()?.parse().ok()?,
            kind: parts.next()?.to_string(),
            peak: parts.next()?.parse().ok()?,
            ms: parts.next()?.parse().ok()?,
            sig: parts.next()?.to_string(),
            msg: parts.next().unwrap_or("").to_string(),
        }),
        _ => None,
    }
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<Line>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: std::thread::JoinHandle<()>,
}

/// Keeps the tail of the child's stderr (panics print there, refusals
/// print a backtrace there).
const STDERR_KEEP: usize = 1 << 20;

fn spawn(target: &Target, cases_file: &Path, start: usize, budget: usize) -> Running {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([target.test_fn, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, target.name)
        .env(CASES_FILE_ENV, cases_file)
        .env(START_ENV, start.to_string())
        .env(BUDGET_ENV, budget.to_string())
        // One thread for candle's and the data crate's rayon pools: cases
        // are small, and two fuzz targets already share the two cores.
        .env("RAYON_NUM_THREADS", "1")
        // candle captures a backtrace per error when this is on.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let address_space = (budget as u64).saturating_add(4 << 30);
    // SAFETY: the closure runs in the forked child before exec and calls
    // only setrlimit, which is async-signal-safe, on stack data.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(move || {
            let set = |res, limit: u64| {
                let rl = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                libc::setrlimit(res, &rl)
            };
            // A refused allocation aborts the child: no core file for it.
            set(libc::RLIMIT_CORE, 0);
            // Memory that bypasses the heap (mmap) stays bounded too.
            set(libc::RLIMIT_AS, address_space);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn the fuzz child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut stderr_pipe = child.stderr.take().expect("child stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(parsed) = parse_line(&line) {
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let keep = stderr.clone();
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match stderr_pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    k.extend_from_slice(&buf[..n]);
                    if k.len() > 2 * STDERR_KEEP {
                        let cut = k.len() - STDERR_KEEP;
                        k.drain(..cut);
                    }
                }
            }
        }
    });
    Running {
        child,
        lines: rx,
        stderr,
        stderr_thread,
    }
}

/// Stops a child and returns its exit status and the stderr it wrote.
fn reap(mut r: Running, kill: bool) -> (Option<ExitStatus>, String) {
    if kill {
        let _ = r.child.kill();
    }
    let status = r.child.wait().ok();
    let _ = r.stderr_thread.join();
    let text =
        String::from_utf8_lossy(&r.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    (status, text)
}

/// What the child wrote to stderr after case `index` began.
fn stderr_of_case(stderr: &str, index: usize) -> &str {
    let begin = format!("{MARK}\tB\t{index}\n");
    match stderr.rfind(&begin) {
        Some(at) => &stderr[at + begin.len()..],
        None => stderr,
    }
}

fn classify_crash(status: Option<ExitStatus>, stderr: &str) -> (String, String, String) {
    use std::os::unix::process::ExitStatusExt as _;
    let status_text = match status {
        Some(s) => match s.signal() {
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("exit status {}", s.code().unwrap_or(-1)),
        },
        None => "status unknown".into(),
    };
    if let Some(at) = stderr.find(alloc::OOM_MARK) {
        let report = &stderr[at..];
        let head = report.lines().next().unwrap_or("");
        let field = |k: &str| -> u64 {
            head.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (size, live, budget) = (field("size="), field("live="), field("budget="));
        let frames = Frames::parse(report);
        // Where the allocation was asked for (a dependency's frames tell
        // apart what a glimpse call site alone would merge: string concat
        // and `replace` under one `render`), and the glimpse code above it.
        let innermost = frames.innermost(3);
        let place = match frames.first_glimpse() {
            Some(g) if innermost.contains(&g) => innermost,
            Some(g) => format!("{innermost} via {g}"),
            None if innermost.is_empty() => "unknown".into(),
            None => innermost,
        };
        let msg = format!(
            "allocation of {} with {} live exceeds the {} budget ({status_text}) [frames: {}]",
            mib(size),
            mib(live),
            mib(budget),
            frames.summary(5)
        );
        return ("memory".into(), format!("memory at {place}"), msg);
    }
    if stderr.contains("has overflowed its stack") {
        return (
            "stack-overflow".into(),
            "stack-overflow".into(),
            format!("stack overflow ({status_text})"),
        );
    }
    let tail: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(MARK))
        .collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    if let Some(line) = stderr.lines().find(|l| l.contains("memory allocation of")) {
        return (
            "memory".into(),
            "memory (address-space limit)".into(),
            format!("{line} ({status_text})"),
        );
    }
    (
        "crash".into(),
        format!("crash ({status_text})"),
        format!("{status_text}: {}", one_line(&tail, 400)),
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Per-target seed: the run's seed mixed with the target's name.
fn rng_for(seed: u64, name: &str) -> TestRng {
    let mut state = seed ^ fnv64(name.as_bytes());
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Heap the drawing of one batch may take in the test process.
const DRAW_BUDGET: usize = 2 << 30;

/// Draws a target's cases from its strategy, deterministically per seed.
pub struct Drawer {
    runner: TestRunner,
    strategy: BoxedStrategy<Case>,
}

impl Drawer {
    pub fn new(target: &Target, seed: u64) -> Self {
        Self {
            runner: TestRunner::new_with_rng(Config::default(), rng_for(seed, target.name)),
            strategy: (target.strategy)(),
        }
    }

    /// The next `n` cases.
    ///
    /// Drawing runs in the test process itself, under the allocator's
    /// budget: a generator that runs away aborts this process with a
    /// backtrace instead of taking the machine's memory. One target draws
    /// at a time, as the budget is the process's.
    pub fn draw(&mut self, n: usize) -> Vec<Case> {
        static DRAWING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = DRAWING.lock().unwrap_or_else(|p| p.into_inner());
        alloc::arm(DRAW_BUDGET);
        let cases = (0..n)
            .map(|_| {
                self.strategy
                    .new_tree(&mut self.runner)
                    .expect("strategy draws a case")
                    .current()
            })
            .collect();
        alloc::disarm();
        cases
    }
}

/// The corpus of a target: every file but the `.txt` notes, by name.
pub fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn write_cases(path: &Path, cases: &[&[u8]]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for c in cases {
        f.write_all(&(c.len() as u64).to_le_bytes())?;
        f.write_all(c)?;
    }
    f.flush()
}

fn read_cases(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[at..at + 8]);
        let len = u64::from_le_bytes(len) as usize;
        at += 8;
        let end = at.checked_add(len).filter(|&e| e <= data.len());
        let Some(end) = end else {
            return Err(std::io::Error::other("cases file cut short"));
        };
        out.push(data[at..end].to_vec());
        at = end;
    }
    Ok(out)
}

struct Stats {
    accepted: usize,
    refused: usize,
    ran: usize,
    peak: usize,
    slowest_ms: u64,
}

/// Cases drawn, written and run at a time: the test process holds one
/// batch of inputs, never all of a long run's.
const BATCH: usize = 256;

/// One case of a batch.
struct Input {
    bytes: Vec<u8>,
    origin: String,
    why: String,
    corpus: bool,
}

/// What a target's run has come to so far.
struct Run<'a> {
    target: &'a Target,
    s: &'a Settings,
    t0: Instant,
    budget: usize,
    stats: Stats,
    failures: Vec<Failure>,
    /// The failing inputs, beside `failures`.
    failing: Vec<(Vec<u8>, bool)>,
    hangs: usize,
    stopped: Option<String>,
    log: Option<std::io::LineWriter<std::fs::File>>,
    dir: tempfile::TempDir,
}

impl<'a> Run<'a> {
    fn new(target: &'a Target, s: &'a Settings) -> Self {
        let log = s.log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(std::io::LineWriter::new)
        });
        Run {
            target,
            s,
            t0: Instant::now(),
            budget: s.budget_mb.unwrap_or(target.budget_mb) << 20,
            stats: Stats {
                accepted: 0,
                refused: 0,
                ran: 0,
                peak: 0,
                slowest_ms: 0,
            },
            failures: Vec::new(),
            failing: Vec::new(),
            hangs: 0,
            stopped: None,
            log,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn fail(&mut self, input: &Input, kind: String, signature: String, message: String) {
        self.failures.push(Failure {
            kind,
            signature,
            message,
            origin: input.origin.clone(),
            input: summarize(&input.bytes),
            why: input.why.clone(),
            saved: None,
        });
        self.failing.push((input.bytes.clone(), input.corpus));
    }

    /// Sets `stopped` when a limit is reached (never during the corpus).
    fn check_limits(&mut self, in_corpus: bool) {
        if self.stopped.is_some() {
            return;
        }
        if let Some(wall) = self.s.wall {
            if !in_corpus && self.t0.elapsed() > wall {
                self.stopped = Some(format!("wall-time budget of {wall:?} spent"));
                return;
            }
        }
        let distinct: std::collections::BTreeSet<&str> =
            self.failures.iter().map(|f| f.signature.as_str()).collect();
        let max = self.s.max_failures;
        if distinct.len() >= max || self.failures.len() >= 10 * max {
            self.stopped = Some(format!(
                "{} failures, {} distinct",
                self.failures.len(),
                distinct.len()
            ));
        } else if self.hangs >= 4 {
            self.stopped = Some(format!("{} hangs", self.hangs));
        }
    }

    /// Runs one batch in child processes, a fresh one after each case that
    /// killed its child or was killed.
    fn batch(&mut self, inputs: &[Input]) {
        let in_corpus = inputs.first().is_some_and(|i| i.corpus);
        let cases_file = self.dir.path().join("cases.bin");
        let bytes: Vec<&[u8]> = inputs.iter().map(|i| i.bytes.as_slice()).collect();
        write_cases(&cases_file, &bytes).expect("write cases file");
        let mut next = 0usize;
        'spawn: while next < inputs.len() {
            let running = spawn(self.target, &cases_file, next, self.budget);
            let mut current: Option<(usize, Instant)> = None;
            loop {
                self.check_limits(in_corpus);
                if self.stopped.is_some() && current.is_none() {
                    reap(running, true);
                    break 'spawn;
                }
                let wait = match current {
                    Some((_, deadline)) => deadline.saturating_duration_since(Instant::now()),
                    None => Duration::from_secs(120),
                };
                match running.lines.recv_timeout(wait) {
                    Ok(Line::Begin(i)) => current = Some((i, Instant::now() + self.s.timeout)),
                    // The case has stopped: what remains is writing a
                    // backtrace, whose first symbolisation can take seconds.
                    Ok(Line::Reporting) => {
                        if let Some((_, deadline)) = &mut current {
                            *deadline = Instant::now() + REPORT_TIME;
                        }
                    }
                    Ok(Line::End {
                        index,
                        kind,
                        peak,
                        ms,
                        sig,
                        msg,
                    }) => {
                        current = None;
                        next = index + 1;
                        let Some(input) = inputs.get(index) else {
                            continue;
                        };
                        self.stats.ran += 1;
                        self.stats.peak = self.stats.peak.max(peak);
                        self.stats.slowest_ms = self.stats.slowest_ms.max(ms);
                        if let Some(log) = &mut self.log {
                            let _ = writeln!(
                                log,
                                "{}\t{}\t{kind}\t{ms}\t{peak}\t{}\t{}",
                                self.target.name,
                                input.origin,
                                one_line(&msg, 300),
                                one_line(&input.why, 300)
                            );
                        }
                        match kind.as_str() {
                            "accepted" => self.stats.accepted += 1,
                            "refused" => self.stats.refused += 1,
                            _ => self.fail(input, kind, sig, msg),
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let Some((i, _)) = current else {
                            let (status, err) = reap(running, true);
                            panic!(
                                "glimpse-fuzz {}: the child started no case within 120 s ({status:?}): {}",
                                self.target.name,
                                tail_of(&err, 2000)
                            );
                        };
                        reap(running, true);
                        self.hangs += 1;
                        self.stats.ran += 1;
                        let msg = format!("no result within {:?}; killed", self.s.timeout);
                        self.fail(&inputs[i], "hang".into(), "hang".into(), msg);
                        next = i + 1;
                        continue 'spawn;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let (status, err) = reap(running, false);
                        match current {
                            Some((i, _)) => {
                                self.stats.ran += 1;
                                let (kind, sig, msg) =
                                    classify_crash(status, stderr_of_case(&err, i));
                                self.fail(&inputs[i], kind, sig, msg);
                                next = i + 1;
                            }
                            None if next < inputs.len() => panic!(
                                "glimpse-fuzz {}: the child exited before case {next} ({status:?}): {}",
                                self.target.name,
                                tail_of(&err, 2000)
                            ),
                            None => {}
                        }
                        continue 'spawn;
                    }
                }
            }
        }
    }

    fn report(mut self, total: usize, corpus_len: usize, draw_ms: u128) -> Report {
        if self.s.save {
            save_failures(self.target, &mut self.failures, &self.failing);
        }
        let distinct: std::collections::BTreeSet<&str> =
            self.failures.iter().map(|f| f.signature.as_str()).collect();
        let summary = format!(
            "glimpse-fuzz {}: {} of {} cases ({} corpus) in {:.1} s (drawing {} ms): {} accepted, {} refused, {} failed ({} distinct); peak heap growth {}, slowest case {} ms{}",
            self.target.name,
            self.stats.ran,
            total,
            corpus_len,
            self.t0.elapsed().as_secs_f64(),
            draw_ms,
            self.stats.accepted,
            self.stats.refused,
            self.failures.len(),
            distinct.len(),
            mib(self.stats.peak as u64),
            self.stats.slowest_ms,
            self.stopped
                .as_ref()
                .map(|r| format!("; stopped early: {r}"))
                .unwrap_or_default()
        );
        Report {
            target: self.target.name,
            summary,
            accepted: self.stats.accepted,
            refused: self.stats.refused,
            failures: self.failures,
        }
    }
}

fn run_parent(target: &Target, s: &Settings) -> Report {
    let mut run = Run::new(target, s);
    let corpus: Vec<Input> = corpus(target.name)
        .into_iter()
        .map(|(p, bytes)| Input {
            bytes,
            origin: format!("corpus {}", short_path(&p.display().to_string())),
            why: "regression corpus".into(),
            corpus: true,
        })
        .collect();
    let corpus_len = corpus.len();
    if !corpus.is_empty() {
        run.batch(&corpus);
    }
    let n = s.cases.unwrap_or(target.default_cases);
    let mut drawer = Drawer::new(target, s.seed);
    let mut draw_ms = 0;
    let mut k = 0;
    while k < n && run.stopped.is_none() {
        let m = BATCH.min(n - k);
        let t = Instant::now();
        let inputs: Vec<Input> = drawer
            .draw(m)
            .into_iter()
            .enumerate()
            .map(|(j, c)| Input {
                bytes: c.bytes,
                origin: format!("generated case {}, seed {}", k + j, s.seed),
                why: c.why,
                corpus: false,
            })
            .collect();
        draw_ms += t.elapsed().as_millis();
        run.batch(&inputs);
        k += m;
    }
    run.report(corpus_len + n, corpus_len, draw_ms)
}

/// Runs the given cases (no corpus, nothing saved) and returns the report
/// instead of panicking: for tests of the harness itself.
pub fn check_cases(target: &Target, cases: Vec<Case>, s: &Settings) -> Report {
    let s = Settings {
        save: false,
        ..s.clone()
    };
    let mut run = Run::new(target, &s);
    let inputs: Vec<Input> = cases
        .into_iter()
        .enumerate()
        .map(|(k, c)| Input {
            bytes: c.bytes,
            origin: format!("given case {k}"),
            why: c.why,
            corpus: false,
        })
        .collect();
    let n = inputs.len();
    run.batch(&inputs);
    run.report(n, 0, 0)
}

/// Saves generated failing inputs to the corpus: the smallest input of
/// each signature the corpus did not already reproduce in this run (up to
/// three for hangs and crashes, which carry no location to tell them apart).
fn save_failures(target: &Target, failures: &mut [Failure], failing: &[(Vec<u8>, bool)]) {
    let covered: std::collections::BTreeSet<String> = failures
        .iter()
        .zip(failing)
        .filter(|(_, (_, corpus))| *corpus)
        .map(|(f, _)| f.signature.clone())
        .collect();
    let mut by_sig: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (f, (_, corpus))) in failures.iter().zip(failing).enumerate() {
        if !corpus && !covered.contains(&f.signature) {
            by_sig.entry(f.signature.clone()).or_default().push(i);
        }
    }
    let dir = corpus_dir(target.name);
    for (sig, mut idx) in by_sig {
        idx.sort_by_key(|&i| failing[i].0.len());
        let keep = if sig.contains(" at ") { 1 } else { 3 };
        for &i in idx.iter().take(keep) {
            let bytes = &failing[i].0;
            if std::fs::create_dir_all(&dir).is_err() {
                return;
            }
            let file = dir.join(format!("{:016x}.{}", fnv64(bytes), target.ext));
            let f = &failures[i];
            let note = format!(
                "target: {}\nkind: {}\nsignature: {}\nmessage: {}\nfound as: {}\nmade by: {}\n",
                target.name, f.kind, f.signature, f.message, f.origin, f.why
            );
            if std::fs::write(&file, bytes).is_ok() {
                let _ = std::fs::write(file.with_extension(format!("{}.txt", target.ext)), note);
                failures[i].saved = Some(file);
            }
        }
    }
}

// ---------------------------------------------------------------- text

/// FNV-1a, 64 bits: stable corpus file names without a hashing dependency.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// At most `max` characters on one line.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

fn tail_of(s: &str, max: usize) -> &str {
    let mut at = s.len().saturating_sub(max);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// A printable summary of an input: text when it is text, else hex.
pub fn summarize(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(|c| !c.is_control() || c.is_whitespace()) => {
            format!("{} bytes of text: {:?}", bytes.len(), one_line(text, 300))
        }
        _ => {
            let hex: String = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
            format!(
                "{} bytes, starting {hex}{}",
                bytes.len(),
                if bytes.len() > 48 { "…" } else { "" }
            )
        }
    }
}

/// `/root/.cargo/registry/src/x/candle-core-0.11.1/src/a.rs` →
/// `candle-core-0.11.1/src/a.rs`; `/work/main/crates/glimpse-models/..` →
/// `crates/glimpse-models/..`.
fn short_path(p: &str) -> String {
    if let Some(at) = p.find("/crates/glimpse-") {
        return p[at + 1..].to_string();
    }
    if let Some(at) = p.find("/registry/src/") {
        let rest = &p[at + "/registry/src/".len()..];
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_string();
    }
    if let Some(at) = p.find("/library/") {
        return p[at + 1..].to_string();
    }
    p.to_string()
}

/// The frames of a std backtrace's text: (function, file:line).
struct Frames(Vec<(String, String)>);

impl Frames {
    fn parse(text: &str) -> Self {
        let mut frames = Vec::new();
        let mut func: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(path) = t.strip_prefix("at ") {
                if let Some(f) = func.take() {
                    frames.push((f, short_path(path.rsplitn(2, ':').last().unwrap_or(path))));
                }
            } else if let Some((num, f)) = t.split_once(": ") {
                if num.chars().all(|c| c.is_ascii_digit()) {
                    func = Some(f.to_string());
                }
            }
        }
        Frames(frames)
    }

    /// Frames of this library (the allocator, the panic hook). std prints
    /// paths under the working directory, which cargo test sets to this
    /// package, as `./…`.
    fn is_ours(f: &(String, String)) -> bool {
        f.0.starts_with("glimpse_fuzz")
            || f.1.starts_with("./src/")
            || f.1.starts_with("crates/glimpse-fuzz/src/")
    }

    fn is_std(f: &(String, String)) -> bool {
        let func = f.0.trim_start_matches('<');
        f.1.starts_with("library/")
            || f.1.contains("/rustc/")
            || ["std::", "core::", "alloc::", "__rust", "rust_", "test::"]
                .iter()
                .any(|p| func.starts_with(p))
    }

    /// The first frame in a glimpse crate other than this one.
    fn first_glimpse(&self) -> Option<String> {
        self.0
            .iter()
            .find(|f| f.1.starts_with("crates/glimpse-") && !Self::is_ours(f))
            .map(|f| f.1.clone())
    }

    /// The `n` innermost frames outside std and this crate, up to and
    /// including the first glimpse one: `a.rs:1 < b.rs:2`.
    fn innermost(&self, n: usize) -> String {
        let mut out: Vec<&str> = Vec::new();
        for f in self
            .0
            .iter()
            .filter(|f| !Self::is_std(f) && !Self::is_ours(f))
        {
            out.push(&f.1);
            if out.len() == n || f.1.starts_with("crates/glimpse-") {
                break;
            }
        }
        out.join(" < ")
    }

    /// Up to `n` frames outside std and this crate, innermost first.
    fn summary(&self, n: usize) -> String {
        let picked: Vec<String> = self
            .0
            .iter()
            .filter(|f| !Self::is_std(f) && !Self::is_ours(f))
            .take(n)
            .map(|(func, at)| {
                let func = func.rsplitn(2, "::h").last().unwrap_or(func);
                format!("{func} ({at})")
            })
            .collect();
        if picked.is_empty() {
            "none outside std".into()
        } else {
            picked.join(" < ")
        }
    }
}
