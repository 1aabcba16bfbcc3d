//! Plans of repeated queries over materialized views, kept by their shape.
//!
//! A view lookup (`SELECT * FROM by_customer WHERE customer = 'c000042'`) is mostly DataFusion
//! planning: parsing is cheap, turning the statement into a plan and optimising it is not. The
//! literals of a query's `column = literal` conjuncts are taken out as placeholders; the
//! statement that is left (its *shape*) is planned and optimised once. When every placeholder
//! ends up in a view scan's filters and every node of the physical plan can run again, the
//! physical plan is kept too and later queries of the shape bind their literals into its view
//! scans ([`bind`]); otherwise they put their literals into the optimised plan and plan it
//! physically. A query with placeholders of its own (PostgreSQL's extended protocol, Flight
//! SQL's prepared statements) is its own shape, bound to the values it came with — the same
//! shape as a literal query of that form, so both find one plan.
//!
//! Only shapes whose every table is a materialized view are kept (a view's table answers the same
//! way until the view is replaced, which the entry checks on every use), and only plans whose
//! functions are immutable (`now()` is folded into a constant by the optimiser). A literal is
//! taken out only when its type is the one the placeholder is inferred to have, so the plan is the
//! one the literal would have got.
//!
//! [`SqlEngine::start_kept`] is where a query meets the cache: it finds or makes the kept plan,
//! checks grants on it and starts it.

use crate::Result;
use crate::engine::{Flavor, Query, QueryOutput, SqlEngine, ViewRegistry};
use crate::materialized::ViewPlan;
use crate::sandbox::{check_read_only, verify_read_only};
use crate::view_table::{ViewScanExec, ViewTable};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr as LExpr, LogicalPlan, Volatility};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, ObjectName, SetExpr, Statement, Value, Visit, Visitor,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

/// The most shapes kept; when full, the cache starts over.
const MAX_SHAPES: usize = 512;

/// What the plan cache gives for a query.
enum FromCache {
    /// The kept plan with its values bound in its view scans.
    Physical(Arc<Cached>, Arc<dyn ExecutionPlan>),
    /// The kept optimised plan with its values in place.
    Logical(LogicalPlan),
}

/// A statement with the literals of its `column = literal` conjuncts taken out (or, for one with
/// placeholders of its own, the statement and the values given for them).
pub(crate) struct Shape {
    /// The literals (or the given values), in placeholder order.
    pub(crate) values: Vec<ScalarValue>,
    /// Holds the statement with `$1`, `$2`, … in place of the literals (its template).
    key: Key,
}

impl Shape {
    /// The statement with `$1`, `$2`, … in place of the literals, to plan.
    pub(crate) fn template(&self) -> DfStatement {
        DfStatement::Statement(Box::new(self.key.1.clone()))
    }
}

/// A shape by its session, its statement (placeholders in) and the types of the literals taken
/// out of it. Statements compare without their source positions, so the same query sent with
/// other spacing finds the same entry.
type Key = (Flavor, Statement, Vec<DataType>);

/// A shape's optimised plan, with placeholders, and the views it was planned over.
pub(crate) struct Cached {
    /// The optimised plan.
    pub(crate) plan: LogicalPlan,
    pub(crate) views: Vec<(String, Arc<ViewPlan>)>,
    /// Its physical plan, when every placeholder sits in a view scan's filters (bound by
    /// [`bind`]) and every node can run again.
    pub(crate) physical: Option<Arc<dyn ExecutionPlan>>,
}

enum Entry {
    Plan(Arc<Cached>),
    /// A shape that is not kept (planned in full every time).
    Skip,
}

/// What the cache knows of a shape.
pub(crate) enum Lookup {
    /// Its plan, planned over the views as they are now.
    Hit(Arc<Cached>),
    /// Not known yet (or its views changed since).
    Miss,
    /// Known not to be kept.
    Skip,
}

/// Optimised plans by shape.
#[derive(Default)]
pub(crate) struct PlanCache {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl PlanCache {
    /// What is kept for `shape`.
    pub(crate) fn get(&self, shape: &Shape, views: &ViewRegistry) -> Lookup {
        match self.entries.lock().get(&shape.key) {
            None => Lookup::Miss,
            Some(Entry::Skip) => Lookup::Skip,
            Some(Entry::Plan(cached)) => {
                let current = cached
                    .views
                    .iter()
                    .all(|(name, plan)| views.get(name).is_some_and(|now| Arc::ptr_eq(&now, plan)));
                if current {
                    Lookup::Hit(cached.clone())
                } else {
                    Lookup::Miss
                }
            }
        }
    }

    /// The plans kept, as `EXPLAIN` shows them (after a line `physical` when the physical plan
    /// is kept too).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> Vec<String> {
        self.entries
            .lock()
            .values()
            .filter_map(|e| match e {
                Entry::Plan(cached) => Some(format!(
                    "{}{}",
                    if cached.physical.is_some() {
                        "physical\n"
                    } else {
                        ""
                    },
                    cached.plan.display_indent()
                )),
                Entry::Skip => None,
            })
            .collect()
    }

