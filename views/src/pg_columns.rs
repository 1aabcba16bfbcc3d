//! Array columns of the catalog that clients index or hand to array functions, and that
//! datafusion-pg-catalog lacks (`pg_class.relacl`, `pg_class.reloptions`) or types as text:
//!
//! - `text[]`, NULL in every row: the ACLs psql hands to `array_to_string`
//!   (`pg_namespace.nspacl`, `pg_attribute.attacl`) and `pg_event_trigger.evttags`. strata keeps
//!   no PostgreSQL ACLs (its grants are its tokens' scopes) and no storage options, and NULL is
//!   what PostgreSQL shows for default privileges.
//! - `int2[]`, parsed from the library's text (`[2, 20, 3]`, `1 2`): the column numbers of
//!   constraints and indexes (`pg_constraint.conkey`/`confkey`, `pg_index.indkey`/`indoption`),
//!   which pgjdbc's foreign-key and index listings subscript (`con.conkey[pos.n]`).

use arrow::array::{
    AsArray, Int16Builder, ListArray, ListBuilder, RecordBatch, StringArray, new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// The element type of an array column, and where its values come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Element {
    /// `text[]`, NULL in every row.
    Text,
    /// `int2[]`, parsed from the library's text.
    Int2,
}

/// The array columns of each catalog table.
const ARRAY_COLUMNS: &[(&str, &[(&str, Element)])] = &[
    (
        "pg_class",
        &[("relacl", Element::Text), ("reloptions", Element::Text)],
    ),
    ("pg_namespace", &[("nspacl", Element::Text)]),
    ("pg_attribute", &[("attacl", Element::Text)]),
    ("pg_event_trigger", &[("evttags", Element::Text)]),
    (
        "pg_constraint",
        &[("conkey", Element::Int2), ("confkey", Element::Int2)],
    ),
    (
        "pg_index",
        &[("indkey", Element::Int2), ("indoption", Element::Int2)],
    ),
];

impl Element {
    fn array(self) -> DataType {
        let element = match self {
            Element::Text => DataType::Utf8,
            Element::Int2 => DataType::Int16,
        };
        DataType::List(Arc::new(Field::new_list_field(element, true)))
    }
}

/// Whether `column` is one of the `text[]` columns above, NULL in every row of its table.
pub(crate) fn always_null(column: &str) -> bool {
    ARRAY_COLUMNS.iter().any(|(_, columns)| {
        columns
            .iter()
            .any(|(c, e)| *e == Element::Text && c.eq_ignore_ascii_case(column))
    })
}

/// `pg_settings` with a row for every setting strata knows (the library's lists one), as a
/// fresh session has them: pgjdbc reads `max_index_keys` there before it lists foreign keys.
/// The table's schema stays the library's; columns other than the name, the value and its
/// source are NULL.
pub(crate) fn settings(table: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    use arrow::array::ArrayRef;
    let schema = table.schema();
    let rows = crate::postgres::default_settings();
    let text = |f: fn(&(&'static str, &'static str)) -> Option<&'static str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns = schema
        .fields()
        .iter()
        .map(|field| match field.name().as_str() {
            "name" => text(|(name, _)| Some(*name)),
            "setting" | "reset_val" => text(|(_, value)| Some(*value)),
            "source" => text(|_| Some("default")),
            _ => new_null_array(field.data_type(), rows.len()),
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(
        schema,
        vec![vec![batch]],
    )?))
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
    let element = |name: &str| columns.iter().find(|(c, _)| *c == name).map(|(_, e)| *e);
    let mut fields: Vec<Field> = inner
        .fields()
        .iter()
        .map(|f| match element(f.name()) {
            Some(e) => Field::new(f.name(), e.array(), true),
            None => f.as_ref().clone(),
        })
        .collect();
    for (column, e) in columns.iter() {
        if inner.field_with_name(column).is_err() {
            fields.push(Field::new(*column, e.array(), true));
        }
    }
    Arc::new(WithArrays {
        inner: table,
        schema: Arc::new(Schema::new(fields)),
    })
}

/// The `int2[]` of each of `text`'s values: numbers separated by commas or spaces, in brackets
/// or braces or bare; NULL for a NULL or a value that does not read so.
fn int2_arrays(text: &StringArray) -> ListArray {
    let mut out = ListBuilder::new(Int16Builder::new());
    for value in text.iter() {
        let numbers = value.and_then(|v| {
            crate::pg_procs::list(v)
                .into_iter()
                .map(|n| n.parse::<i16>().ok())
                .collect::<Option<Vec<_>>>()
        });
        match numbers {
            Some(numbers) => {
                out.values().append_slice(&numbers);
                out.append(true);
            }
            None => out.append(false),
        }
    }
    out.finish()
}

/// A catalog table with array columns replacing or following its own.
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
                Ok(i) if field.data_type() == &Element::Int2.array() => {
                    match batch.column(i).as_string_opt::<i32>() {
                        Some(text) => Arc::new(int2_arrays(text)),
                        None => new_null_array(field.data_type(), batch.num_rows()),
                    }
                }
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
        let batches = crate::pg_json::rows(self.inner.as_ref(), state).await?;
        crate::pg_json::in_memory(batches, |b| self.widen(&b), self.schema(), projection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    #[test]
    fn column_numbers_read_as_int2_arrays() {
        let text = StringArray::from(vec![
            Some("[2, 20, 3]"),
            Some("1 2"),
            Some("{4,5}"),
            Some(""),
            None,
            Some("x"),
        ]);
        let lists = int2_arrays(&text);
        let row = |i: usize| {
            lists.is_valid(i).then(|| {
                lists
                    .value(i)
                    .as_primitive::<arrow::datatypes::Int16Type>()
                    .values()
                    .to_vec()
            })
        };
        assert_eq!(row(0), Some(vec![2, 20, 3]));
        assert_eq!(row(1), Some(vec![1, 2]));
        assert_eq!(row(2), Some(vec![4, 5]));
        assert_eq!(row(3), Some(vec![]));
        assert_eq!(row(4), None);
        assert_eq!(row(5), None);
    }

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
