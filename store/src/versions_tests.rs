//! Conditional batches in the store: decisions and versions depend on the log alone, not on how
//! it is read.

use crate::schema;
use crate::{ScanRequest, Store};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use proptest::prelude::*;
use std::sync::Arc;
use strata_proto::{Condition, Event, Expect, Record};

use crate::tests::{open as open_blocks, stream};

fn open(dir: &std::path::Path) -> Arc<Store> {
    open_blocks(dir, 16)
}

fn record(offset: u64, key: Option<&str>, condition: Option<Condition>) -> Record {
    Record {
        partition: 0,
        offset,
        event: Event {
            time_ms: 1,
            key: key.map(str::to_owned),
            id: None,
            event_type: None,
            data: offset.to_string(),
            condition,
        },
    }
}

/// An untagged batch's condition (as from a plain Kafka producer).
fn cond(expect: Option<Expect>, index: u32, count: u32) -> Option<Condition> {
    tagged(expect, index, count, 0)
}

fn tagged(expect: Option<Expect>, index: u32, count: u32, batch_id: u64) -> Option<Condition> {
    Some(Condition {
        expect,
        index,
        count,
        batch_id,
    })
}

/// (offset, key, version) of every stored event, in offset order.
fn stored(store: &Store) -> Vec<(u64, Option<String>, Option<i64>)> {
    let mut out = Vec::new();
    for batch in store
        .scan(&stream(), 0, ScanRequest::all())
        .unwrap()
        .map(|b| b.unwrap())
    {
        let offsets = batch.column(schema::OFFSET).as_primitive::<Int64Type>();
        let keys = batch.column(schema::KEY).as_string::<i32>();
        let versions = batch.column(schema::VERSION).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            out.push((
                offsets.value(i) as u64,
                (!keys.is_null(i)).then(|| keys.value(i).to_owned()),
                (!versions.is_null(i)).then(|| versions.value(i)),
            ));
        }
    }
    out
}

#[test]
fn batches_are_decided_whole_and_versions_count_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let log = vec![
        record(0, Some("a"), None),
        // a at 1: accepted, a → 3.
        record(1, Some("a"), cond(Some(Expect::Version(1)), 0, 2)),
        record(2, Some("a"), cond(None, 1, 2)),
        // b is new but the batch expects it to exist: rejected whole (a too).
        record(3, Some("a"), cond(Some(Expect::Version(3)), 0, 2)),
        record(4, Some("b"), cond(Some(Expect::Exists), 1, 2)),
        // A batch interrupted by another writer's record: rejected; the stray after it too.
        record(5, Some("b"), cond(Some(Expect::None), 0, 2)),
        record(6, Some("c"), None),
        record(7, Some("b"), cond(None, 1, 2)),
        // A batch whose read ends inside it waits for the rest.
        record(8, Some("b"), cond(Some(Expect::None), 0, 2)),
    ];
    assert_eq!(
        store.commit(&stream(), 0, log).unwrap(),
        8,
        "held at the open batch"
    );
    assert!(store.decision(&stream(), 0, 8).unwrap().is_none());
    assert_eq!(
        store
            .commit(&stream(), 0, vec![record(9, None, cond(None, 1, 2))])
            .unwrap(),
        10
    );
    let d = |o| store.decision(&stream(), 0, o).unwrap().unwrap();
    assert!(d(1).accepted);
    assert_eq!(d(1).keys[0].version, 3);
    let no = d(3);
    assert!(!no.accepted);
    assert_eq!((no.keys[1].key.as_str(), no.keys[1].actual), ("b", 0));
    assert!(
        no.reason
            .unwrap()
            .contains("\"b\" expected version exists, is at 0")
    );
    assert!(d(5).reason.unwrap().contains("consecutive"));
    assert!(d(8).accepted);
    assert_eq!(
        stored(&store),
        vec![
            (0, Some("a".into()), Some(1)),
            (1, Some("a".into()), Some(2)),
            (2, Some("a".into()), Some(3)),
            (6, Some("c".into()), Some(1)),
            (8, Some("b".into()), Some(1)),
            (9, None, None),
        ]
    );
}

