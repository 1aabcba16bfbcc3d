//! Deleting the shards and restarting rebuilds the same state from the log.

use crate::common::*;
use serde_json::json;

const QUERIES: [&str; 4] = [
    "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(time) AS first, max(time) AS last FROM d",
    "SELECT partition, count(*) AS n, max(\"offset\") AS top FROM d GROUP BY partition ORDER BY partition",
    "SELECT json_get_str(data, 'country') AS country, sum(json_get_float(data, 'amount')) AS total FROM d GROUP BY 1 ORDER BY 1",
    "SELECT key, count(*) AS n FROM d WHERE key IN ('k1', 'k2') GROUP BY key ORDER BY key",
];

#[test]
fn rebuilding_shards_from_the_log_gives_identical_results() {
    for backend in backends() {
        let (_tmp, dir) = data_dir();
        let mut server = Server::start(
            backend,
            &dir,
            "[store]\nblock_rows = 50\ncommit_max_events = 33\n",
        );
        for batch in 0..12 {
            let body: String = (0..40)
                .map(|i| {
                    let n = batch * 40 + i;
                    format!("{}\n", json!({
                        "id": format!("id{}", n % 450),
                        "key": format!("k{}", n % 9),
                        "time": 1_700_000_000_000i64 + n * 1000,
                        "data": {"country": (["NL", "DE", "US", "JP"][n as usize % 4]), "amount": n as f64 / 4.0},
                    }))
                })
                .collect();
            append_ok(&server, "d", &body);
        }
        wait_stored(&server, "d");
        let before: Vec<_> = QUERIES.iter().map(|q| rows(&server, q)).collect();
        let replay_before: Vec<_> = (0..4)
            .map(|p| replay(&server, "d", &format!("partition={p}")).1)
            .collect();
        assert_eq!(before[0][0]["n"], 450);

        assert!(server.stop(), "graceful stop failed:\n{}", server.log());
        std::fs::remove_dir_all(dir.join("store")).unwrap();
        server.restart();
        wait_stored(&server, "d");
        let after: Vec<_> = QUERIES.iter().map(|q| rows(&server, q)).collect();
        assert_eq!(before, after);
        let replay_after: Vec<_> = (0..4)
            .map(|p| replay(&server, "d", &format!("partition={p}")).1)
            .collect();
        assert_eq!(replay_before, replay_after);
    }
}
