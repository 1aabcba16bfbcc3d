//! Store tests against a simple model: a vector of the records committed.

use crate::schema::{self, table_schema};
use crate::{ScanRequest, Store, StoreConfig};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use strata_proto::{Event, IdLookup, Record, StreamInfo, StreamName};

pub(crate) fn stream() -> StreamName {
    StreamName::new("s").unwrap()
}

/// A store whose commits make their blocks themselves (the tests see exact block boundaries).
pub(crate) fn open(dir: &std::path::Path, block_rows: usize) -> Arc<Store> {
    open_with(dir, block_rows, 1)
}

/// A store whose blocks are made in the background until the tail is `backlog` blocks long.
fn open_with(dir: &std::path::Path, block_rows: usize, backlog: u64) -> Arc<Store> {
    open_config(
        dir,
        StoreConfig {
            block_rows,
            block_backlog: backlog,
            ..StoreConfig::default()
        },
    )
}

/// A store with `config`, holding [`stream`].
pub(crate) fn open_config(dir: &std::path::Path, config: StoreConfig) -> Arc<Store> {
    let store = Store::open(dir, config).unwrap();
    let info = StreamInfo {
        name: stream(),
        partitions: 2,
        fields: vec![],
    };
    store.set_catalog(Arc::new(BTreeMap::from([(stream(), info)])));
    store
}

fn record(offset: u64, time_ms: i64, key: Option<&str>, id: Option<&str>) -> Record {
    Record {
        partition: 1,
        offset,
        event: Event {
            time_ms,
            key: key.map(str::to_owned),
            id: id.map(str::to_owned),
            event_type: Some("t".into()),
            data: format!("{{\"o\":{offset}}}"),
            condition: None,
        },
    }
}

fn offsets_of(batches: &[RecordBatch], column: usize) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|v| *v as u64)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn scan(store: &Store, request: ScanRequest) -> Vec<RecordBatch> {
    store
        .scan(&stream(), 1, request)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn commit_compacts_and_scans_in_offset_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4);
    let records: Vec<_> = (0..11)
        .map(|o| {
            record(
                o,
                1000 + o as i64,
                Some(if o % 2 == 0 { "even" } else { "odd" }),
                None,
            )
        })
        .collect();
    assert_eq!(
        store.commit(&stream(), 1, records[..3].to_vec()).unwrap(),
        3
    );
    assert_eq!(
        store.commit(&stream(), 1, records[3..].to_vec()).unwrap(),
        11
    );
    // Re-applying what is stored changes nothing.
    assert_eq!(
        store.commit(&stream(), 1, records[5..].to_vec()).unwrap(),
        11
    );
    let status = store.status(&stream()).unwrap();
    assert_eq!(status[1].stored_offset, 11);
    assert_eq!(
        status[1].tail_rows, 3,
        "two blocks of 4 and 3 rows in the tail"
    );

    let all = scan(&store, ScanRequest::all());
    assert_eq!(
        offsets_of(&all, schema::OFFSET),
        (0..11).collect::<Vec<_>>()
    );
    let row = &all[0];
    assert_eq!(row.schema(), table_schema());
    assert_eq!(
        row.column(schema::PARTITION)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        1
    );
    assert_eq!(
        row.column(schema::DATA).as_string::<i32>().value(0),
        "{\"o\":0}"
    );
    assert!(row.column(schema::ID).is_null(0));

    let ranged = scan(
        &store,
        ScanRequest {
            offsets: 3..9,
            projection: vec![schema::OFFSET],
            ..ScanRequest::all()
        },
    );
    assert_eq!(offsets_of(&ranged, 0), (3..9).collect::<Vec<_>>());

    let counts = scan(
        &store,
        ScanRequest {
            projection: vec![],
            ..ScanRequest::all()
        },
    );
    assert_eq!(counts.iter().map(RecordBatch::num_rows).sum::<usize>(), 11);

    let keyed = scan(
        &store,
        ScanRequest {
            key: Some("odd".into()),
            offsets: 2..11,
            projection: vec![schema::OFFSET],
            ..ScanRequest::all()
        },
    );
    assert_eq!(offsets_of(&keyed, 0), vec![3, 5, 7, 9]);

    let limited = scan(
        &store,
        ScanRequest {
            limit: Some(5),
            projection: vec![schema::OFFSET],
            ..ScanRequest::all()
        },
    );
    assert_eq!(offsets_of(&limited, 0), (0..5).collect::<Vec<_>>());

    assert_eq!(store.offset_for_time(&stream(), 1, 1005).unwrap(), 5);
    assert_eq!(store.offset_for_time(&stream(), 1, 1009).unwrap(), 9);
    assert_eq!(store.offset_for_time(&stream(), 1, 5000).unwrap(), 11);

    // Reopening resumes from the stored state.
    drop(store);
    let store = open(dir.path(), 4);
    assert_eq!(store.next_offset(&stream(), 1).unwrap(), 11);
    assert_eq!(
        offsets_of(&scan(&store, ScanRequest::all()), schema::OFFSET).len(),
        11
    );
}

