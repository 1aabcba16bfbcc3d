//! Access-privilege and option columns of the catalog that psql's listings read and
//! datafusion-pg-catalog lacks (`pg_class.relacl`, `pg_class.reloptions`) or types as text
//! (`pg_namespace.nspacl`, `pg_attribute.attacl`, `pg_event_trigger.evttags`, which psql hands
//! to `array_to_string` or `unnest`). Here they are `text[]`, as in PostgreSQL, and NULL in every
//! row: strata keeps no PostgreSQL ACLs (its grants are its tokens' scopes) and no storage
//! options, and NULL is what PostgreSQL shows for default privileges.

use arrow::array::{RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// The `text[]` columns of each catalog table, all NULL.
const ARRAY_COLUMNS: &[(&str, &[&str])] = &[
    ("pg_class", &["relacl", "reloptions"]),
    ("pg_namespace", &["nspacl"]),
    ("pg_attribute", &["attacl"]),
    ("pg_event_trigger", &["evttags"]),
];

/// Whether `column` is one of the array columns above, NULL in every row of its table.
pub(crate) fn always_null(column: &str) -> bool {
    ARRAY_COLUMNS
        .iter()
        .any(|(_, columns)| columns.iter().any(|c| c.eq_ignore_ascii_case(column)))
}

/// `table` (catalog table `name`) with its array columns, if it has any.
pub(crate) fn with_array_columns(
    name: &str,
    table: Arc<dyn TableProvider>,
) -> Arc<dyn TableProvider> {
    let Some((_, columns)) = ARRAY_COLUMNS
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(name))
    else {
        return table;
    };
    let inner = table.schema();
    let mut fields: Vec<Field> = inner
        .fields()
        .iter()
        .map(|f| {
            if columns.contains(&f.name().as_str()) {
                Field::new(f.name(), text_array(), true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    for column in columns.iter() {
        if inner.field_with_name(column).is_err() {
            fields.push(Field::new(*column, text_array(), true));
        }
    }
    Arc::new(WithArrays {
        inner: table,
        schema: Arc::new(Schema::new(fields)),
    })
}

fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// A catalog table with NULL `text[]` columns replacing or following its own.
#[derive(Debug)]
struct WithArrays {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl WithArrays {
    /// `batch` of the inner table in this table's schema.
    fn widen(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let own = batch.schema();
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| match own.index_of(field.name()) {
                Ok(i) if own.field(i).data_type() == field.data_type() => batch.column(i).clone(),
                _ => new_null_array(field.data_type(), batch.num_rows()),
            })
            .collect();
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for WithArrays {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        // As for pg_attribute's retyping: the rows are few, read whole; DataFusion filters above.
        let batches = crate::pg_json::rows(self.inner.as_ref(), state)
            .await?
            .iter()
            .map(|batch| self.widen(batch))
            .collect::<Result<Vec<_>>>()?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[batches], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn acl_columns_are_null_text_arrays() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("oid", DataType::Int32, false),
            Field::new("nspname", DataType::Utf8, false),
            Field::new("nspacl", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["public", "pg_catalog"])),
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ],
        )
        .unwrap();
        let inner = Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap());
        let table = with_array_columns("pg_namespace", inner);
        let ctx = SessionContext::new();
        ctx.register_table("n", table).unwrap();
        let out = ctx
            .sql("SELECT nspname, array_to_string(nspacl, ',') AS acl FROM n ORDER BY oid")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(out[0].num_rows(), 2);
        assert_eq!(out[0].column(1).null_count(), 2);
        // A table without such columns is the same table.
        let plain: Arc<dyn TableProvider> = Arc::new(
            MemTable::try_new(
                Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
                vec![vec![]],
            )
            .unwrap(),
        );
        assert!(Arc::ptr_eq(
            &with_array_columns("pg_type", plain.clone()),
            &plain
        ));
        let class = with_array_columns(
            "pg_class",
            Arc::new(
                MemTable::try_new(
                    Arc::new(Schema::new(vec![Field::new("oid", DataType::Int32, false)])),
                    vec![vec![]],
                )
                .unwrap(),
            ),
        );
        let names: Vec<_> = class
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["oid", "relacl", "reloptions"]);
    }
}
