//! Functions whose output can grow without bound (`repeat('x', 1e9)`, `lpad`, `array_repeat`,
//! `range`, `regexp_replace` with a huge replacement, …) reserve their output's size from the
//! query memory pool before they build it. DataFusion's pool only accounts operators (sorts,
//! joins, aggregations), not scalar function results, so without this one expression could
//! allocate gigabytes past `limits.query_memory_bytes`. The estimate is taken from the
//! arguments, before anything is allocated; the reservation is released once the value is built
//! (an operator that keeps it accounts it again).

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How a function's output size follows from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`.
    Repeat,
    /// `lpad`/`rpad(text, n, …)`: `n` characters.
    Pad,
    /// `array_repeat(element, n)` and `array_resize(array, n, …)`: `n` elements of the first
    /// argument's size.
    Elements,
    /// `range`/`generate_series(start, stop[, step])` over integers.
    Series,
    /// `replace(text, from, to)`: every match of `from` becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement[, flags])`: with `g`, a replacement per
    /// character at most.
    RegexpReplace,
}

const CAPPED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::Elements),
    ("array_resize", Growth::Elements),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
];

/// Replaces the unbounded functions of `ctx` with versions that reserve their output from the
/// context's memory pool.
pub(crate) fn register(ctx: &SessionContext) {
    let pool = ctx.runtime_env().memory_pool.clone();
    for (name, growth) in CAPPED {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Capped {
                inner,
                growth,
                pool: pool.clone(),
            }));
        }
    }
    crate::capped_agg::register(ctx);
}

/// A scalar function that reserves its output's estimated size before running.
#[derive(Debug)]
struct Capped {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for Capped {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
            && self.growth == other.growth
            && Arc::ptr_eq(&self.pool, &other.pool)
    }
}
impl Eq for Capped {}
impl Hash for Capped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

/// Per row, the byte length of a text argument (0 for null or non-text).
pub(crate) fn text_lengths(arg: &ColumnarValue, rows: usize) -> Vec<u64> {
    match arg {
        ColumnarValue::Scalar(s) => {
            let len = match s {
                ScalarValue::Utf8(Some(v))
                | ScalarValue::LargeUtf8(Some(v))
                | ScalarValue::Utf8View(Some(v)) => v.len() as u64,
                _ => 0,
            };
            vec![len; rows]
        }
        ColumnarValue::Array(a) => {
            let lengths = |f: &dyn Fn(usize) -> u64| (0..a.len()).map(f).collect::<Vec<_>>();
            match a.data_type() {
                DataType::Utf8 => {
                    let a = a.as_string::<i32>();
                    lengths(&|i| {
                        if a.is_valid(i) {
                            a.value(i).len() as u64
                        } else {
                            0
                        }
                    })
                }
                DataType::LargeUtf8 => {
                    let a = a.as_string::<i64>();
                    lengths(&|i| {
                        if a.is_valid(i) {
                            a.value(i).len() as u64
                        } else {
                            0
                        }
                    })
                }
                DataType::Utf8View => {
                    let a = a.as_string_view();
                    lengths(&|i| {
                        if a.is_valid(i) {
                            a.value(i).len() as u64
                        } else {
                            0
                        }
                    })
                }
                _ => vec![0; a.len()],
            }
        }
    }
}

/// Per row, an integer argument (0 for null, negative or non-integer).
fn counts(arg: &ColumnarValue, rows: usize) -> Vec<u64> {
    counts_signed(arg, rows)
        .into_iter()
        .map(|v| v.max(0).unsigned_abs())
        .collect()
}

/// Per row, the bytes one value of `arg` takes (at least 8).
fn element_sizes(arg: &ColumnarValue, rows: usize) -> Vec<u64> {
    let each = match arg {
        ColumnarValue::Scalar(s) => s.size() as u64,
        ColumnarValue::Array(a) => (a.get_array_memory_size() / a.len().max(1)) as u64,
    };
    vec![each.max(8); rows]
}

