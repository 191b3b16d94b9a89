//! `RequestLog`: claims, starts, outcomes, takeovers, expiry.

use super::*;

#[tokio::test]
async fn a_request_id_is_claimed_once_started_recorded_released_and_expires() {
    let day = REQUEST_ID_TTL.as_millis() as i64;
    for b in backends().await {
        let store = &*b.store;
        assert_eq!(
            store.claim_request("r1", "f", 1000, 1000).await.unwrap(),
            Claim::Claimed { token: 1000 },
            "{}",
            b.name
        );
        assert!(store.start_request("r1", 1000).await.unwrap(), "{}", b.name);
        assert_eq!(
            store.claim_request("r1", "f", 1001, 1001).await.unwrap(),
            Claim::Unsettled { claimed_ms: 1000 },
            "{}",
            b.name
        );
        assert_eq!(
            store
                .claim_request("r1", "other", 1002, 1002)
                .await
                .unwrap(),
            Claim::Conflict,
            "{}",
            b.name
        );
        let sent = Sent {
            message_id: Some("mid.1".into()),
            recipient_id: "U".into(),
            graph_calls: 1,
            queued_ms: 0,
        };
        store
            .settle_request("r1", 1000, Some(RecordedOutcome::Sent(sent.clone())))
            .await
            .unwrap();
        assert_eq!(
            store.claim_request("r1", "f", 1003, 1003).await.unwrap(),
            Claim::Recorded(RecordedOutcome::Sent(sent)),
            "{}",
            b.name
        );
        // Released (nothing was delivered): the id may be used again.
        store.claim_request("r2", "f", 1000, 1000).await.unwrap();
        store.settle_request("r2", 1000, None).await.unwrap();
        assert_eq!(
            store.claim_request("r2", "f", 1004, 1004).await.unwrap(),
            Claim::Claimed { token: 1004 }
        );
        // A day later the id is free, whatever it was used for.
        assert_eq!(
            store
                .claim_request("r1", "new", 1000 + day + 1, 1000 + day + 1)
                .await
                .unwrap(),
            Claim::Claimed {
                token: 1000 + day + 1
            },
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn a_claim_whose_call_never_started_is_taken_over_and_its_holder_cannot_start() {
    for b in backends().await {
        let store = &*b.store;
        // Claimed, then the process stopped (or it still waits) before
        // its Graph call: a retry takes the id over, at once.
        assert_eq!(
            store.claim_request("q", "f", 1000, 1000).await.unwrap(),
            Claim::Claimed { token: 1000 }
        );
        let taken = store.claim_request("q", "f", 1000, 1000).await.unwrap();
        assert_eq!(taken, Claim::Claimed { token: 1001 }, "{}", b.name);
        // The first holder may not start, nor settle the new claim away.
        assert!(!store.start_request("q", 1000).await.unwrap(), "{}", b.name);
        store.settle_request("q", 1000, None).await.unwrap();
        assert!(store.start_request("q", 1001).await.unwrap(), "{}", b.name);
        // A claim not started, but made after `take_over_before`, may be
        // waiting on another replica: unsettled, not taken.
        store.claim_request("w", "f", 2000, 2000).await.unwrap();
        assert_eq!(
            store.claim_request("w", "f", 2001, 1999).await.unwrap(),
            Claim::Unsettled { claimed_ms: 2000 },
            "{}",
            b.name
        );
        // Started: no longer taken over, whatever its age within the day.
        assert_eq!(
            store.claim_request("q", "f", 5000, 5000).await.unwrap(),
            Claim::Unsettled { claimed_ms: 1001 },
            "{}",
            b.name
        );
        // Different content under a claim never started is still a conflict.
        store.claim_request("q2", "f", 1000, 1000).await.unwrap();
        assert_eq!(
            store.claim_request("q2", "g", 1001, 1001).await.unwrap(),
            Claim::Conflict,
            "{}",
            b.name
        );
    }
}
