//! `string_agg` reserves the growth of its text from the query memory pool before it grows.
//!
//! DataFusion accounts an aggregate's accumulator after each batch (`size()` after minus before),
//! and `string_agg`'s text is one `String` that doubles as it grows: while it copies itself, the
//! old and the new buffer are both alive, up to three times what was accounted, and with one
//! partial aggregation per core they grow at once. So a `string_agg` stopped by
//! `limits.query_memory_bytes` made the process allocate two to three times the limit before the
//! pool said no (BENCHMARKS.md 2a). Wrapped, a growth the pool cannot hold is refused before the
//! copy. Only the plain form is wrapped (no `DISTINCT`, no `ORDER BY`): the others collect their
//! input as Arrow arrays, which do not double.

use crate::capped::text_lengths;
use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Documentation, Expr,
    GroupsAccumulator, Operator, ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;
use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Replaces `string_agg` of `ctx` with a version that reserves its text's growth from the
/// context's memory pool.
pub(crate) fn register(ctx: &SessionContext) {
    let pool = ctx.runtime_env().memory_pool.clone();
    if let Ok(inner) = ctx.udaf("string_agg") {
        ctx.register_udaf(AggregateUDF::new_from_impl(CappedStringAgg {
            inner: inner.inner().clone(),
            pool,
        }));
    }
}

/// `string_agg` whose plain accumulator is a [`Reserving`] one; everything else is the inner
/// function's.
#[derive(Debug)]
struct CappedStringAgg {
    inner: Arc<dyn AggregateUDFImpl>,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for CappedStringAgg {
    fn eq(&self, other: &Self) -> bool {
        self.inner.dyn_eq(other.inner.as_ref() as &dyn Any) && Arc::ptr_eq(&self.pool, &other.pool)
    }
}
impl Eq for CappedStringAgg {}
impl Hash for CappedStringAgg {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.dyn_hash(state);
    }
}

impl CappedStringAgg {
    fn wrap(&self, inner: Arc<dyn AggregateUDFImpl>) -> Arc<dyn AggregateUDFImpl> {
        Arc::new(Self {
            inner,
            pool: self.pool.clone(),
        })
    }
}

/// The byte length of a literal text expression (0 when it is anything else).
fn literal_len(expr: Option<&Arc<dyn datafusion::physical_expr::PhysicalExpr>>) -> usize {
    match expr
        .and_then(|e| e.downcast_ref::<Literal>())
        .map(Literal::value)
    {
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => s.len(),
        _ => 0,
    }
}

