//! The delivery queue every network exporter shares (OpenTelemetry's batch processor, split
//! from the exporter that knows the wire format). The pipeline pushes items into a bounded
//! queue that drops its oldest when full; one task sends them in batches — once a batch is
//! full or the flush interval passed — with at most `concurrency` calls in flight. A failed
//! attempt the sender calls retryable (throttling, 5xx, timeouts, an endpoint that is down)
//! is retried with backoff, or after the wait the endpoint asked for; from a batch's first
//! retryable failure until it is done no new batch leaves, so the queue (up to its bound) and
//! the batches already in flight are all that is held. Every item is accounted for: sent, unprocessed (the
//! endpoint refused it in a successful call), dropped (queue full, or the call failed for
//! good), or still queued.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Items held at most; beyond, the oldest are dropped (counted).
    pub capacity: usize,
    /// Weight (documents, spans) per call at most.
    pub max_weight: usize,
    /// Bytes per call at most (an item larger than this goes alone).
    pub max_bytes: usize,
    pub flush_interval: Duration,
    pub concurrency: usize,
    /// Where call latencies are observed (the `/metrics` histogram).
    pub latency: Option<crate::status::metrics::ExportLatency>,
}

/// What a batch limit counts.
pub trait Item: Send + Sync + 'static {
    /// Documents or spans in this item.
    fn weight(&self) -> usize;
    fn bytes(&self) -> usize;
}

impl Item for String {
    fn weight(&self) -> usize {
        1
    }

    fn bytes(&self) -> usize {
        self.len()
    }
}

/// The result of one attempt at delivering a batch.
#[derive(Debug)]
pub enum Attempt {
    /// Accepted; `unprocessed` of its weight were refused by the endpoint (never retried).
    Delivered { unprocessed: u64 },
    /// Worth another try: after `after` when the endpoint said (`Retry-After`), else backoff.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Refused for good: the batch is dropped.
    Failed { why: String },
}

/// One endpoint's wire format and transport.
pub trait Sender<T>: Send + Sync + 'static {
    /// What the logs call a call (`PutTraceSegments`, `OTLP export`).
    fn call_name(&self) -> &'static str;
    fn send(&self, batch: &[T]) -> impl Future<Output = Attempt> + Send;
}

#[derive(Debug, Default)]
pub struct QueueStats {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub unprocessed: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    /// Wall time of the last successful call, ms.
    pub last_call_ms: AtomicU64,
}

impl QueueStats {
    /// Every counter, named `<prefix>_<counter>` (in weight: documents or spans).
    pub fn pairs(&self, prefix: &str) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("queued", g(&self.queued)),
            ("sent", g(&self.sent)),
            ("unprocessed", g(&self.unprocessed)),
            ("dropped_queue_full", g(&self.dropped_queue_full)),
            ("dropped_rejected", g(&self.dropped_rejected)),
            ("batches", g(&self.batches)),
            ("retries", g(&self.retries)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}_{k}"), v))
        .collect()
    }
}

struct Shared<T> {
    queue: Mutex<(VecDeque<T>, bool)>, // (items, closed)
    /// A batch is due (a full one waiting) or the queue closed.
    notify: Notify,
    /// The queue closed: cuts a retry backoff short.
    closed: Notify,
    stats: QueueStats,
    config: QueueConfig,
    /// Batches waiting out a retry: while any does, no new batch leaves the queue.
    retrying: AtomicU64,
}

