//! Rebuilding a view: a new generation is filled beside the current one and swapped in, or
//! abandoned.

use super::{ViewDef, ViewSet, ViewSlot, encode_def};
use crate::keys::{VIEW_SEQ_KEY, view_def_key, view_gc_key, view_keyspace};
use crate::{Error, Result};
use std::sync::Arc;

impl ViewSet {
    /// Starts a rebuild of view `name`: a new generation, empty, to be caught up and then swapped
    /// in by [`ViewSet::finish_rebuild`]. A rebuild already running is started over.
    pub fn start_rebuild(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        let entry = views
            .get_mut(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let fold = entry.current.state.lock().fold.clone();
        let generation = self.next_generation()?;
        // A crash before the swap leaves the new keyspace to be deleted at the next start.
        let mut batch = self.db.batch();
        batch.insert(&self.meta, VIEW_SEQ_KEY, generation.to_le_bytes());
        batch.insert(
            &self.meta,
            view_gc_key(generation),
            view_keyspace(name, generation).into_bytes(),
        );
        batch.commit()?;
        let slot = self.open_slot(ViewDef {
            generation,
            ..entry.current.def.clone()
        })?;
        slot.state.lock().fold = fold;
        if let Some(old) = entry.next.replace(slot) {
            drop(views);
            self.retire(old)?;
        }
        Ok(())
    }

    /// Swaps a rebuilt generation in for the current one and deletes the old state.
    pub fn finish_rebuild(&self, name: &str) -> Result<()> {
        let mut views = self.views.write();
        let entry = views
            .get_mut(name)
            .ok_or_else(|| Error::UnknownView(name.to_owned()))?;
        let Some(next) = entry.next.take() else {
            return Err(Error::Invariant(format!(
                "view {name} has no rebuild to finish"
            )));
        };
        if let Some(e) = &next.state.lock().error {
            return Err(Error::View(e.clone()));
        }
        let old = std::mem::replace(&mut entry.current, next.clone());
        let def = entry.def();
        drop(views);
        let mut old_state = old.state.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.meta, view_def_key(name), encode_def(&def)?);
        batch.remove(&self.meta, view_gc_key(next.def.generation));
        self.forget_slot(&mut batch, &old)?;
        batch.commit()?;
        old_state.retired = true;
        drop(old_state);
        self.delete_slots(vec![old])?;
        Ok(())
    }

    /// Abandons a rebuild of view `name` (after it failed); the current generation stays.
    pub fn abort_rebuild(&self, name: &str) -> Result<()> {
        let next = self.views.write().get_mut(name).and_then(|e| e.next.take());
        match next {
            Some(slot) => self.retire(slot),
            None => Ok(()),
        }
    }

    fn retire(&self, slot: Arc<ViewSlot>) -> Result<()> {
        let mut state = slot.state.lock();
        let mut batch = self.db.batch();
        self.forget_slot(&mut batch, &slot)?;
        batch.commit()?;
        state.retired = true;
        drop(state);
        self.delete_slots(vec![slot])?;
        Ok(())
    }
}