#[warn(clippy::missing_trait_methods)]
impl AggregateUDFImpl for CappedStringAgg {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let plain = !acc_args.is_distinct && acc_args.order_bys.is_empty();
        let delimiter = literal_len(acc_args.exprs.get(1));
        let inner = self.inner.accumulator(acc_args)?;
        if !plain {
            return Ok(inner);
        }
        Ok(Box::new(Reserving {
            base: inner.size(),
            inner,
            len: 0,
            delimiter,
            reservation: MemoryConsumer::new("string_agg()").register(&self.pool),
        }))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.human_display(params)
    }

    fn window_function_schema_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.display_name(params)
    }

    fn window_function_display_name(
        &self,
        params: &datafusion::logical_expr::expr::WindowFunctionParams,
    ) -> Result<String> {
        self.inner.window_function_display_name(params)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.accumulator(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        Ok(Arc::clone(&self.inner)
            .with_beneficial_ordering(beneficial_ordering)?
            .map(|inner| self.wrap(inner)))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.inner.simplify()
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_expr() {
            ReversedUDAF::Reversed(udaf) => ReversedUDAF::Reversed(Arc::new(
                AggregateUDF::new_from_shared_impl(self.wrap(udaf.inner().clone())),
            )),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.supports_within_group_clause()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// The plain `string_agg` accumulator, asking the pool for its text's next buffer before the
/// text grows into it.
#[derive(Debug)]
struct Reserving {
    inner: Box<dyn Accumulator>,
    /// `inner.size()` with an empty text: what is not the text's capacity.
    base: usize,
    /// Bytes the text holds (since the last `state()`, which hands the text over).
    len: usize,
    /// Bytes of the delimiter put between two values.
    delimiter: usize,
    /// What the growth in progress needs beyond what DataFusion has accounted; empty between
    /// batches.
    reservation: MemoryReservation,
}

impl Reserving {
    /// Reserves what appending `added` bytes may need at once: a text that outgrows its
    /// capacity doubles (or jumps to what it needs), holding its old and its new buffer while it
    /// copies — at most one and a half times the new capacity, of which the old capacity is
    /// accounted already.
    fn before_growth(&mut self, added: usize) -> Result<()> {
        let capacity = self.inner.size().saturating_sub(self.base);
        let target = self.len.saturating_add(added);
        if target <= capacity {
            return Ok(());
        }
        let mut next = capacity.max(8);
        while next < target {
            next = next.saturating_mul(2);
        }
        let peak = next.saturating_add(next / 2);
        self.reservation
            .try_resize(peak.saturating_sub(capacity))
            .map_err(|_| {
                DataFusionError::ResourcesExhausted(format!(
                    "string_agg() would grow its text to about {next} bytes, more than the query memory limit (limits.query_memory_bytes) leaves"
                ))
            })
    }

    /// Appends the values of `values` (text, and the delimiter between two) with their growth
    /// reserved first.
    fn append(
        &mut self,
        values: &[ArrayRef],
        run: impl FnOnce(&mut dyn Accumulator, &[ArrayRef]) -> Result<()>,
    ) -> Result<()> {
        let added = values.first().map_or(0, |text| {
            let lengths = text_lengths(&ColumnarValue::Array(text.clone()), text.len());
            let rows = text.len() - text.null_count();
            let bytes = lengths.iter().sum::<u64>();
            usize::try_from(bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(rows.saturating_mul(self.delimiter))
        });
        self.before_growth(added)?;
        let result = run(self.inner.as_mut(), values);
        self.reservation.free();
        result?;
        self.len = self.len.saturating_add(added);
        Ok(())
    }
}

impl Accumulator for Reserving {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.append(values, |inner, values| inner.update_batch(values))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.append(states, |inner, states| inner.merge_batch(states))
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // The answer is a copy of the text.
        self.reservation.try_resize(self.len).map_err(|_| {
            DataFusionError::ResourcesExhausted(format!(
                "string_agg() would copy its text of {} bytes, more than the query memory limit (limits.query_memory_bytes) leaves",
                self.len
            ))
        })?;
        let value = self.inner.evaluate();
        self.reservation.free();
        value
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.len = 0;
        self.inner.state()
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_expr::expressions::{col, lit};
    use datafusion::prelude::SessionConfig;

    const LIMIT: usize = 16 << 20;

    fn context() -> SessionContext {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(LIMIT)))
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        register(&ctx);
        ctx
    }

    /// Feeds 1 MB batches to `string_agg`'s plain accumulator as DataFusion's aggregation does
    /// (the growth of `size()` accounted after each batch, in the same pool) until one is
    /// refused; returns the largest `size()` reached and the refusal.
    fn grow_until_refused(ctx: &SessionContext) -> (usize, String) {
        let udaf = ctx.udaf("string_agg").unwrap();
        let schema = Schema::new(vec![Field::new("v", DataType::Utf8, true)]);
        let exprs = [col("v", &schema).unwrap(), lit(",")];
        let fields = [
            Arc::new(Field::new("v", DataType::Utf8, true)),
            Arc::new(Field::new("d", DataType::Utf8, false)),
        ];
        let mut acc = udaf
            .accumulator(AccumulatorArgs {
                return_field: Arc::new(Field::new("s", DataType::LargeUtf8, true)),
                schema: &schema,
                ignore_nulls: false,
                order_bys: &[],
                is_reversed: false,
                name: "string_agg(v, ',')",
                is_distinct: false,
                exprs: &exprs,
                expr_fields: &fields,
            })
            .unwrap();
        let pool = ctx.runtime_env().memory_pool.clone();
        let accounted = MemoryConsumer::new("AggregateStream").register(&pool);
        let text: ArrayRef = Arc::new(StringArray::from(vec!["x".repeat(999); 1000]));
        let delimiters: ArrayRef = Arc::new(StringArray::from(vec![","; 1000]));
        let mut largest = 0;
        for _ in 0..100 {
            let before = acc.size();
            let grown = acc
                .update_batch(&[text.clone(), delimiters.clone()])
                .and_then(|()| accounted.try_grow(acc.size() - before));
            largest = largest.max(acc.size());
            if let Err(e) = grown {
                return (largest, e.to_string());
            }
        }
        panic!("100 MB aggregated under a {LIMIT}-byte pool");
    }

    #[test]
    fn the_text_is_refused_before_it_grows_past_the_pool() {
        let (largest, refusal) = grow_until_refused(&context());
        assert!(
            refusal.contains("string_agg() would grow its text")
                && refusal.contains("limits.query_memory_bytes"),
            "{refusal}"
        );
        // While it grew, the text held its old buffer and its new one (one and a half times
        // the new): within the limit. DataFusion's own accounting alone let it reach the limit
        // before refusing, 1.5 times over it while it copied.
        assert!(largest + largest / 2 <= LIMIT, "{largest}");
    }

    #[tokio::test]
    async fn string_agg_answers_as_before_and_fails_over_the_limit() {
        let ctx = context();
        for (sql, expected) in [
            (
                "SELECT string_agg(v, '-') AS s FROM (VALUES ('a'), ('b'), ('c')) AS t(v)",
                "a-b-c",
            ),
            (
                "SELECT string_agg(v, '+' ORDER BY v DESC) AS s FROM (VALUES ('a'), ('b'), ('c')) AS t(v)",
                "c+b+a",
            ),
            (
                "SELECT string_agg(DISTINCT v, ',') AS s FROM (VALUES ('a'), ('a')) AS t(v)",
                "a",
            ),
        ] {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let formatted = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            assert!(
                formatted.contains(&format!("| {expected} |")),
                "{sql}: {formatted}"
            );
        }
        let err = ctx
            .sql("SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 1000000)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Resources exhausted"), "{err}");
    }
}
