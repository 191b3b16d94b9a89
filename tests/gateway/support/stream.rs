//! Reading a `Subscribe` stream in tests.

use std::time::Duration;

use tonic::Streaming;

use messenger_gateway::edge::grpc::pb;

/// The next `n` events, failing if they do not come within 10 s.
pub async fn next_events(
    stream: &mut Streaming<pb::InboundEvent>,
    n: usize,
) -> Vec<pb::InboundEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        events.push(next);
    }
    events
}

/// Asserts nothing more arrives for a moment.
pub async fn assert_quiet(stream: &mut Streaming<pb::InboundEvent>) {
    let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(more.is_err(), "unexpected event: {more:?}");
}
