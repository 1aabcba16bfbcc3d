//! Named durable subscriptions over HTTP and through `strata subscribe`, on both logs: create
//! (idempotent, conflicts, bad input), deliver from the acknowledged cursor, one consumer at a
//! time with takeover, the acknowledged cursor surviving `kill -9`, lag listing, delete.

use crate::common::*;
use crate::subscriptions::{Follower, append_range};
use serde_json::{Value, json};
use std::time::Duration;

fn put(server: &Server, name: &str, body: Value) -> (u16, Value) {
    let resp = http()
        .put(server.url(&format!("/v1/subscriptions/{name}")))
        .json(&body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn ack(server: &Server, name: &str, cursor: &str) -> (u16, Value) {
    let resp = http()
        .post(server.url(&format!("/v1/subscriptions/{name}/ack")))
        .json(&json!({ "cursor": cursor }))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

fn listed(server: &Server, name: &str) -> Value {
    let all: Vec<Value> = http()
        .get(server.url("/v1/subscriptions"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    all.into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or(Value::Null)
}

fn ns(events: &[Value]) -> Vec<u64> {
    let mut ns: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

const NL: &str = "json_get_str(data, 'country') = 'NL'";

#[test]
fn durable_subscriptions_deliver_from_the_acknowledged_cursor_to_one_consumer() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(backend, &dir, "");
        create_stream(&server, "orders", 2);
        append_range(&server, "orders", 0..20);

        let definition = json!({"stream": "orders", "where": NL});
        assert_eq!(put(&server, "billing", definition.clone()).0, 201);
        assert_eq!(put(&server, "billing", definition.clone()).0, 200);
        for (name, body, status, says) in [
            ("billing", json!({"stream": "orders"}), 409, "exists"),
            ("Bad-Name", definition.clone(), 400, "subscription names"),
            ("other", json!({"stream": "nowhere"}), 404, "nowhere"),
            (
                "other",
                json!({"stream": "orders", "where": "count(*) > 1"}),
                400,
                "aggregate",
            ),
            (
                "other",
                json!({"stream": "orders", "from": "garbage"}),
                400,
                "token",
            ),
            (
                "other",
                json!({"stream": "orders", "filter": "x"}),
                400,
                "unknown field",
            ),
        ] {
            let (got, body) = put(&server, name, body);
            assert_eq!(got, status, "{name}: {body}");
            assert!(body.to_string().contains(says), "{name}: {body}");
        }

        // The first consumer gets every NL event; it acknowledges the fifth.
        let events_url = server.url("/v1/subscriptions/billing/events?heartbeat_ms=300");
        let first = Follower::start(&events_url, &[]);
        let (got, _) = first.events(10);
        assert_eq!(
            ns(&got),
            (0..20).step_by(2).collect::<Vec<_>>(),
            "{backend:?}"
        );
        let acked_at = got[4]["cursor"].as_str().unwrap().to_owned();
        let (status, body) = ack(&server, "billing", &acked_at);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cursor"], acked_at.as_str());
        let info = listed(&server, "billing");
        assert_eq!(info["cursor"], acked_at.as_str(), "{info}");
        assert!(info["consumer"]["node"].is_string(), "{info}");
        assert!(info["lag"].as_u64().unwrap() > 0, "{info}");
        let metric = format!(
            "strata_subscription_lag{{subscription=\"billing\"}} {}",
            info["lag"]
        );
        assert!(
            metrics_text(&server).lines().any(|l| l == metric),
            "{metric} in /metrics"
        );
        // An older cursor never moves it back.
        let (_, body) = ack(&server, "billing", got[1]["cursor"].as_str().unwrap());
        assert_eq!(body["cursor"], acked_at.as_str());

        // A second consumer is refused while the first holds it, unless it takes over.
        let refused = http().get(&events_url).send().unwrap();
        assert_eq!(refused.status().as_u16(), 409);
        assert!(refused.text().unwrap().contains("takeover=true"));
        let second = Follower::start(&format!("{events_url}&takeover=true"), &[]);
        let (again, _) = second.events(5);
        let expected: Vec<u64> = got[5..]
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        let mut expected = expected;
        expected.sort_unstable();
        assert_eq!(
            ns(&again),
            expected,
            "{backend:?}: from after the acknowledged cursor"
        );
        // The first consumer's delivery ends, saying why.
        let ended = crate::common::eventually("the first consumer told", || {
            let line = first.line(Duration::from_secs(1))?;
            line.contains("took subscription billing over")
                .then_some(line)
        });
        assert!(ended.contains("error"), "{ended}");
        drop(second);
        drop(first);

        // The acknowledged cursor is durable across kill -9; `strata subscribe` goes on from it
        // and acknowledges what it prints.
        server.kill9();
        server.restart();
        append_range(&server, "orders", 20..24);
        let cli = Follower::cli_subscribe(&server.base, "billing");
        let (printed, _) = cli.events(7);
        let mut expected: Vec<u64> = got[5..]
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        expected.extend([20, 22]);
        expected.sort_unstable();
        assert_eq!(ns(&printed), expected, "{backend:?}");
        // It acknowledges through what it printed, and past the events the filter dropped
        // after them (a heartbeat carries that cursor at once).
        crate::common::eventually("the CLI's acknowledgement", || {
            (listed(&server, "billing")["lag"] == 0).then_some(())
        });
        crate::common::eventually("the lag metric", || {
            metrics_text(&server)
                .lines()
                .any(|l| l == "strata_subscription_lag{subscription=\"billing\"} 0")
                .then_some(())
        });
        drop(cli);
        crate::common::eventually("the consumer to let go", || {
            listed(&server, "billing")["consumer"]
                .is_null()
                .then_some(())
        });

        let deleted = http()
            .delete(server.url("/v1/subscriptions/billing"))
            .send()
            .unwrap();
        assert_eq!(deleted.status().as_u16(), 200);
        let gone = http()
            .get(server.url("/v1/subscriptions/billing/events"))
            .send()
            .unwrap();
        assert_eq!(gone.status().as_u16(), 404);
    }
}
