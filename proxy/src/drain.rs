//! Graceful shutdown: listeners stop accepting and connections finish
//! their in-flight work when the drain signal fires; the proxy then waits
//! until every connection is gone or the deadline passes.

use std::time::Duration;

use tokio::sync::watch;

/// The sending side, held by the binary.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by every listener and connection; its lifetime is what draining
/// waits for.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

/// A new drain signal and its first watch.
pub fn channel() -> (Drain, Watch) {
    let (tx, rx) = watch::channel(false);
    (Drain { tx }, Watch { rx })
}

impl Drain {
    /// Signals every watch, then waits until all are dropped or `deadline`
    /// passes. Returns whether everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.tx.send_replace(true);
        tokio::time::timeout(deadline, self.tx.closed())
            .await
            .is_ok()
    }

    /// How many watches (listeners and connections) are alive.
    pub fn active(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl Watch {
    /// Resolves once draining has started.
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watches() {
        let (drain, watch) = channel();
        let mut w = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            w.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(w);
        });
        assert!(drain.drain(Duration::from_secs(5)).await);
        assert!(task.await.is_ok());
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let (drain, watch) = channel();
        let _held = watch;
        assert!(!drain.drain(Duration::from_millis(50)).await);
    }
}