/// The pipeline's handle: push items, close at shutdown.
pub struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Item> Queue<T> {
    fn new(config: QueueConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new((VecDeque::new(), false)),
                notify: Notify::new(),
                closed: Notify::new(),
                stats: QueueStats::default(),
                retrying: AtomicU64::new(0),
                config: QueueConfig {
                    capacity: config.capacity.max(1),
                    ..config
                },
            }),
        }
    }

    pub fn push(&self, item: T) {
        let stats = &self.shared.stats;
        let mut q = self.shared.queue.lock().expect("queue lock");
        if q.0.len() >= self.shared.config.capacity
            && let Some(old) = q.0.pop_front()
        {
            stats
                .dropped_queue_full
                .fetch_add(old.weight() as u64, Ordering::Relaxed);
        }
        stats
            .queued
            .fetch_add(item.weight() as u64, Ordering::Relaxed);
        q.0.push_back(item);
        if q.0.len() >= self.shared.config.max_weight {
            self.shared.notify.notify_one();
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> &QueueStats {
        &self.shared.stats
    }

    /// No more items: the sender drains what is queued and stops.
    pub fn close(&self) {
        self.shared.queue.lock().expect("queue lock").1 = true;
        self.shared.notify.notify_one();
        // Every batch waiting out a retry backoff makes its last attempt now.
        self.shared.closed.notify_waiters();
        self.shared.closed.notify_one();
    }
}

/// Starts the sender task.
pub fn start<T: Item, S: Sender<T>>(
    config: QueueConfig,
    sender: S,
) -> (Queue<T>, tokio::task::JoinHandle<()>) {
    let queue = Queue::new(config);
    let task = tokio::spawn(send_loop(Arc::new(sender), queue.shared.clone()));
    (queue, task)
}

async fn send_loop<T: Item, S: Sender<T>>(sender: Arc<S>, shared: Arc<Shared<T>>) {
    let interval = shared.config.flush_interval;
    let mut last_flush = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let (batch, closed, held) = {
            let mut q = shared.queue.lock().expect("queue lock");
            let due = last_flush.elapsed() >= interval || q.1;
            let closed = q.1;
            let held = !closed && shared.retrying.load(Ordering::Relaxed) > 0;
            let batch = if held {
                Vec::new()
            } else {
                next_batch(&mut q.0, due, &shared.config)
            };
            (batch, closed, held)
        };
        if batch.is_empty() {
            if closed {
                while in_flight.join_next().await.is_some() {}
                return;
            }
            let wait = if held {
                // Until the retry ends (or the queue closes): no hurry.
                Duration::from_millis(100)
            } else {
                interval
                    .saturating_sub(last_flush.elapsed())
                    .max(Duration::from_millis(10))
            };
            tokio::select! {
                () = shared.notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            if last_flush.elapsed() >= interval {
                last_flush = Instant::now() - interval; // due now, even if empty
            }
            continue;
        }
        while in_flight.len() >= shared.config.concurrency.max(1) {
            in_flight.join_next().await;
        }
        let (sender, shared) = (sender.clone(), shared.clone());
        in_flight.spawn(async move { send_batch(&*sender, &shared, batch, closed).await });
        last_flush = Instant::now();
    }
}

/// One batch until it is delivered or must be dropped. At shutdown (`closing`) a failed
/// attempt drops it instead of waiting, so a flush deadline can hold.
async fn send_batch<T: Item, S: Sender<T>>(
    sender: &S,
    shared: &Shared<T>,
    batch: Vec<T>,
    closing: bool,
) {
    let stats = &shared.stats;
    let n: u64 = batch.iter().map(|i| i.weight() as u64).sum();
    let mut backoff = FIRST_BACKOFF;
    // Set from the first retryable failure until the batch is done: meanwhile no new batch
    // leaves the queue (the guard undoes it however this ends).
    let mut retrying: Option<Retrying<'_>> = None;
    loop {
        let started = Instant::now();
        let attempt = sender.send(&batch).await;
        if let Some(latency) = &shared.config.latency {
            latency.0.observe(started.elapsed().as_secs_f64());
        }
        // Registered before the flag is read: a close() after the read still wakes us.
        let stop = shared.closed.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let closed = closing || shared.queue.lock().expect("queue lock").1;
        match attempt {
            Attempt::Delivered { unprocessed } => {
                let unprocessed = unprocessed.min(n);
                stats.unprocessed.fetch_add(unprocessed, Ordering::Relaxed);
                stats.sent.fetch_add(n - unprocessed, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_call_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                return;
            }
            Attempt::Retry { why, after } if !closed => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = after.map_or(backoff, |a| a.clamp(FIRST_BACKOFF, MAX_BACKOFF));
                tracing::warn!(
                    "{} failed ({why}); retrying in {wait:?}",
                    sender.call_name()
                );
                retrying.get_or_insert_with(|| Retrying::new(&shared.retrying));
                // A stop cuts the wait short: one last attempt, then the queue drains.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Attempt::Retry { why, .. } | Attempt::Failed { why } => {
                stats.dropped_rejected.fetch_add(n, Ordering::Relaxed);
                tracing::error!(
                    "{} failed ({why}); dropping {n} of what was queued",
                    sender.call_name()
                );
                return;
            }
        }
    }
}

/// One batch counted among those being retried, for as long as it lives.
struct Retrying<'a>(&'a AtomicU64);

