//! Turning DataFusion filter expressions into shard scan bounds.

use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;
use std::collections::BTreeSet;
use std::ops::Range;

/// The filters of a query a stream scan applies itself, exactly (pushdown is `Exact`): partitions
/// it skips, an offset range, an event-time range and one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanBounds {
    /// Partitions that may hold matching rows, from comparisons (half-open).
    pub partition_range: Range<u64>,
    /// Partitions that may hold matching rows, from `IN` lists (`None`: no list).
    pub partition_set: Option<BTreeSet<u32>>,
    /// Offsets that may match (half-open).
    pub offsets: Range<u64>,
    /// Inclusive event-time bounds in epoch ms.
    pub time: Option<(i64, i64)>,
    /// The one key that may match.
    pub key: Option<String>,
    /// Nothing can match (contradictory bounds).
    pub empty: bool,
}

impl Default for ScanBounds {
    fn default() -> Self {
        Self {
            partition_range: 0..u64::MAX,
            partition_set: None,
            offsets: 0..u64::MAX,
            time: None,
            key: None,
            empty: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Col {
    Partition,
    Offset,
    Time,
    Key,
}

fn column(e: &Expr) -> Option<Col> {
    let e = match e {
        Expr::Cast(c) => c.expr.as_ref(),
        e => e,
    };
    match e {
        Expr::Column(c) => match c.name.as_str() {
            "partition" => Some(Col::Partition),
            "offset" => Some(Col::Offset),
            "time" => Some(Col::Time),
            "key" => Some(Col::Key),
            _ => None,
        },
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// An integer literal as i128 (wide enough for every integer type).
fn int(v: &ScalarValue) -> Option<i128> {
    use ScalarValue as S;
    Some(match v {
        S::Int8(Some(x)) => (*x).into(),
        S::Int16(Some(x)) => (*x).into(),
        S::Int32(Some(x)) => (*x).into(),
        S::Int64(Some(x)) => (*x).into(),
        S::UInt8(Some(x)) => (*x).into(),
        S::UInt16(Some(x)) => (*x).into(),
        S::UInt32(Some(x)) => (*x).into(),
        S::UInt64(Some(x)) => (*x).into(),
        _ => return None,
    })
}

/// A timestamp literal as a number of `per_ms` units per millisecond (seconds are converted to
/// whole milliseconds, so `per_ms` is 1, 1000 or 1,000,000).
fn time_value(v: &ScalarValue) -> Option<(i64, i64)> {
    use ScalarValue as S;
    match v {
        S::TimestampSecond(Some(x), _) => Some((x.checked_mul(1000)?, 1)),
        S::TimestampMillisecond(Some(x), _) => Some((*x, 1)),
        S::TimestampMicrosecond(Some(x), _) => Some((*x, 1000)),
        S::TimestampNanosecond(Some(x), _) => Some((*x, 1_000_000)),
        _ => None,
    }
}

fn text(v: &ScalarValue) -> Option<&str> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// The partitions named by `partition IN (…)` or `partition = a OR partition = b …`.
fn partition_list(e: &Expr) -> Option<BTreeSet<u32>> {
    let number = |e: &Expr| literal(e).and_then(int).and_then(|v| u32::try_from(v).ok());
    match e {
        Expr::InList(list) if !list.negated && column(&list.expr) == Some(Col::Partition) => {
            list.list.iter().map(number).collect()
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut set = partition_list(left)?;
            set.extend(partition_list(right)?);
            Some(set)
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (column(left), column(right)) {
            (Some(Col::Partition), None) => number(right).map(|p| BTreeSet::from([p])),
            (None, Some(Col::Partition)) => number(left).map(|p| BTreeSet::from([p])),
            _ => None,
        },
        _ => None,
    }
}

fn flip(op: Operator) -> Option<Operator> {
    use Operator as O;
    Some(match op {
        O::Eq => O::Eq,
        O::Lt => O::Gt,
        O::LtEq => O::GtEq,
        O::Gt => O::Lt,
        O::GtEq => O::LtEq,
        _ => return None,
    })
}

impl ScanBounds {
    /// Whether the scan can apply `filter` exactly.
    pub fn supports(filter: &Expr) -> bool {
        let mut probe = ScanBounds::default();
        probe.apply(filter)
    }

    /// Bounds from every filter of a scan.
    pub fn from_filters(filters: &[Expr]) -> Self {
        let mut bounds = ScanBounds::default();
        for f in filters {
            bounds.apply(f);
        }
        bounds
    }

    /// Narrows the bounds by one filter; false when the filter is not understood (no change).
    fn apply(&mut self, filter: &Expr) -> bool {
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op != Operator::Or => {
                if let (Some(c), Some(v)) = (column(left), literal(right)) {
                    self.compare(c, *op, v)
                } else if let (Some(v), Some(c), Some(op)) =
                    (literal(left), column(right), flip(*op))
                {
                    self.compare(c, op, v)
                } else {
                    false
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => match (column(expr), literal(low), literal(high)) {
                (Some(c), Some(lo), Some(hi)) => {
                    self.compare(c, Operator::GtEq, lo) && self.compare(c, Operator::LtEq, hi)
                }
                _ => false,
            },
            // `partition IN (…)`, which DataFusion may also rewrite to `partition = a OR …`.
            Expr::InList(_) | Expr::BinaryExpr(_) => match partition_list(filter) {
                Some(set) => {
                    let next: BTreeSet<u32> = match self.partition_set.take() {
                        Some(old) => old.intersection(&set).copied().collect(),
                        None => set,
                    };
                    self.empty |= next.is_empty();
                    self.partition_set = Some(next);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn compare(&mut self, col: Col, op: Operator, v: &ScalarValue) -> bool {
        use Operator as O;
        match col {
            Col::Key => match (op, text(v)) {
                (O::Eq, Some(k)) => {
                    if self.key.as_deref().is_some_and(|old| old != k) {
                        self.empty = true;
                    }
                    self.key = Some(k.to_owned());
                    true
                }
                _ => false,
            },
            Col::Offset | Col::Partition => {
                let Some(x) = int(v) else { return false };
                // Half-open [lo, hi) over non-negative integers.
                let (lo, hi): (i128, i128) = match op {
                    O::Eq => (x, x + 1),
                    O::Gt => (x + 1, i128::MAX),
                    O::GtEq => (x, i128::MAX),
                    O::Lt => (0, x),
                    O::LtEq => (0, x + 1),
                    _ => return false,
                };
                let clamp = |v: i128| v.clamp(0, u64::MAX as i128) as u64;
                let (lo, hi) = (clamp(lo), clamp(hi));
                let range = if col == Col::Offset {
                    &mut self.offsets
                } else {
                    &mut self.partition_range
                };
                *range = range.start.max(lo)..range.end.min(hi);
                self.empty |= range.start >= range.end;
                true
            }
            Col::Time => {
                // Exact bounds on the millisecond column for a literal of any unit:
                // `time > v` is `time_ms * p > v`, that is `time_ms >= floor(v / p) + 1`, etc.
                let Some((v, p)) = time_value(v) else {
                    return false;
                };
                let (floor, ceil) = (
                    v.div_euclid(p),
                    v.div_euclid(p) + i64::from(v.rem_euclid(p) != 0),
                );
                let (lo, hi) = match op {
                    O::Eq if floor == ceil => (floor, floor),
                    O::Eq => (1, 0), // between two milliseconds: nothing matches
                    O::Gt => (floor.saturating_add(1), i64::MAX),
                    O::GtEq => (ceil, i64::MAX),
                    O::Lt => (i64::MIN, ceil.saturating_sub(1)),
                    O::LtEq => (i64::MIN, floor),
                    _ => return false,
                };
                let (old_lo, old_hi) = self.time.unwrap_or((i64::MIN, i64::MAX));
                let next = (old_lo.max(lo), old_hi.min(hi));
                self.empty |= next.0 > next.1;
                self.time = Some(next);
                true
            }
        }
    }

    /// Whether partition `p` may hold matching rows.
    pub fn has_partition(&self, p: u32) -> bool {
        !self.empty
            && self.partition_range.contains(&u64::from(p))
            && self
                .partition_set
                .as_ref()
                .is_none_or(|set| set.contains(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn bounds_from_filters() {
        let b = ScanBounds::from_filters(&[
            col("offset").gt_eq(lit(10i64)),
            lit(20i64).gt(col("offset")),
            col("time").between(ts(100), ts(200)),
            col("key").eq(lit("k")),
            col("partition").in_list(vec![lit(1i32), lit(3i32)], false),
            col("partition").lt(lit(3i64)),
        ]);
        assert_eq!(b.offsets, 10..20);
        assert_eq!(b.time, Some((100, 200)));
        assert_eq!(b.key.as_deref(), Some("k"));
        assert!(b.has_partition(1) && !b.has_partition(3) && !b.has_partition(0));
        assert!(!b.empty);
    }

    #[test]
    fn contradictions_and_unknown_filters() {
        assert!(
            ScanBounds::from_filters(&[col("offset").lt(lit(5i64)), col("offset").gt(lit(9i64))])
                .empty
        );
        assert!(
            ScanBounds::from_filters(&[col("key").eq(lit("a")), col("key").eq(lit("b"))]).empty
        );
        assert!(ScanBounds::from_filters(&[col("offset").lt(lit(-1i64))]).empty);
        assert!(!ScanBounds::supports(&col("data").eq(lit("x"))));
        assert!(!ScanBounds::supports(&col("key").gt(lit("x"))));
        assert!(!ScanBounds::supports(&col("offset").not_eq(lit(3i64))));
        assert!(ScanBounds::supports(&col("time").lt(ts(5))));
    }

    #[test]
    fn time_bounds_are_exact_in_any_unit() {
        let us = |v: i64| lit(ScalarValue::TimestampMicrosecond(Some(v), None));
        let bounds = |f: Vec<Expr>| ScanBounds::from_filters(&f).time;
        assert_eq!(
            bounds(vec![
                col("time").gt_eq(us(1_500)),
                col("time").lt_eq(us(2_500))
            ]),
            Some((2, 2))
        );
        assert_eq!(
            bounds(vec![col("time").gt(us(1_000)), col("time").lt(us(3_000))]),
            Some((2, 2))
        );
        assert_eq!(
            bounds(vec![col("time").gt(ts(5)), col("time").lt_eq(ts(9))]),
            Some((6, 9))
        );
        assert!(ScanBounds::from_filters(&[col("time").eq(us(1_500))]).empty);
        assert_eq!(bounds(vec![col("time").eq(us(7_000))]), Some((7, 7)));
        let secs = lit(ScalarValue::TimestampSecond(Some(3), None));
        assert_eq!(bounds(vec![col("time").lt(secs)]), Some((i64::MIN, 2_999)));
    }
}
