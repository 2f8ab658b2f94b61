//! Quiescence: many "something may have changed" signals become one
//! reconcile, like consul-template's `wait { min, max }`.
//!
//! After the first trigger, wait until `min` has passed with no further
//! trigger, but never longer than `max` after the first one, so a catalog
//! that flaps forever still converges. `min = 0` reconciles at once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The `wait { min, max }` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiescence {
    /// Quiet time that ends a burst.
    pub min: Duration,
    /// Longest a burst may delay a reconcile.
    pub max: Duration,
}

impl Quiescence {
    /// `min`/`max`, with `max` raised to `min` if smaller.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
        }
    }

    /// Called after a first trigger arrived: absorbs the triggers of the
    /// same burst, each handed to `absorbed`, and returns when the burst is
    /// over. Returns `false` when the channel closed (shutdown).
    pub async fn settle<T>(&self, rx: &mut mpsc::Receiver<T>, mut absorbed: impl FnMut(T)) -> bool {
        if self.min.is_zero() {
            while let Ok(t) = rx.try_recv() {
                absorbed(t);
            }
            return true;
        }
        let first = Instant::now();
        let hard = first + self.max;
        loop {
            let quiet = (Instant::now() + self.min).min(hard);
            tokio::select! {
                _ = tokio::time::sleep_until(quiet) => return true,
                got = rx.recv() => {
                    let Some(t) = got else {
                        return false;
                    };
                    absorbed(t);
                    if Instant::now() >= hard {
                        return true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_after_min_quiet_time() {
        let q = Quiescence::new(200 * MS, 5000 * MS);
        let (tx, mut rx) = mpsc::channel(64);
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(()).await.expect("send");
                tokio::time::sleep(50 * MS).await;
            }
            // keep the channel open past the burst
            tokio::time::sleep(10_000 * MS).await;
        });
        rx.recv().await.expect("first trigger");
        let mut absorbed = 0;
        assert!(q.settle(&mut rx, |()| absorbed += 1).await);
        // last trigger at 100 ms, quiet until 300 ms
        assert_eq!(start.elapsed(), 300 * MS);
        assert_eq!(absorbed, 2, "the burst's other triggers are handed over");
    }

    #[tokio::test(start_paused = true)]
    async fn endless_flapping_is_cut_at_max() {
        let q = Quiescence::new(200 * MS, 1000 * MS);
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(50 * MS).await;
            }
        });
        rx.recv().await.expect("first trigger");
        let start = Instant::now();
        assert!(q.settle(&mut rx, drop).await);
        assert!(start.elapsed() <= 1000 * MS, "{:?}", start.elapsed());
        assert!(start.elapsed() >= 950 * MS, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_min_returns_at_once_and_drains() {
        let q = Quiescence::new(Duration::ZERO, Duration::ZERO);
        let (tx, mut rx) = mpsc::channel(8);
        for _ in 0..5 {
            tx.send(()).await.expect("send");
        }
        let start = Instant::now();
        let mut absorbed = 0;
        assert!(q.settle(&mut rx, |()| absorbed += 1).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(absorbed, 5);
        assert!(
            rx.try_recv().is_err(),
            "pending triggers belong to this reconcile"
        );
    }
}