    /// Keeps `plan` (optimised, with the shape's placeholders) for `shape`, or remembers that
    /// the shape is not kept (`None`).
    pub(crate) fn put(&self, shape: &Shape, plan: Option<Arc<Cached>>) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_SHAPES && !entries.contains_key(&shape.key) {
            entries.clear();
        }
        let entry = match plan {
            Some(cached) => Entry::Plan(cached),
            None => Entry::Skip,
        };
        entries.insert(shape.key.clone(), entry);
    }
}

/// The shape of `statement` when it is a query that reads only materialized views of
/// `registry`; `None` otherwise. A query with placeholders of its own is its own shape, with
/// `params` as its values (positional, without metadata; `None` otherwise); the literals of a
/// query without are taken out.
pub(crate) fn shape(
    statement: &DfStatement,
    flavor: Flavor,
    registry: &ViewRegistry,
    params: Option<&ParamValues>,
) -> Option<Shape> {
    let DfStatement::Statement(inner) = statement else {
        return None;
    };
    let Statement::Query(query) = inner.as_ref() else {
        return None;
    };
    let mut walk = OnlyViews {
        registry,
        placeholders: false,
    };
    if inner.visit(&mut walk).is_break() {
        return None;
    }
    let (template, values) = match (walk.placeholders, params) {
        (false, None) => {
            let mut query = query.clone();
            let mut values = Vec::new();
            if let SetExpr::Select(select) = query.body.as_mut()
                && let Some(selection) = select.selection.as_mut()
            {
                take_literals(selection, &mut values);
            }
            (Statement::Query(query), values)
        }
        (true, Some(ParamValues::List(params))) => {
            let values = params
                .iter()
                .map(|p| p.metadata.is_none().then(|| p.value.clone()))
                .collect::<Option<Vec<_>>>()?;
            (inner.as_ref().clone(), values)
        }
        _ => return None,
    };
    let types = values.iter().map(ScalarValue::data_type).collect();
    Some(Shape {
        key: (flavor, template, types),
        values,
    })
}

/// Stops at a relation that is not a materialized view of the registry, and notes whether the
/// statement has placeholders (one walk of the statement for both).
struct OnlyViews<'a> {
    registry: &'a ViewRegistry,
    placeholders: bool,
}

impl Visitor for OnlyViews<'_> {
    type Break = ();

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let view = name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| match ident.quote_style {
                Some(_) => self.registry.contains(&ident.value),
                None => self.registry.contains(&ident.value.to_ascii_lowercase()),
            });
        if view {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = e
            && matches!(v.value, Value::Placeholder(_))
        {
            self.placeholders = true;
        }
        ControlFlow::Continue(())
    }
}

/// Replaces the literal of each `column = literal` (or `literal = column`) among the `AND`ed
/// conjuncts of `expr` with the next placeholder, pushing the literal to `values`.
fn take_literals(expr: &mut Expr, values: &mut Vec<ScalarValue>) {
    match expr {
        Expr::Nested(inner) => take_literals(inner, values),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            take_literals(left, values);
            take_literals(right, values);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let column = |e: &Expr| matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_));
            if column(left) {
                take_literal(right, values);
            } else if column(right) {
                take_literal(left, values);
            }
        }
        _ => {}
    }
}

