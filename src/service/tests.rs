//! The services on their own, without a front end: the same rules whatever protocol calls them.

use super::*;
use crate::auth::{Auth, AuthConfig, Principal, Scope, TokenConfig};
use bytes::Bytes;
use strata_ingest::{EmbeddedLog, IngestConfig};

/// An ingest-only node on an embedded log in `dir`.
fn services(dir: &std::path::Path) -> Services {
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, Default::default()).unwrap());
    Services::new(Parts {
        ingest: Some(Arc::new(Ingest::new(
            log.clone(),
            None,
            IngestConfig {
                default_partitions: 2,
                preload_ids: false,
            },
        ))),
        log,
        store: None,
        sql: None,
        cluster: None,
        limits: Limits::default(),
        default_partitions: 2,
        node: NodeInfo {
            id: "n1".into(),
            role: Role::Ingest,
            http: "127.0.0.1:0".into(),
            cluster: None,
            membership: None,
            feed: None,
        },
    })
}

fn principal(scopes: Vec<Scope>, streams: Option<Vec<&str>>) -> Principal {
    let auth = Auth::new(&AuthConfig {
        tokens: vec![TokenConfig {
            name: "t".into(),
            token: Some("secret".into()),
            scopes,
            streams: streams.map(|s| s.into_iter().map(String::from).collect()),
            ..TokenConfig::default()
        }],
        public_metrics: false,
    })
    .unwrap();
    auth.authenticate(Some("secret")).unwrap()
}

#[tokio::test]
async fn every_operation_is_authorized_inside_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let s = services(dir.path());
    let admin = principal(vec![Scope::Read, Scope::Write, Scope::Admin], None);
    let reader = principal(vec![Scope::Read], Some(vec!["orders"]));
    let writer = principal(vec![Scope::Write], Some(vec!["orders"]));
    let kind = |r: Result<()>| r.map_err(|e| e.kind()).err();

    // Creating a stream needs `admin`; the reader cannot, the admin can.
    let create = CreateStream::default();
    assert_eq!(
        kind(
            s.streams
                .create(&reader, "orders", create.clone())
                .await
                .map(drop)
        ),
        Some(Kind::Forbidden)
    );
    assert!(
        s.streams
            .create(&admin, "orders", create)
            .await
            .unwrap()
            .created
    );

    // Appending needs `write` and a grant, checked before any body is read.
    assert_eq!(
        kind(s.append.target(&reader, "orders").map(drop)),
        Some(Kind::Forbidden)
    );
    assert_eq!(
        kind(s.append.target(&writer, "payments").map(drop)),
        Some(Kind::Forbidden)
    );
    let target = s.append.target(&writer, "orders").unwrap();
    let outcome = s
        .append
        .append(
            target,
            Bytes::from_static(b"{\"data\": 1}\n"),
            BodyFormat::Json,
        )
        .await
        .unwrap();
    assert_eq!(outcome.appended, 1);

    // Listings show only granted streams; a stream without a grant is refused outright.
    assert_eq!(s.streams.list(&reader).await.unwrap().len(), 1);
    assert_eq!(
        kind(s.streams.get(&reader, "payments").await.map(drop)),
        Some(Kind::Forbidden)
    );
    assert_eq!(
        kind(s.streams.list(&writer).await.map(drop)),
        Some(Kind::Forbidden)
    );

    // Once authorized, the node's role decides: this ingest-only node answers no SQL.
    let query = QueryRequest {
        sql: "SELECT 1".into(),
        ..QueryRequest::default()
    };
    assert_eq!(
        kind(s.query.query(&writer, query.clone()).await.map(drop)),
        Some(Kind::Forbidden)
    );
    assert_eq!(
        kind(s.query.query(&reader, query).await.map(drop)),
        Some(Kind::WrongRole)
    );
    // Replay from the log works on any node; from the shards it needs a store.
    let replay = |source| ReplayRequest {
        stream: "orders".into(),
        source,
        ..ReplayRequest::default()
    };
    let mut chunks = s.replay.replay(&reader, replay(Source::Log)).await.unwrap();
    let first = chunks.recv().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"data\":1"),
        "{first:?}"
    );
    assert_eq!(
        kind(
            s.replay
                .replay(&reader, replay(Source::Store))
                .await
                .map(drop)
        ),
        Some(Kind::WrongRole)
    );
}
