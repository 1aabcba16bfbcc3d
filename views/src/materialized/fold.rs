//! Folding: a batch of events into per-group deltas, deltas into stored state, stored state into
//! the view's rows; and the [`Maintainer`] the store calls in each commit.

use super::accumulators::{Acc, Input};
use super::{Group, GroupDelta, ViewPlan, codec};
use crate::{Error, Result};
use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use std::collections::BTreeMap;
use std::sync::Arc;

impl ViewPlan {
    /// The schema of the view's rows.
    pub fn schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// What a batch of the stream's events adds to the view, per group (stored key → delta);
    /// nothing of the view changes until [`ViewPlan::merge_stored`].
    pub fn delta(&self, batch: &RecordBatch) -> Result<Vec<(Vec<u8>, GroupDelta)>> {
        Ok(self
            .fold_batch(batch)?
            .into_iter()
            .map(|(key, accs)| (key, GroupDelta(accs)))
            .collect())
    }

    /// The stored form of a group key (see [`codec`]).
    fn encode_key(&self, keys: &[ScalarValue]) -> Result<Vec<u8>> {
        // Never empty (the store's keys cannot be): a global aggregate's one group is `[VERSION]`.
        let mut out = Vec::with_capacity(16);
        out.push(codec::VERSION);
        for k in keys {
            codec::put_scalar(&mut out, k)?;
        }
        Ok(out)
    }

    /// Merges `delta` into a group's stored state (`None` for a new group) and returns the new
    /// stored state.
    pub fn merge_stored(
        &self,
        key: &[u8],
        stored: Option<&[u8]>,
        delta: GroupDelta,
    ) -> Result<Vec<u8>> {
        // A stored group is its key followed by its accumulators: the key is copied, not decoded,
        // and the stored accumulators merge into the delta's.
        let mut accs = delta.0;
        if let Some(bytes) = stored {
            let mut input = bytes.strip_prefix(key).ok_or_else(codec::corrupt)?;
            for (acc, a) in accs.iter_mut().zip(&self.aggregates) {
                acc.merge(&Acc::decode(&mut input, a)?)?;
            }
            if !input.is_empty() {
                return Err(codec::corrupt());
            }
        }
        let mut out = Vec::with_capacity(key.len() + 16 * accs.len());
        out.extend_from_slice(key);
        for acc in &accs {
            acc.encode(&mut out)?;
        }
        Ok(out)
    }

