//! What the source's tests share: waiting, with a deadline, for the
//! source to publish a state.

use std::time::Duration;

use converge_consul::SourceState;
use tokio::sync::watch;

/// Waits until the source publishes a state `pred` accepts, or panics
/// after `deadline` naming `what` and the last state.
pub async fn wait_state(
    rx: &mut watch::Receiver<SourceState>,
    what: &str,
    deadline: Duration,
    pred: impl FnMut(&SourceState) -> bool,
) -> SourceState {
    let got = match tokio::time::timeout(deadline, rx.wait_for(pred)).await {
        Ok(Ok(s)) => Some(s.clone()),
        Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
        Err(_) => None,
    };
    got.unwrap_or_else(|| {
        panic!(
            "timed out after {deadline:?} waiting for {what}; last state: {:#?}",
            *rx.borrow()
        )
    })
}
