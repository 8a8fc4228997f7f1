//! Admission: bounds the memory of the requests the service holds at once.
//!
//! A request in flight costs far more than its body: the decoded protobuf,
//! its rows and its business events live until its batch is stored, about
//! ten times the encoded size. Each request therefore takes its encoded
//! size from one budget before it is decoded (as sent, then grown to its
//! decompressed size), and gives it back when it is answered. A request
//! that finds no room within a short wait is refused as busy (HTTP 429 /
//! RESOURCE_EXHAUSTED, retryable), so under overload exporters back off and
//! memory stays flat instead of growing with the number of connections.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{register_int_gauge, IntGauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::SinkError;

/// How long a request waits for room before it is refused.
const WAIT: Duration = Duration::from_millis(500);
/// What a refused exporter is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

static INFLIGHT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("waybill_collector_inflight_bytes", "Encoded bytes of the OTLP requests being decoded, converted or stored")
        .expect("metric registers once")
});

/// The shared budget of encoded request bytes in flight.
#[derive(Clone)]
pub struct Admission {
    budget: Arc<Semaphore>,
    max_bytes: usize,
}

/// A request's share of the budget, returned when dropped.
pub struct Admitted {
    permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        INFLIGHT_BYTES.sub(self.bytes as i64);
    }
}

impl Admission {
    /// A budget of `max_bytes` encoded bytes (at least 1).
    pub fn new(max_bytes: usize) -> Self {
        LazyLock::force(&INFLIGHT_BYTES);
        let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Admission { budget: Arc::new(Semaphore::new(max_bytes)), max_bytes }
    }

    /// Takes `bytes` from the budget, waiting briefly for room. A request
    /// larger than the whole budget takes all of it, so it is never refused
    /// forever.
    pub async fn admit(&self, bytes: usize) -> Result<Admitted, SinkError> {
        let bytes = bytes.clamp(1, self.max_bytes);
        let permit = self.take(bytes).await?;
        Ok(Admitted { permit, bytes })
    }

    /// Grows `admitted` to `bytes` (a body after decompression), within the
    /// same rule: never beyond the whole budget.
    pub async fn grow(&self, admitted: &mut Admitted, bytes: usize) -> Result<(), SinkError> {
        let more = bytes.min(self.max_bytes).saturating_sub(admitted.bytes);
        if more > 0 {
            admitted.permit.merge(self.take(more).await?);
            admitted.bytes += more;
        }
        Ok(())
    }

    async fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, SinkError> {
        let permit = tokio::time::timeout(WAIT, self.budget.clone().acquire_many_owned(bytes as u32))
            .await
            .map_err(|_| SinkError::Busy { retry_after: RETRY_AFTER })?
            .expect("the budget is never closed");
        INFLIGHT_BYTES.add(bytes as i64);
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_refuses_as_busy_and_frees_on_answer() {
        let admission = Admission::new(1000);
        let first = admission.admit(600).await.unwrap();
        assert!(matches!(admission.admit(600).await, Err(SinkError::Busy { .. })));
        drop(first);
        let _second = admission.admit(600).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it() {
        let admission = Admission::new(1000);
        let whole = admission.admit(5000).await.unwrap();
        assert!(matches!(admission.admit(1).await, Err(SinkError::Busy { .. })));
        drop(whole);
        admission.admit(5000).await.unwrap();
    }

    #[tokio::test]
    async fn a_decompressed_body_grows_its_share_up_to_the_whole_budget() {
        let admission = Admission::new(1000);
        let mut admitted = admission.admit(300).await.unwrap();
        admission.grow(&mut admitted, 700).await.unwrap();
        assert!(matches!(admission.admit(301).await, Err(SinkError::Busy { .. })));
        // Past the budget it takes what is left, and is not refused.
        admission.grow(&mut admitted, 50_000).await.unwrap();
        assert_eq!(admitted.bytes, 1000);
        drop(admitted);
        admission.admit(1000).await.unwrap();
    }
}
