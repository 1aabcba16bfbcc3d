//! `json` in the PostgreSQL catalog for a stream's `data` column.
//!
//! datafusion-pg-catalog types each `pg_attribute` row by its column's Arrow type alone, so
//! `data` — text, marked as JSON in its field metadata (`strata_store::schema::is_json`) and sent
//! as `json` in query answers — would be listed as `text` by psql's `\d`, SQLAlchemy's
//! `get_columns()` and the column browsers of BI tools. Here the `pg_catalog` schema is the
//! library's with one table wrapped: `pg_attribute`, whose rows for a marked column of a stream
//! (or a view) get `json`'s type. Which relation a row belongs to is read from `pg_class`, whose
//! OIDs the library keeps consistent with `pg_attribute`'s.

use arrow::array::{AsArray, Int32Array, RecordBatch};
use arrow::datatypes::{Int32Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The names of the JSON-marked columns of each relation, by its OID.
type JsonColumns = HashMap<i32, HashSet<String>>;

/// PostgreSQL's type OIDs of `text` and `json`.
const TEXT_OID: i32 = 25;
const JSON_OID: i32 = 114;

/// The `pg_catalog` schema: the library's tables, `pg_attribute` wrapped by [`Attributes`],
/// `pg_settings` listing strata's settings, and the access-privilege columns psql reads as arrays
/// ([`crate::pg_columns`]).
#[derive(Debug)]
pub(crate) struct PgCatalog {
    /// datafusion-pg-catalog's schema.
    pub(crate) inner: Arc<dyn SchemaProvider>,
    /// The streams and views, whose columns say which are JSON.
    pub(crate) tables: Arc<dyn SchemaProvider>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = self.inner.table(name).await?;
        let table: Option<Arc<dyn TableProvider>> = match table {
            Some(inner) if name.eq_ignore_ascii_case("pg_attribute") => {
                Some(Arc::new(Attributes {
                    inner,
                    catalog: self.inner.clone(),
                    tables: self.tables.clone(),
                }))
            }
            Some(inner) if name.eq_ignore_ascii_case("pg_settings") => {
                Some(crate::pg_columns::settings(inner)?)
            }
            other => other,
        };
        Ok(table.map(|t| crate::pg_columns::with_array_columns(name, t)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `pg_attribute` with `json` as the type of every JSON-marked column.
#[derive(Debug)]
struct Attributes {
    inner: Arc<dyn TableProvider>,
    catalog: Arc<dyn SchemaProvider>,
    tables: Arc<dyn SchemaProvider>,
}

impl Attributes {
    /// The JSON-marked columns of each stream or view, by relation OID.
    async fn json_columns(&self, state: &dyn Session) -> Result<JsonColumns> {
        let mut columns = JsonColumns::new();
        let Some(classes) = self.catalog.table("pg_class").await? else {
            return Ok(columns);
        };
        let mut json: HashMap<String, Vec<String>> = HashMap::new();
        for name in self.tables.table_names() {
            if let Some(table) = self.tables.table(&name).await? {
                let marked: Vec<String> = table
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| strata_store::schema::is_json(f))
                    .map(|f| f.name().clone())
                    .collect();
                if !marked.is_empty() {
                    json.insert(name, marked);
                }
            }
        }
        if json.is_empty() {
            return Ok(columns);
        }
        for batch in rows(classes.as_ref(), state).await? {
            let oids = int32(&batch, "oid")?;
            let names = batch
                .column_by_name("relname")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| shape("pg_class.relname"))?;
            for row in 0..batch.num_rows() {
                if let Some(marked) = json.get(names.value(row)) {
                    columns
                        .entry(oids.value(row))
                        .or_default()
                        .extend(marked.iter().cloned());
                }
            }
        }
        Ok(columns)
    }
}

#[async_trait]
impl TableProvider for Attributes {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // The catalog's rows are few (a row per column of each table): read them whole, retype,
        // and let DataFusion filter and limit above, as it would over the library's table.
        let json = self.json_columns(state).await?;
        let batches = rows(self.inner.as_ref(), state).await?;
        in_memory(
            batches,
            |batch| retype(batch, &json),
            self.schema(),
            projection,
        )
    }
}

/// `batches`, each mapped by `map`, as the scan of a table of `schema` (its `projection`).
pub(crate) fn in_memory(
    batches: Vec<RecordBatch>,
    map: impl Fn(RecordBatch) -> Result<RecordBatch>,
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let batches = batches.into_iter().map(map).collect::<Result<Vec<_>>>()?;
    let exec: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[batches], schema, projection.cloned())?;
    Ok(exec)
}

/// Every row of `table`.
pub(crate) async fn rows(
    table: &dyn TableProvider,
    state: &dyn Session,
) -> Result<Vec<RecordBatch>> {
    let plan = table.scan(state, None, &[], None).await?;
    collect(plan, state.task_ctx()).await
}

fn shape(column: &str) -> DataFusionError {
    DataFusionError::Internal(format!("pg_catalog: {column} is not of the expected type"))
}

fn int32<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int32Array> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .ok_or_else(|| shape(name))
}

/// `batch` of `pg_attribute` with `atttypid` set to `json` for the columns in `json`.
fn retype(batch: RecordBatch, json: &JsonColumns) -> Result<RecordBatch> {
    if json.is_empty() {
        return Ok(batch);
    }
    let relations = int32(&batch, "attrelid")?;
    let names = batch
        .column_by_name("attname")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| shape("pg_attribute.attname"))?;
    let index = batch
        .schema()
        .index_of("atttypid")
        .map_err(|_| shape("pg_attribute.atttypid"))?;
    let types = int32(&batch, "atttypid")?;
    let retyped: Int32Array = types
        .iter()
        .enumerate()
        .map(|(row, t)| {
            let marked = t == Some(TEXT_OID)
                && json
                    .get(&relations.value(row))
                    .is_some_and(|columns| columns.contains(names.value(row)));
            if marked { Some(JSON_OID) } else { t }
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(retyped);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn only_marked_text_columns_become_json() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("attrelid", DataType::Int32, false),
            Field::new("attname", DataType::Utf8, false),
            Field::new("atttypid", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1, 1, 2, 3])),
                Arc::new(StringArray::from(vec!["data", "key", "data", "data"])),
                Arc::new(Int32Array::from(vec![25, 25, 25, 20])),
            ],
        )
        .unwrap();
        let json: JsonColumns = [(1, "data"), (3, "data")]
            .into_iter()
            .map(|(oid, name)| (oid, HashSet::from([name.to_owned()])))
            .collect();
        let out = retype(batch, &json).unwrap();
        let types = out.column(2).as_primitive::<Int32Type>();
        // Relation 1's data becomes json; its key, relation 2's data (not marked) and a marked
        // column that is not text (relation 3) keep their types.
        assert_eq!(types.values().to_vec(), vec![114, 25, 25, 20]);
    }
}