#[test]
fn two_writers_batches_of_one_size_interleaved_are_never_taken_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Writers A (tag 7) and B (tag 9), two records each, interleaved record by record: B's first
    // record and A's second sit in place by index and count, but not by tag.
    let log = vec![
        record(0, Some("a"), tagged(Some(Expect::None), 0, 2, 7)),
        record(1, Some("b"), tagged(Some(Expect::None), 0, 2, 9)),
        record(2, Some("a"), tagged(None, 1, 2, 7)),
        record(3, Some("b"), tagged(None, 1, 2, 9)),
        // A batch with its records together is stored.
        record(4, Some("c"), tagged(Some(Expect::None), 0, 2, 11)),
        record(5, Some("c"), tagged(None, 1, 2, 11)),
    ];
    store.commit(&stream(), 0, log).unwrap();
    let offsets: Vec<u64> = stored(&store).iter().map(|(o, _, _)| *o).collect();
    assert_eq!(offsets, vec![4, 5], "only the whole batch is stored");
    for first in [0, 1] {
        let decision = store.decision(&stream(), 0, first).unwrap().unwrap();
        assert!(!decision.accepted, "batch at {first}: {decision:?}");
    }
}

#[test]
fn decisions_are_deleted_once_kept_long_enough_and_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = |keep_ms| crate::StoreConfig {
        block_rows: 16,
        decisions_keep_ms: keep_ms,
        ..crate::StoreConfig::default()
    };
    let batch = |at: u64| {
        vec![
            record(at, Some("a"), cond(None, 0, 2)),
            record(at + 1, Some("b"), cond(None, 1, 2)),
        ]
    };
    let decided = |store: &Store, first| store.decision(&stream(), 0, first).unwrap().is_some();
    {
        // Kept (the default): every decision stays through later commits.
        let store = crate::tests::open_config(dir.path(), config(600_000));
        store.commit(&stream(), 0, batch(0)).unwrap();
        store.commit(&stream(), 0, batch(2)).unwrap();
        assert!(decided(&store, 0) && decided(&store, 2));
    }
    {
        // Reopened with no time to keep them: those found at open go with the next commit,
        // and each commit's own decision with the one after it.
        let store = crate::tests::open_config(dir.path(), config(0));
        assert!(decided(&store, 0) && decided(&store, 2));
        store.commit(&stream(), 0, batch(4)).unwrap();
        assert!(!decided(&store, 0) && !decided(&store, 2));
        assert!(decided(&store, 4), "a decision outlives its own commit");
        store
            .commit(&stream(), 0, vec![record(6, Some("c"), None)])
            .unwrap();
        assert!(!decided(&store, 4));
        assert_eq!(store.shard(&stream(), 0).unwrap().decided.lock().len(), 0);
    }
    // What was deleted stays deleted.
    let store = crate::tests::open_config(dir.path(), config(600_000));
    assert!(!decided(&store, 0) && !decided(&store, 4));
    assert_eq!(stored(&store).len(), 7);
}

/// Plain events at `range`, keyed `k0`..`k{keys - 1}` in turn.
fn keyed(range: std::ops::Range<u64>, keys: u64) -> Vec<Record> {
    range
        .map(|o| record(o, Some(&format!("k{}", o % keys)), None))
        .collect()
}

#[test]
fn versions_past_memory_are_read_back_and_built_for_a_shard_made_before_kver() {
    // Keys k0..k9 in turn (more than the shard keeps in memory under test), blocks of 16.
    let keyed = |range| keyed(range, 10);
    let whole = tempfile::tempdir().unwrap();
    let expected = open(whole.path());
    expected.commit(&stream(), 0, keyed(0..120)).unwrap();
    let versions = stored(&expected);
    // Each key's n-th event is at version n, wherever it is stored.
    for (offset, _, version) in &versions {
        assert_eq!(*version, Some((offset / 10 + 1) as i64), "offset {offset}");
    }
    // A store of before (no key versions beside its blocks), and one whose last blocks were
    // made by a strata of before (the marker behind, a key's entry not moved on).
    for stale in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.commit(&stream(), 0, keyed(0..70)).unwrap();
        drop(store);
        {
            let bulk = fjall::Database::builder(dir.path().join(crate::bulk::FOLDER))
                .open()
                .unwrap();
            let kver = bulk
                .keyspace(
                    &crate::keys::shard_keyspace(&stream(), 0, "kver"),
                    fjall::KeyspaceCreateOptions::default,
                )
                .unwrap();
            let marker = kver.get([0u8]).unwrap().expect("blocks wrote a marker");
            assert_eq!(
                *marker,
                64u64.to_be_bytes(),
                "through the fourth block of 16"
            );
            if stale {
                kver.insert([0u8], 32u64.to_be_bytes()).unwrap();
                kver.remove(crate::keys::key_index_prefix("k3")).unwrap();
            } else {
                bulk.delete_keyspace(kver).unwrap();
            }
            bulk.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let store = open(dir.path());
        let shard = store.shard(&stream(), 0).unwrap();
        let marker = shard.kver.get([0u8]).unwrap();
        assert_eq!(marker.as_deref(), Some(&64u64.to_be_bytes()[..]), "rebuilt");
        store.commit(&stream(), 0, keyed(70..120)).unwrap();
        assert_eq!(stored(&store), versions, "stale: {stale}");
    }
}