#[test]
fn ids_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    let batch = vec![
        record(0, 0, None, Some("a")),
        record(1, 0, None, Some("b")),
        record(2, 0, None, Some("a")),
        record(3, 0, None, None),
    ];
    store.commit(&stream(), 1, batch).unwrap();
    store
        .commit(
            &stream(),
            1,
            vec![record(4, 0, None, Some("b")), record(5, 0, None, Some("c"))],
        )
        .unwrap();
    assert_eq!(
        offsets_of(&scan(&store, ScanRequest::all()), schema::OFFSET),
        vec![0, 1, 3, 5]
    );
    assert_eq!(
        store.lookup_ids(&stream(), 1, &["a", "c", "zz"]).unwrap(),
        vec![Some(0), Some(5), None]
    );
    assert_eq!(store.stored_next_offset(&stream(), 1).unwrap(), 6);
}

/// Whether `name` is that of a keyspace of the bulk database.
fn bulk_keyspace(name: &str) -> bool {
    ["blocks", "ids", "keys"].iter().any(|k| name.ends_with(k))
}

/// The `blocks`/`ids`/`keys` keyspaces in the shards' database and in the bulk database of the
/// store at `dir` (closed).
fn bulk_keyspaces(dir: &std::path::Path) -> (usize, usize) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let index = fjall::Database::builder(dir.join(crate::bulk::FOLDER))
        .open()
        .unwrap();
    let count = |db: &fjall::Database| {
        db.list_keyspace_names()
            .iter()
            .filter(|n| bulk_keyspace(n))
            .count()
    };
    (count(&db), count(&index))
}