/// Replaces `expr` with the next placeholder when it is a string or a 64-bit integer literal
/// (the types DataFusion gives them: `Utf8`, `Int64`).
fn take_literal(expr: &mut Expr, values: &mut Vec<ScalarValue>) {
    let Expr::Value(v) = expr else {
        return;
    };
    let value = match &v.value {
        Value::SingleQuotedString(s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Number(n, false) => match n.parse::<i64>() {
            Ok(n) => ScalarValue::Int64(Some(n)),
            Err(_) => return,
        },
        _ => return,
    };
    values.push(value);
    v.value = Value::Placeholder(format!("${}", values.len()));
}

/// The views `plan` reads when it reads nothing else and calls only immutable functions, which
/// is when its optimised form can be kept; `None` otherwise. `values` must have the types
/// inferred for the plan's placeholders.
pub(crate) fn cacheable(
    plan: &LogicalPlan,
    values: &[ScalarValue],
) -> Option<Vec<(String, Arc<ViewPlan>)>> {
    let types = plan.get_parameter_types().ok()?;
    if types.len() != values.len() {
        return None;
    }
    for (i, value) in values.iter().enumerate() {
        match types.get(&format!("${}", i + 1)) {
            Some(Some(t)) if *t == value.data_type() => {}
            _ => return None,
        }
    }
    let mut views = Vec::new();
    let mut ok = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let view = source_as_provider(&scan.source).ok().and_then(|provider| {
                provider
                    .downcast_ref::<ViewTable>()
                    .map(|t| (scan.table_name.table().to_owned(), t.view_plan().clone()))
            });
            match view {
                Some(view) => views.push(view),
                None => ok = false,
            }
        }
        for expr in node.expressions() {
            expr.apply(|e| {
                if let LExpr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    ok = false;
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    (walked.is_ok() && ok && !views.is_empty()).then_some(views)
}

/// Whether every node of `plan` may run again and concurrently as it is: nodes that keep
/// nothing from one run to the next (a hash join keeps its build side, a repartition its
/// channels).
pub(crate) fn reusable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    const STATELESS: [&str; 7] = [
        "ViewScanExec",
        "ProjectionExec",
        "FilterExec",
        "CoalesceBatchesExec",
        "CooperativeExec",
        "GlobalLimitExec",
        "LocalLimitExec",
    ];
    STATELESS.contains(&plan.name()) && plan.children().into_iter().all(reusable)
}

/// `plan` with `values` bound in its pending view scans; `None` when a scan's bound filters
/// do not all become its point read.
pub(crate) fn bind(
    plan: &Arc<dyn ExecutionPlan>,
    values: &ParamValues,
) -> Option<Arc<dyn ExecutionPlan>> {
    let mut whole = true;
    let bound = plan
        .clone()
        .transform_up(|node| {
            let Some(scan) = node.downcast_ref::<ViewScanExec>() else {
                return Ok(Transformed::no(node));
            };
            if !scan.is_pending() {
                return Ok(Transformed::no(node));
            }
            match scan.bind(values)? {
                Some(bound) => Ok(Transformed::yes(Arc::new(bound) as Arc<dyn ExecutionPlan>)),
                None => {
                    whole = false;
                    Ok(Transformed::new(node, false, TreeNodeRecursion::Stop))
                }
            }
        })
        .ok()?;
    whole.then_some(bound.data)
}

impl SqlEngine {
    /// `statement` started from the plan kept for its shape (planned now and kept on a miss);
    /// `None` when the statement has no shape or its shape is not kept, and it is planned in
    /// full. The session is cloned only when the kept plan is a logical one.
    pub(crate) async fn start_kept(
        &self,
        base: &SessionState,
        statement: &DfStatement,
        query: &Query<'_>,
    ) -> Result<Option<QueryOutput>> {
        let (access, flavor) = (query.access, query.flavor);
        let shape = shape(statement, flavor, &self.views, query.params.as_ref());
        let Some(shape) = shape else {
            return Ok(None);
        };
        check_read_only(statement)?;
        match self.cached_plan(base, shape).await {
            Some(FromCache::Physical(cached, physical)) => {
                self.check_tables(&cached.plan, access)?;
                let task = match flavor {
                    Flavor::Plain => &self.tasks[0],
                    Flavor::Postgres => &self.tasks[1],
                };
                Ok(Some(QueryOutput {
                    schema: Arc::new(cached.plan.schema().as_arrow().clone()),
                    batches: execute_stream(physical, task.clone())?,
                }))
            }
            Some(FromCache::Logical(plan)) => {
                self.check_tables(&plan, access)?;
                let physical = base
                    .query_planner()
                    .create_physical_plan(&plan, base)
                    .await?;
                Ok(Some(QueryOutput {
                    schema: Arc::new(plan.schema().as_arrow().clone()),
                    batches: execute_stream(physical, base.task_ctx())?,
                }))
            }
            None => Ok(None),
        }
    }

    /// The plan of `shape` with its values in place, from the cache or planned now and kept:
    /// physical when the kept plan binds its values in its view scans, else the optimised
    /// logical plan; `None` when the shape is not kept (or its plan does not take the values),
    /// and the statement is planned in full.
    async fn cached_plan(&self, state: &SessionState, shape: Shape) -> Option<FromCache> {
        let cached = match self.plans.get(&shape, &self.views) {
            Lookup::Skip => {
                metrics::counter!("strata_query_plan_cache_total", "outcome" => "skip")
                    .increment(1);
                return None;
            }
            Lookup::Hit(cached) => {
                metrics::counter!("strata_query_plan_cache_total", "outcome" => "hit").increment(1);
                cached
            }
            Lookup::Miss => {
                metrics::counter!("strata_query_plan_cache_total", "outcome" => "miss")
                    .increment(1);
                let planned = async {
                    let plan = state.statement_to_plan(shape.template()).await.ok()?;
                    verify_read_only(&plan).ok()?;
                    let views = cacheable(&plan, &shape.values)?;
                    let plan = state.optimize(&plan).ok()?;
                    let physical = if self.physical_cache {
                        state
                            .query_planner()
                            .create_physical_plan(&plan, state)
                            .await
                            .ok()
                            .filter(reusable)
                    } else {
                        None
                    };
                    Some(Cached {
                        plan,
                        views,
                        physical,
                    })
                }
                .await;
                let Some(cached) = planned else {
                    self.plans.put(&shape, None);
                    return None;
                };
                let cached = Arc::new(cached);
                self.plans.put(&shape, Some(cached.clone()));
                cached
            }
        };
        let values = ParamValues::from(shape.values);
        if let Some(physical) = &cached.physical
            && let Some(bound) = bind(physical, &values)
        {
            return Some(FromCache::Physical(cached, bound));
        }
        let plan = cached.plan.clone().with_param_values(values).ok()?;
        Some(FromCache::Logical(plan))
    }
}