impl Capped {
    /// The bytes the call would build, from its arguments.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> u64 {
        let rows = rows.max(1);
        let arg = |i: usize| args.get(i);
        let sum = |v: Vec<u64>, w: Vec<u64>| -> u64 {
            v.iter()
                .zip(w)
                .fold(0u64, |acc, (a, b)| acc.saturating_add(a.saturating_mul(b)))
        };
        match (self.growth, arg(0), arg(1), arg(2)) {
            (Growth::Repeat, Some(text), Some(n), _) => {
                sum(text_lengths(text, rows), counts(n, rows))
            }
            (Growth::Pad, Some(_), Some(n), _) => sum(vec![1; rows], counts(n, rows)),
            (Growth::Elements, Some(element), Some(n), _) => {
                sum(element_sizes(element, rows), counts(n, rows))
            }
            (Growth::Series, Some(start), stop, step) => {
                let (start, stop) = match stop {
                    Some(stop) => (counts_signed(start, rows), counts_signed(stop, rows)),
                    None => (vec![0; rows], counts_signed(start, rows)),
                };
                let step = step.map_or(vec![1; rows], |s| counts_signed(s, rows));
                let elements = start
                    .iter()
                    .zip(stop.iter().zip(step))
                    .map(|(a, (b, s))| (b.abs_diff(*a)) / s.unsigned_abs().max(1))
                    .collect();
                sum(vec![8; rows], elements)
            }
            (Growth::Replace, Some(text), Some(from), Some(to)) => {
                let text = text_lengths(text, rows);
                let from = text_lengths(from, rows);
                let matches = text
                    .iter()
                    .zip(from)
                    .map(|(t, f)| t / f.max(1) + 1)
                    .collect();
                sum(matches, text_lengths(to, rows)).saturating_add(text.iter().sum())
            }
            (Growth::RegexpReplace, Some(text), Some(_), Some(replacement)) => {
                let global = match args.get(3) {
                    Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(flags)))) => {
                        flags.contains('g')
                    }
                    Some(_) => true,
                    None => false,
                };
                let text = text_lengths(text, rows);
                let matches = text
                    .iter()
                    .map(|t| if global { t + 1 } else { 1 })
                    .collect();
                sum(matches, text_lengths(replacement, rows)).saturating_add(text.iter().sum())
            }
            _ => 0,
        }
    }
}

/// Per row, an integer argument as signed (0 for null or non-integer).
fn counts_signed(arg: &ColumnarValue, rows: usize) -> Vec<i64> {
    let array = match arg {
        ColumnarValue::Scalar(s) => s.to_array_of_size(1).ok(),
        ColumnarValue::Array(a) => Some(a.clone()),
    };
    let Some(values) = array.and_then(|a| match a.data_type() {
        t if t.is_integer() => arrow::compute::cast(&a, &DataType::Int64).ok(),
        _ => None,
    }) else {
        return vec![0; rows];
    };
    let values = values.as_primitive::<Int64Type>();
    (0..rows)
        .map(|i| {
            let i = if values.len() == 1 { 0 } else { i };
            if i < values.len() && values.is_valid(i) {
                values.value(i)
            } else {
                0
            }
        })
        .collect()
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    #[allow(deprecated)]
    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        self.inner.inner().is_nullable(args, schema)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.estimate(&args.args, args.number_rows);
        let reservation = MemoryConsumer::new(format!("{}()", self.name())).register(&self.pool);
        reservation
            .try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))
            .map_err(|_| {
                DataFusionError::ResourcesExhausted(format!(
                    "{}() would build about {bytes} bytes, more than the query memory limit (limits.query_memory_bytes) leaves",
                    self.name()
                ))
            })?;
        let out = self.inner.invoke_with_args(args);
        drop(reservation);
        out
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use std::sync::Arc;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn unbounded_functions_reserve_their_output() {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(16 << 20)))
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        super::register(&ctx);
        for bomb in [
            "SELECT length(repeat('x', 1000000000))",
            "SELECT length(lpad('x', 1000000000))",
            "SELECT length(rpad('x', 1000000000, 'ab'))",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(array_resize([1], 1000000000, 0))",
            "SELECT cardinality(range(0, 1000000000))",
            "SELECT cardinality(generate_series(1, 1000000000))",
            "SELECT length(replace(repeat('a', 1000), 'a', repeat('b', 100000)))",
            "SELECT length(regexp_replace(repeat('a', 1000), '', repeat('b', 100000), 'g'))",
            "SELECT length(repeat(v, 1000000)) FROM (VALUES (repeat('x', 100)), ('y')) AS t(v)",
        ] {
            let e = run(&ctx, bomb).await.unwrap_err();
            assert!(e.contains("query memory limit"), "{bomb}: {e}");
        }
        for fine in [
            "SELECT length(repeat('x', 1000))",
            "SELECT cardinality(range(0, 1000))",
            "SELECT replace('abc', 'b', 'x')",
            "SELECT regexp_replace('abc', 'b', 'x', 'g')",
        ] {
            assert_eq!(run(&ctx, fine).await, Ok(1), "{fine}");
        }
    }
}