/// Moves the bulk keyspaces of the store at `dir` (closed) back into the shards' database, where
/// a store of before kept them.
fn to_old_layout(dir: &std::path::Path) {
    let db = fjall::Database::builder(dir).open().unwrap();
    let index = fjall::Database::builder(dir.join(crate::bulk::FOLDER))
        .open()
        .unwrap();
    for name in index.list_keyspace_names() {
        let from = index
            .keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let to = db
            .keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let mut batch = db.batch();
        for item in from.iter() {
            let (k, v) = item.into_inner().unwrap();
            batch.insert(&to, k, v);
        }
        batch.commit().unwrap();
        index.delete_keyspace(from).unwrap();
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[test]
fn keys_and_ids_are_found_in_blocks_and_in_the_tail_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = |o: u64| format!("i{o}");
    let key = |o: u64| format!("k{}", o % 3);
    let records = |range: std::ops::Range<u64>| -> Vec<Record> {
        range
            .map(|o| record(o, 0, Some(&key(o)), Some(&id(o))))
            .collect()
    };
    let by_key = |store: &Store, k: &str| {
        let request = ScanRequest {
            key: Some(k.into()),
            ..ScanRequest::all()
        };
        offsets_of(&scan(store, request), 1)
    };
    let mut store = open(dir.path(), 4);
    store.commit(&stream(), 1, records(0..7)).unwrap();
    store.commit(&stream(), 1, records(7..10)).unwrap();
    // Blocks 0..4 and 4..8, tail 8..10.
    assert_eq!(by_key(&store, "k1"), vec![1, 4, 7]);
    for (reopen, old_layout) in [(false, false), (true, false), (true, true)] {
        if reopen {
            drop(store);
            if old_layout {
                assert_eq!(bulk_keyspaces(dir.path()), (0, 3));
                to_old_layout(dir.path());
                assert_eq!(bulk_keyspaces(dir.path()), (3, 0));
            }
            store = open(dir.path(), 4);
        }
        assert_eq!(by_key(&store, "k0"), vec![0, 3, 6, 9], "reopened: {reopen}");
        if old_layout {
            // Opened, the store moved its shard's keyspaces into the bulk database.
            let names = store.db.list_keyspace_names();
            assert!(!names.iter().any(|n| bulk_keyspace(n)));
        }
        assert_eq!(by_key(&store, "k2"), vec![2, 5, 8], "reopened: {reopen}");
        assert_eq!(
            store
                .lookup_ids(&stream(), 1, &["i1", "i5", "i9", "i10"])
                .unwrap(),
            vec![Some(1), Some(5), Some(9), None]
        );
    }
    // Ids held by a block and by the tail are both refused; a new one is stored and found.
    let again = vec![
        record(10, 0, Some("k1"), Some("i2")),
        record(11, 0, Some("k1"), Some("i9")),
        record(12, 0, Some("k1"), Some("i12")),
    ];
    store.commit(&stream(), 1, again).unwrap();
    assert_eq!(by_key(&store, "k1"), vec![1, 4, 7, 12]);
    assert_eq!(
        store.lookup_ids(&stream(), 1, &["i12"]).unwrap(),
        vec![Some(12)]
    );
}

#[test]
fn blocks_are_made_in_the_background_and_commits_make_them_past_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let records = |range: std::ops::Range<u64>| -> Vec<Record> {
        range
            .map(|o| record(o, 0, Some(&format!("k{}", o % 5)), Some(&format!("i{o}"))))
            .collect()
    };
    let tail_rows = |store: &Store| store.status(&stream()).unwrap()[1].tail_rows;
    let store = open_with(dir.path(), 10, 3);
    // 25 rows: two blocks' worth, under the backlog of three: made by the block thread.
    store.commit(&stream(), 1, records(0..25)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tail_rows(&store) > 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(tail_rows(&store), 5, "blocks 0..10 and 10..20 were made");
    // 30 more: the tail holds 35 rows, past the backlog: the commit makes the blocks itself.
    store.commit(&stream(), 1, records(25..55)).unwrap();
    assert!(tail_rows(&store) < 10, "tail of {} rows", tail_rows(&store));
    let all = scan(&store, ScanRequest::all());
    assert_eq!(
        offsets_of(&all, schema::OFFSET),
        (0..55).collect::<Vec<_>>()
    );
    let by_key = ScanRequest {
        key: Some("k3".into()),
        ..ScanRequest::all()
    };
    assert_eq!(
        offsets_of(&scan(&store, by_key), 1),
        (0..55).filter(|o| o % 5 == 3).collect::<Vec<_>>()
    );
    assert_eq!(
        store
            .lookup_ids(&stream(), 1, &["i3", "i24", "i54", "i55"])
            .unwrap(),
        vec![Some(3), Some(24), Some(54), None]
    );
}

#[test]
fn text_columns_come_as_the_blocks_store_them_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 40);
    // Five keys: a block of 40 rows keeps them as a dictionary; 20 rows stay in the tail.
    let records: Vec<Record> = (0..100)
        .map(|o| record(o, o as i64, Some(&format!("k{}", o % 5)), None))
        .collect();
    store.commit(&stream(), 1, records).unwrap();
    let request = |as_stored: Vec<usize>| ScanRequest {
        projection: vec![schema::KEY, schema::OFFSET],
        as_stored,
        ..ScanRequest::all()
    };
    let expanded = scan(&store, request(vec![]));
    let stored = scan(&store, request(vec![schema::KEY]));
    assert_eq!(offsets_of(&expanded, 1), (0..100).collect::<Vec<_>>());
    assert_eq!(offsets_of(&stored, 1), offsets_of(&expanded, 1));
    let dictionaries = stored
        .iter()
        .filter(|b| matches!(b.column(0).data_type(), DataType::Dictionary(..)))
        .count();
    assert_eq!(dictionaries, 2, "the two blocks' keys");
    for (stored, expanded) in stored.iter().zip(&expanded) {
        // Each batch's schema says what it holds, and the values are the same.
        assert_eq!(
            stored.schema().field(0).data_type(),
            stored.column(0).data_type()
        );
        assert!(!matches!(
            expanded.column(0).data_type(),
            DataType::Dictionary(..)
        ));
        let as_text = arrow::compute::cast(stored.column(0), expanded.column(0).data_type());
        assert_eq!(&as_text.unwrap(), expanded.column(0));
    }
}

#[test]
fn block_columns_read_back_from_disk_are_used_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), 1000, 0);
    let records: Vec<Record> = (0..2500)
        .map(|o| record(o, o as i64, Some(&format!("k{o}")), Some(&format!("i{o}"))))
        .collect();
    store.commit(&stream(), 1, records).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.status(&stream()).unwrap()[1].tail_rows >= 1000
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let shard = store.shard(&stream(), 1).unwrap();
    shard.blocks.rotate_memtable_and_wait().unwrap();
    // Read from the blob file, as a restarted node reads every block: the value is 8-aligned,
    // so the column's numbers are not copied (see `block::COLUMN_VERSION`).
    let value = shard
        .blocks
        .get(crate::keys::column_key(0, schema::TIME))
        .unwrap()
        .unwrap();
    assert!(value.len() > 8000, "a column of 1000 times");
    let range = value.as_ptr_range();
    let (start, end) = (range.start as usize, range.end as usize);
    assert_eq!(start % 8, 0, "the value is not 8-aligned");
    let times = crate::block::decode_column(value, String::new).unwrap();
    let times = times.as_primitive::<TimestampMillisecondType>();
    assert_eq!(times.value(999), 999);
    let at = times.values().inner().as_ptr() as usize;
    assert!((start..end).contains(&at), "the times were copied");
}

