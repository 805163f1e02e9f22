//! One visitor, one partition, in send order (S4).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use test_support::consume;

use super::{Server, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_anonymous_id_land_on_one_partition_in_send_order() {
    let server = Server::start().await;
    let visitors = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let mut sent = 0;
    for round in 0..10 {
        // Singles and batches interleaved, every visitor in every round.
        for v in visitors {
            let event = json!({"anonymousId": v, "event": "step", "properties": {"seq": round * 2}});
            assert_eq!(server.post("/v1/track", &event).await.status(), 200);
        }
        let batch: Vec<_> = visitors
            .iter()
            .map(|v| json!({"type":"track","anonymousId":v,"event":"step","properties":{"seq": round * 2 + 1}}))
            .collect();
        assert_eq!(
            server
                .post("/v1/batch", &json!({ "batch": batch }))
                .await
                .status(),
            200
        );
        sent += 2 * visitors.len();
    }
    let records = consume(&server.topics.ingest, sent, WAIT).await;
    assert_eq!(records.len(), sent);
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut sequences: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let key = r.key.clone().unwrap();
        partitions.entry(key.clone()).or_default().insert(r.partition);
        sequences
            .entry(key)
            .or_default()
            .push(r.event()["properties"]["seq"].as_i64().unwrap());
    }
    for v in visitors {
        assert_eq!(
            partitions[v].len(),
            1,
            "{v} spread over partitions {:?}",
            partitions[v]
        );
        assert_eq!(sequences[v], (0..20).collect::<Vec<_>>(), "{v} out of order");
    }
    let used: BTreeSet<i32> = partitions.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "six visitors all hashed to one partition: the test proves nothing"
    );
    server.stop().await.unwrap();
}