#[test]
fn key_versions_of_a_block_not_committed_yet_count_the_tail_rows_they_cover() {
    let keyed = |range| keyed(range, 3);
    let whole = tempfile::tempdir().unwrap();
    let expected = open(whole.path());
    expected.commit(&stream(), 0, keyed(0..30)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A block (0..16) and a tail (16..24).
    store.commit(&stream(), 0, keyed(0..24)).unwrap();
    let shard = store.shard(&stream(), 0).unwrap();
    // The block maker wrote the next block's key versions (its rows: the tail's) and has not
    // committed it yet, or crashed in between; the shard's memory of versions is gone.
    let (_, chunk) = shard.tail.iter().next().unwrap().into_inner().unwrap();
    let rows = crate::block::decode_tail(&chunk, None, || "tail".into()).unwrap();
    assert_eq!(rows.num_rows(), 8);
    crate::key_versions::index_block(&shard, &rows).unwrap();
    *shard.version_cache.lock() = crate::versions::VersionCache::new(1);
    store.commit(&stream(), 0, keyed(24..30)).unwrap();
    assert_eq!(stored(&store), stored(&expected));
}

fn arb_log() -> impl Strategy<Value = Vec<Record>> {
    // Requests: plain events, or batches of 1–3 events with conditions on a few keys.
    let keys = prop::sample::select(vec!["a", "b", "c"]);
    let event = (keys, prop::option::of(0u64..4), any::<bool>());
    prop::collection::vec(prop::collection::vec(event, 1..4), 1..30).prop_map(|requests| {
        let mut log = Vec::new();
        for request in requests {
            let count = request.len() as u32;
            let batch_id = log.len() as u64 + 1;
            let conditional = request.iter().any(|(_, e, _)| e.is_some());
            for (i, (key, expect, none)) in request.into_iter().enumerate() {
                let offset = log.len() as u64;
                let expect = expect.map(|v| {
                    if none && v == 0 {
                        Expect::None
                    } else {
                        Expect::Version(v)
                    }
                });
                let condition = conditional.then_some(Condition {
                    expect,
                    index: i as u32,
                    count,
                    batch_id,
                });
                log.push(record(offset, Some(key), condition));
            }
        }
        log
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn decisions_do_not_depend_on_how_the_log_is_read(
        log in arb_log(),
        cuts in prop::collection::vec(1usize..8, 1..20),
    ) {
        let one = tempfile::tempdir().unwrap();
        let whole = open(one.path());
        whole.commit(&stream(), 0, log.clone()).unwrap();
        let two = tempfile::tempdir().unwrap();
        let pieces = open(two.path());
        let mut rest = log.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*cut).min(rest.len()));
            pieces.commit(&stream(), 0, head.to_vec()).unwrap();
            rest = tail;
        }
        prop_assert_eq!(stored(&whole), stored(&pieces));
        for r in &log {
            prop_assert_eq!(
                whole.decision(&stream(), 0, r.offset).unwrap(),
                pieces.decision(&stream(), 0, r.offset).unwrap()
            );
        }
        // A reopened store reads the same, and counts on from the same versions (read back from
        // the key index and the tail, its memory of them gone).
        drop(pieces);
        let reopened = open(two.path());
        prop_assert_eq!(stored(&whole), stored(&reopened));
        let end = log.len() as u64;
        let more: Vec<Record> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, k)| record(end + i as u64, Some(k), None))
            .collect();
        whole.commit(&stream(), 0, more.clone()).unwrap();
        reopened.commit(&stream(), 0, more).unwrap();
        prop_assert_eq!(stored(&whole), stored(&reopened));
    }
}