#[test]
fn unknown_streams_and_partitions_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    assert!(
        store
            .next_offset(&StreamName::new("nope").unwrap(), 0)
            .is_err()
    );
    assert!(store.next_offset(&stream(), 2).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Scans by offset range, time range and key return what a filter over the model returns,
    /// whatever the commit batches and block size.
    #[test]
    fn scans_match_the_model(
        events in proptest::collection::vec((0i64..50, proptest::option::of(0u8..4), proptest::option::of(0u8..20)), 1..120),
        cuts in proptest::collection::vec(1usize..30, 1..10),
        block_rows in 1usize..16,
        lo in 0u64..130, len in 0u64..130,
        time in proptest::option::of((0i64..50, 0i64..50)),
        key in proptest::option::of(0u8..4),
        reopen_after in 0usize..8,
        backlog in 1u64..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_with(dir.path(), block_rows, backlog);
        let records: Vec<Record> = events.iter().enumerate().map(|(o, (t, k, id))| {
            record(o as u64, *t, k.map(|k| format!("k{k}")).as_deref(), id.map(|i| format!("i{i}")).as_deref())
        }).collect();
        let mut seen = HashSet::new();
        let model: Vec<&Record> = records.iter().filter(|r| r.event.id.as_ref().is_none_or(|id| seen.insert(id.clone()))).collect();
        let mut rest = &records[..];
        let mut cut = cuts.iter().cycle();
        let mut commits = 0;
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            store.commit(&stream(), 1, rest[..n].to_vec()).unwrap();
            rest = &rest[n..];
            commits += 1;
            if commits == reopen_after {
                // The tail's id and key index is rebuilt from the tail chunks.
                drop(store);
                store = open_with(dir.path(), block_rows, backlog);
            }
        }
        // Every id answers with the offset that stored it, in a block or in the tail.
        let ids: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let want_ids: Vec<Option<u64>> = ids.iter().map(|id| {
            model.iter().find(|r| r.event.id.as_deref() == Some(*id)).map(|r| r.offset)
        }).collect();
        prop_assert_eq!(store.lookup_ids(&stream(), 1, &ids).unwrap(), want_ids);
        let offsets = lo..lo + len;
        let time = time.map(|(a, b)| (a.min(b), a.max(b)));
        let key = key.map(|k| format!("k{k}"));
        let request = ScanRequest {
            projection: vec![schema::OFFSET, schema::TIME],
            offsets: offsets.clone(), time, key: key.clone(), limit: None, as_stored: Vec::new(),
        };
        let batches = scan(&store, request);
        // Time pruning is inexact: filter the scan's output by time as the query engine does.
        let got: Vec<u64> = batches.iter().flat_map(|b| {
            let o = b.column(0).as_primitive::<Int64Type>();
            let t = b.column(1).as_primitive::<TimestampMillisecondType>();
            (0..b.num_rows()).filter(|&i| time.is_none_or(|(lo, hi)| t.value(i) >= lo && t.value(i) <= hi)).map(|i| o.value(i) as u64).collect::<Vec<_>>()
        }).collect();
        let want: Vec<u64> = model.iter().filter(|r| offsets.contains(&r.offset)
            && time.is_none_or(|(lo, hi)| r.event.time_ms >= lo && r.event.time_ms <= hi)
            && key.as_ref().is_none_or(|k| r.event.key.as_ref() == Some(k))).map(|r| r.offset).collect();
        prop_assert_eq!(got, want);
    }
}

/// Counts rows into one group per key (value: the count, little-endian).
struct CountByKey;

impl crate::ViewFold for CountByKey {
    fn fold(
        &self,
        rows: &RecordBatch,
        stored: &mut crate::ReadGroup<'_>,
    ) -> crate::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let keys = rows.column(rows.schema().index_of("key").unwrap());
        let keys = arrow::compute::cast(keys, &arrow::datatypes::DataType::Utf8).unwrap();
        let keys = keys.as_string::<i32>();
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for i in 0..keys.len() {
            *counts.entry(keys.value(i).as_bytes().to_vec()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(k, n)| {
                let before = stored(&k)?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                Ok((k, (before + n).to_le_bytes().to_vec()))
            })
            .collect()
    }
}

