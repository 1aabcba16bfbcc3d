//! The store's key layout, in one place: keyspace names and the keys within them (see the table
//! in the crate documentation).

use strata_proto::StreamName;

/// The name of keyspace `kind` (`tail`, `blocks`, `bmeta`, `ids`, `keys`) of a shard.
pub(crate) fn shard_keyspace(stream: &StreamName, partition: u32, kind: &str) -> String {
    format!("{stream}.{partition}.{kind}")
}

/// Key of a shard's state in `meta`.
pub(crate) fn state_key(stream: &StreamName, partition: u32) -> Vec<u8> {
    format!("{stream}/{partition}").into_bytes()
}

/// Key of `offset` in `tail`, `blocks` and `bmeta`.
pub(crate) fn offset_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// The offset in an [`offset_key`] (or in an index entry's 8-byte offset); `None` unless `bytes`
/// is 8 bytes long.
pub(crate) fn offset_from(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Key of column `column` (a table column index, ≥ 1) of the block starting at `first`, in
/// `blocks`.
pub(crate) fn column_key(first: u64, column: usize) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&(column as u16).to_be_bytes());
    key
}

/// Key of an event key at `offset` in `keys`.
pub(crate) fn key_index_key(key: &str, offset: u64) -> Vec<u8> {
    let mut out = key_index_prefix(key);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Prefix of every `keys` entry of `key`.
pub(crate) fn key_index_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Prefix of view definitions in `meta` (`view-def/<name>` → the definition as JSON).
pub(crate) const VIEW_DEF_PREFIX: &str = "view-def/";
/// Prefix of deletion markers in `meta` (`view-gc/<generation>` → the keyspace to delete).
pub(crate) const VIEW_GC_PREFIX: &str = "view-gc/";
/// The last view generation handed out, in `meta`.
pub(crate) const VIEW_SEQ_KEY: &[u8] = b"view-seq";

/// Key of view `name`'s definition in `meta`.
pub(crate) fn view_def_key(name: &str) -> Vec<u8> {
    format!("{VIEW_DEF_PREFIX}{name}").into_bytes()
}

/// Key of the deletion marker of view generation `generation` in `meta`.
pub(crate) fn view_gc_key(generation: u64) -> Vec<u8> {
    format!("{VIEW_GC_PREFIX}{generation}").into_bytes()
}

/// Prefix of the applied offsets of view generation `generation` in `meta`.
pub(crate) fn view_applied_prefix(generation: u64) -> Vec<u8> {
    format!("view-applied/{generation}/").into_bytes()
}

/// Key of the next offset view generation `generation` has applied on `partition`, in `meta`.
pub(crate) fn view_applied_key(generation: u64, partition: u32) -> Vec<u8> {
    let mut key = view_applied_prefix(generation);
    key.extend_from_slice(partition.to_string().as_bytes());
    key
}

/// Key of a view group's state on one partition: the partition (big-endian, so one partition's
/// groups are one range) and the group's key.
pub(crate) fn view_group_key(partition: u32, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + group.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(group);
    key
}

/// The keyspace of view `name`'s groups in generation `generation`.
pub(crate) fn view_keyspace(name: &str, generation: u64) -> String {
    format!("view.{name}.{generation}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_offsets() {
        assert!(offset_key(255) < offset_key(256));
        assert_eq!(column_key(1, 7)[8..], [0, 7]);
        assert!(key_index_key("a", 2) < key_index_key("a", 10));
        assert!(key_index_key("a", 10).starts_with(&key_index_prefix("a")));
        assert!(!key_index_key("ab", 1).starts_with(&key_index_prefix("a")));
        assert_eq!(view_applied_key(3, 12), b"view-applied/3/12".to_vec());
    }
}