    /// The view's rows made of stored groups (as [`ViewPlan::merge_stored`] wrote them). A global
    /// aggregate has its one row even with no group stored.
    pub fn rows_of<'a>(&self, stored: impl IntoIterator<Item = &'a [u8]>) -> Result<RecordBatch> {
        self.rows_from(&self.decode_state(stored)?)
    }

    /// How many distinct groups `stored` (states of one or more partitions) holds.
    ///
    /// # Errors
    /// A stored state that does not decode.
    pub fn count_groups<'a>(&self, stored: impl IntoIterator<Item = &'a [u8]>) -> Result<u64> {
        let mut keys = std::collections::HashSet::new();
        for bytes in stored {
            keys.insert(self.encode_key(&self.decode_group(bytes)?.keys)?);
        }
        Ok(keys.len() as u64)
    }

    fn decode_state<'a>(
        &self,
        stored: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<BTreeMap<Vec<u8>, Group>> {
        let mut state = BTreeMap::new();
        if self.groups.is_empty() {
            let accs = self
                .aggregates
                .iter()
                .map(Acc::new)
                .collect::<Result<_>>()?;
            state.insert(
                self.encode_key(&[])?,
                Group {
                    keys: Vec::new(),
                    accs,
                },
            );
        }
        // A group stored on several partitions merges their states (sums and counts add up,
        // distinct sets unite, minimums and maximums compare).
        for bytes in stored {
            let group = self.decode_group(bytes)?;
            match state.entry(self.encode_key(&group.keys)?) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(group);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    for (acc, other) in o.get_mut().accs.iter_mut().zip(&group.accs) {
                        acc.merge(other)?;
                    }
                }
            }
        }
        Ok(state)
    }

    /// For each group key, the output column that shows it as is (`None` when the select list
    /// does not show it plainly).
    pub fn key_columns(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.groups.len()];
        for (i, p) in self.projection.iter().enumerate() {
            if let Some(c) = p
                .as_ref()
                .downcast_ref::<datafusion::physical_expr::expressions::Column>()
                && let Some(slot) = out.get_mut(c.index())
                && slot.is_none()
            {
                *slot = Some(i);
            }
        }
        out
    }

    /// The stored key of the group whose key values are `values` (one per group expression, in
    /// order), cast to the key types; `None` when a value cannot be a key of this view exactly
    /// (lookups then scan).
    pub fn lookup_key(&self, values: &[ScalarValue]) -> Option<Vec<u8>> {
        if values.len() != self.groups.len() {
            return None;
        }
        let keys = values
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let t = self.aggregate_schema.field(k).data_type();
                let exact = matches!(
                    t,
                    DataType::Boolean
                        | DataType::Int8
                        | DataType::Int16
                        | DataType::Int32
                        | DataType::Int64
                        | DataType::UInt8
                        | DataType::UInt16
                        | DataType::UInt32
                        | DataType::UInt64
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                        | DataType::Date32
                        | DataType::Timestamp(_, _)
                );
                let cast = v.cast_to(t).ok()?;
                // Only values that survive the cast unchanged name a key.
                let back = cast.cast_to(&v.data_type()).ok()?;
                (exact && !v.is_null() && &back == v).then_some(cast)
            })
            .collect::<Option<Vec<_>>>()?;
        self.encode_key(&keys).ok()
    }

    fn decode_group(&self, bytes: &[u8]) -> Result<Group> {
        let mut input = bytes;
        if codec::take(&mut input, 1)?[0] != codec::VERSION {
            return Err(codec::corrupt());
        }
        let keys = (0..self.groups.len())
            .map(|k| codec::get_scalar(&mut input, self.aggregate_schema.field(k).data_type()))
            .collect::<Result<Vec<_>>>()?;
        let accs = self
            .aggregates
            .iter()
            .map(|a| Acc::decode(&mut input, a))
            .collect::<Result<Vec<_>>>()?;
        if !input.is_empty() {
            return Err(codec::corrupt());
        }
        Ok(Group { keys, accs })
    }

    /// Folds `batch` into fresh per-group accumulators: (stored key, accumulators) per group
    /// the batch touches.
    fn fold_batch(&self, batch: &RecordBatch) -> Result<Vec<(Vec<u8>, Vec<Acc>)>> {
        let batch = match &self.filter {
            Some(f) => {
                let mask = f.evaluate(batch)?.into_array(batch.num_rows())?;
                let mask = arrow::array::AsArray::as_boolean_opt(mask.as_ref())
                    .ok_or_else(|| Error::Invalid("the WHERE clause is not a boolean".into()))?
                    .clone();
                arrow::compute::filter_record_batch(batch, &mask)?
            }
            None => batch.clone(),
        };
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let keys: Vec<ArrayRef> = self
            .groups
            .iter()
            .map(|g| Ok(g.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let inputs: Vec<Input> = self
            .aggregates
            .iter()
            .map(|a| Input::of(a, a.arg.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<_>>()?;
        let mut index: ahash::AHashMap<Vec<u8>, usize> =
            ahash::AHashMap::with_capacity(n.min(1 << 16));
        let mut groups: Vec<Vec<Acc>> = Vec::new();
        let mut key = Vec::with_capacity(32);
        for i in 0..n {
            key.clear();
            key.push(codec::VERSION);
            for k in &keys {
                codec::put_cell_at(&mut key, k, i)?;
            }
            let at = match index.get(key.as_slice()) {
                Some(&at) => at,
                None => {
                    groups.push(
                        self.aggregates
                            .iter()
                            .map(Acc::new)
                            .collect::<Result<Vec<_>>>()?,
                    );
                    index.insert(key.clone(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            for ((acc, a), input) in groups[at].iter_mut().zip(&self.aggregates).zip(&inputs) {
                acc.add_at(input, i, &a.output)?;
            }
        }
        let mut groups: Vec<Option<Vec<Acc>>> = groups.into_iter().map(Some).collect();
        Ok(index
            .into_iter()
            .filter_map(|(key, at)| Some((key, groups.get_mut(at)?.take()?)))
            .collect())
    }

    fn rows_from(&self, state: &BTreeMap<Vec<u8>, Group>) -> Result<RecordBatch> {
        let groups = state.values();
        let key_count = self.groups.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.aggregate_schema.fields().len());
        for k in 0..key_count {
            let values: Vec<ScalarValue> = groups.clone().map(|g| g.keys[k].clone()).collect();
            columns.push(column(values, self.aggregate_schema.field(k))?);
        }
        for (j, a) in self.aggregates.iter().enumerate() {
            let values = groups
                .clone()
                .map(|g| g.accs[j].value(&a.output))
                .collect::<Result<Vec<_>>>()?;
            columns.push(column(values, self.aggregate_schema.field(key_count + j))?);
        }
        let aggregated = RecordBatch::try_new_with_options(
            self.aggregate_schema.clone(),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(state.len())),
        )?;
        let n = aggregated.num_rows();
        let out: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|p| Ok(p.evaluate(&aggregated)?.into_array(n)?))
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.output.clone(),
            out,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// The schema of the stream the view reads.
    pub fn input_schema(&self) -> SchemaRef {
        self.input.clone()
    }
}

pub(super) fn column(values: Vec<ScalarValue>, field: &Field) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(arrow::array::new_empty_array(field.data_type()));
    }
    let array = ScalarValue::iter_to_array(values)?;
    if array.data_type() == field.data_type() {
        Ok(array)
    } else {
        Ok(arrow::compute::cast(&array, field.data_type())?)
    }
}

/// A schema helper for tests and callers: the Arrow schema of `fields`.
pub fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// Folds batches of a stream into a view's stored groups, for the store (see
/// [`strata_store::ViewFold`]).
pub struct Maintainer(pub Arc<ViewPlan>);

impl strata_store::ViewFold for Maintainer {
    fn fold(
        &self,
        rows: &RecordBatch,
        stored: &mut strata_store::ReadGroup<'_>,
    ) -> strata_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let view = |e: Error| strata_store::Error::View(e.to_string());
        let deltas = self.0.delta(rows).map_err(view)?;
        let mut out = Vec::with_capacity(deltas.len());
        for (key, delta) in deltas {
            let current = stored(&key)?;
            let merged = self
                .0
                .merge_stored(&key, current.as_deref(), delta)
                .map_err(view)?;
            out.push((key, merged));
        }
        Ok(out)
    }
}