fn counts(values: Vec<Vec<u8>>) -> u64 {
    values
        .iter()
        .map(|v| u64::from_le_bytes(v.as_slice().try_into().unwrap()))
        .sum()
}

#[test]
fn view_state_is_kept_per_partition_and_old_layouts_are_refolded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 4);
    let at = |partition: u32, offset: u64, key: &str| Record {
        partition,
        ..record(offset, 1000 + offset as i64, Some(key), None)
    };
    store
        .commit(&stream(), 0, (0..3).map(|o| at(0, o, "a")).collect())
        .unwrap();
    store
        .create_view("v", &stream(), "SELECT …", true, Arc::new(CountByKey))
        .unwrap();
    for p in 0..2 {
        store.catch_up_view("v", false, p, &mut |_| {}).unwrap();
    }
    store
        .commit(&stream(), 1, (0..5).map(|o| at(1, o, "a")).collect())
        .unwrap();
    // One state per partition and group; each partition read alone, or all together.
    let views = store.views();
    assert_eq!(counts(views.groups("v", Some(&[0])).unwrap()), 3);
    assert_eq!(counts(views.groups("v", Some(&[1])).unwrap()), 5);
    assert_eq!(views.groups("v", None).unwrap().len(), 2);
    assert_eq!(counts(views.get("v", &[b"a".to_vec()], None).unwrap()), 8);
    assert_eq!(
        views.get("v", &[b"a".to_vec()], Some(&[1])).unwrap().len(),
        1
    );
    assert_eq!(store.view_status("v").unwrap().rows, 1);
    assert!(store.view_status("v").unwrap().def.shared);

    // A definition stored in the layout before per-partition state is refolded when opened.
    let mut def = views.def("v").unwrap();
    def.layout = 0;
    store
        .meta
        .insert(
            crate::keys::view_def_key("v"),
            serde_json::to_vec(&def).unwrap(),
        )
        .unwrap();
    drop(store);
    let store = open(dir.path(), 4);
    let reopened = store.views().def("v").unwrap();
    assert_eq!(reopened.layout, crate::ViewDef::LAYOUT);
    assert!(reopened.generation > def.generation && reopened.shared);
    store.views().attach("v", Arc::new(CountByKey));
    assert_eq!(
        store.view_backlog("v", false).unwrap(),
        vec![(0, 3), (1, 5)]
    );
    for p in 0..2 {
        store.catch_up_view("v", false, p, &mut |_| {}).unwrap();
    }
    assert_eq!(counts(store.views().groups("v", None).unwrap()), 8);
}

#[test]
fn a_block_rewrites_only_the_tail_chunk_it_ends_in() {
    let dir = tempfile::tempdir().unwrap();
    // The store's own maker never starts (its blocks are longer than this tail); a maker of
    // ten-row blocks makes one.
    let store = open(dir.path(), 1000);
    let maker = crate::blocks::BlockMaker::new(
        store.db.clone(),
        store.meta.clone(),
        &StoreConfig {
            block_rows: 10,
            ..StoreConfig::default()
        },
    );
    let records = |range: std::ops::Range<u64>| -> Vec<Record> {
        range
            .map(|o| record(o, 0, Some("k"), Some(&format!("i{o}"))))
            .collect()
    };
    for range in [0..4, 4..12, 12..25] {
        store.commit(&stream(), 1, records(range)).unwrap();
    }
    let shard = store.shard(&stream(), 1).unwrap();
    let chunks = |shard: &crate::shard::Shard| -> Vec<(Vec<u8>, Vec<u8>)> {
        shard
            .tail
            .iter()
            .map(|item| {
                let (k, v) = item.into_inner().unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    let before = chunks(&shard);
    assert_eq!(before.len(), 3);
    assert!(maker.make_one(&shard, &[]).unwrap());
    let after = chunks(&shard);
    let keys: Vec<&[u8]> = after.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        keys,
        [
            crate::keys::offset_key(10).as_slice(),
            crate::keys::offset_key(12).as_slice()
        ],
        "the rest of chunk 4..12 is a chunk of its own, chunk 12..25 stays"
    );
    assert_eq!(
        after[1], before[2],
        "a chunk past the block is not written again"
    );
    assert_eq!(store.status(&stream()).unwrap()[1].tail_rows, 15);
    assert_eq!(
        offsets_of(&scan(&store, ScanRequest::all()), schema::OFFSET),
        (0..25).collect::<Vec<_>>()
    );
}
