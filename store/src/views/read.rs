//! Reads of a view's stored state: group states per partition, point reads, counts.

use super::ViewSet;
use super::slot::ViewSlot;
use crate::Result;
use crate::keys::view_group_key;
use fjall::Readable;

impl ViewSet {
    /// The next offset view `name` has applied on `partition`.
    ///
    /// # Errors
    /// [`crate::Error::UnknownView`].
    pub fn applied(&self, name: &str, partition: u32) -> Result<u64> {
        Ok(self.current_slot(name)?.applied(partition))
    }

    /// The stored group states of view `name` on `partitions` (`None`: every partition it has
    /// applied), from one snapshot: one value per partition and group, so a group appears once
    /// for each partition that has rows of it (a read merges them).
    ///
    /// # Errors
    /// [`Error::UnknownView`]; storage failures.
    pub fn groups(&self, name: &str, partitions: Option<&[u32]>) -> Result<Vec<Vec<u8>>> {
        let slot = self.current_slot(name)?;
        let partitions = self.partitions_of(&slot, partitions);
        let snapshot = self.db.snapshot();
        let mut out = Vec::new();
        for p in partitions {
            for item in snapshot.prefix(&slot.groups, p.to_be_bytes()) {
                out.push(item.value()?.to_vec());
            }
        }
        Ok(out)
    }

    /// The stored states of the groups `keys` of view `name` on `partitions` (`None`: every
    /// partition it has applied), absent ones skipped: one point read per partition and key.
    ///
    /// # Errors
    /// [`Error::UnknownView`]; storage failures.
    pub fn get(
        &self,
        name: &str,
        keys: &[Vec<u8>],
        partitions: Option<&[u32]>,
    ) -> Result<Vec<Vec<u8>>> {
        let slot = self.current_slot(name)?;
        let partitions = self.partitions_of(&slot, partitions);
        let snapshot = self.db.snapshot();
        let mut out = Vec::new();
        for p in partitions {
            for k in keys {
                if let Some(v) = snapshot.get(&slot.groups, view_group_key(p, k))? {
                    out.push(v.to_vec());
                }
            }
        }
        Ok(out)
    }

    fn partitions_of(&self, slot: &ViewSlot, partitions: Option<&[u32]>) -> Vec<u32> {
        match partitions {
            Some(p) => p.to_vec(),
            None => {
                let mut all: Vec<u32> = slot.state.lock().applied.keys().copied().collect();
                all.sort_unstable();
                all
            }
        }
    }

    /// The distinct groups `slot` holds over all its partitions (counted from a snapshot).
    pub(crate) fn rows(&self, slot: &ViewSlot) -> Result<u64> {
        let mut groups = std::collections::HashSet::new();
        for item in self.db.snapshot().iter(&slot.groups) {
            let key = item.key()?;
            groups.insert(key.get(4..).unwrap_or_default().to_vec());
        }
        Ok(groups.len() as u64)
    }
}