impl<'a> Retrying<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The items to send now: once a full batch is waiting, or when `due` (the flush interval
/// passed, or the queue is closing) — up to the weight and byte limits, oldest first, and
/// always at least one.
fn next_batch<T: Item>(queue: &mut VecDeque<T>, due: bool, config: &QueueConfig) -> Vec<T> {
    let (mut weight, mut bytes, mut n) = (0, 0, 0);
    for item in queue.iter() {
        let (w, b) = (item.weight(), item.bytes());
        if n > 0 && (weight + w > config.max_weight || bytes + b > config.max_bytes) {
            break;
        }
        weight += w;
        bytes += b;
        n += 1;
    }
    let full = weight >= config.max_weight || n < queue.len();
    if !(due || full) {
        return Vec::new();
    }
    queue.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_weight: usize, max_bytes: usize) -> QueueConfig {
        QueueConfig {
            capacity: 50,
            max_weight,
            max_bytes,
            flush_interval: Duration::from_secs(1),
            concurrency: 1,
            latency: None,
        }
    }

    #[test]
    fn batches_hold_at_most_the_limit_and_wait_for_a_full_one_or_the_interval() {
        let c = config(50, usize::MAX);
        let mut q: VecDeque<String> = (0..120).map(|i| i.to_string()).collect();
        assert_eq!(next_batch(&mut q, false, &c).len(), 50);
        assert_eq!(next_batch(&mut q, false, &c).len(), 50);
        assert!(
            next_batch(&mut q, false, &c).is_empty(),
            "20 wait for more or for the interval"
        );
        let last = next_batch(&mut q, true, &c);
        assert_eq!((last.len(), last[0].as_str()), (20, "100"), "oldest first");
        assert!(q.is_empty());
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_and_an_oversized_item_goes_alone() {
        let c = config(10_000, 10);
        let mut q: VecDeque<String> = ["aaaa", "bbbb", "cccc", &"x".repeat(30)]
            .map(String::from)
            .into();
        assert_eq!(
            next_batch(&mut q, false, &c),
            ["aaaa", "bbbb"],
            "full by bytes"
        );
        assert_eq!(next_batch(&mut q, false, &c), ["cccc"]);
        assert_eq!(next_batch(&mut q, true, &c).len(), 1, "alone, never stuck");
    }

    /// An endpoint that is always down and asks for 30 s.
    struct Down;

    impl Sender<String> for Down {
        fn call_name(&self) -> &'static str {
            "test call"
        }

        async fn send(&self, _batch: &[String]) -> Attempt {
            Attempt::Retry {
                why: "down".into(),
                after: Some(Duration::from_secs(30)),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_cuts_every_retry_wait_short_and_counts_what_it_drops() {
        let (q, task) = start(
            QueueConfig {
                max_weight: 1,
                flush_interval: Duration::from_millis(10),
                concurrency: 4,
                ..config(100, usize::MAX)
            },
            Down,
        );
        q.push("first".into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        q.push("second".into());
        q.push("third".into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            q.len(),
            2,
            "no new batch leaves while one waits to be retried"
        );
        q.close();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stopped long before the 30 s wait")
            .unwrap();
        let s = q.stats();
        assert_eq!(s.dropped_rejected.load(Ordering::Relaxed), 3);
        assert_eq!(s.queued.load(Ordering::Relaxed), 3);
        assert!(s.retries.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_it() {
        let q: Queue<String> = Queue::new(config(50, usize::MAX));
        for i in 0..60 {
            q.push(i.to_string());
        }
        assert_eq!(q.len(), 50);
        assert_eq!(q.stats().dropped_queue_full.load(Ordering::Relaxed), 10);
        assert_eq!(q.stats().queued.load(Ordering::Relaxed), 60);
        assert_eq!(
            q.shared.queue.lock().unwrap().0.front().map(String::as_str),
            Some("10")
        );
        assert_eq!(q.stats().pairs("xray")[0], ("xray_queued".to_owned(), 60));
    }
}
