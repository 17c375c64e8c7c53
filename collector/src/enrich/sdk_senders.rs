//! Processes and pods that send their own X-Ray SDK segments, as the UDP relay sees them:
//! their eBPF spans are dropped (the SDK's own segment wins).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A process (or pod) counts as instrumented this long after its last SDK document.
pub const SDK_TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    Pid(u32),
    Pod(String),
}

#[derive(Clone, Default)]
pub struct SdkSenders {
    inner: Arc<Mutex<Marks>>,
}

/// When each process and pod last sent an SDK document, kept apart so that a lookup on the
/// segment path (every segment asks) borrows the pod UID instead of building a key.
#[derive(Default)]
struct Marks {
    pids: HashMap<u32, Instant>,
    pods: HashMap<String, Instant>,
}

impl Marks {
    fn len(&self) -> usize {
        self.pids.len() + self.pods.len()
    }
}

impl SdkSenders {
    pub fn mark(&self, sender: Sender, now: Instant) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let known = match &sender {
            Sender::Pid(pid) => m.pids.contains_key(pid),
            Sender::Pod(uid) => m.pods.contains_key(uid),
        };
        if m.len() >= MAX_ENTRIES && !known {
            m.pids.retain(|_, t| now.duration_since(*t) < SDK_TTL);
            m.pods.retain(|_, t| now.duration_since(*t) < SDK_TTL);
            if m.len() >= MAX_ENTRIES {
                return;
            }
        }
        match sender {
            Sender::Pid(pid) => m.pids.insert(pid, now),
            Sender::Pod(uid) => m.pods.insert(uid, now),
        };
    }

    /// Whether the process (or its pod) sent SDK documents recently.
    pub fn is_instrumented(&self, pid: u32, pod_uid: Option<&str>, now: Instant) -> bool {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |t: Option<&Instant>| t.is_some_and(|t| now.duration_since(*t) < SDK_TTL);
        fresh(m.pids.get(&pid)) || pod_uid.is_some_and(|u| fresh(m.pods.get(u)))
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_expire() {
        let s = SdkSenders::default();
        let t0 = Instant::now();
        s.mark(Sender::Pid(7), t0);
        s.mark(Sender::Pod("uid-1".into()), t0);
        assert!(s.is_instrumented(7, None, t0));
        assert!(s.is_instrumented(8, Some("uid-1"), t0));
        assert!(!s.is_instrumented(8, None, t0));
        assert!(!s.is_instrumented(7, None, t0 + SDK_TTL));
    }
}
