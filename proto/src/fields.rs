//! Declared fields: typed top-level members of an event's `data` that become real SQL columns.
//!
//! A stream may declare fields (`{"name": "amount", "type": "double"}`). The write path checks
//! appended events against them; the store extracts them into typed columns. A field declared on
//! a stream that already holds events applies from the partition offsets the log had reached when it
//! was declared (`since`), so older events read it as NULL and replaying the log rebuilds exactly the
//! same columns.

use crate::{Error, Result};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The type of a declared field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 text (JSON strings).
    #[serde(alias = "text", alias = "utf8", alias = "varchar")]
    String,
    /// 64-bit signed integer (JSON integers).
    #[serde(alias = "int", alias = "integer", alias = "bigint", alias = "int64")]
    Long,
    /// 64-bit float (JSON numbers).
    #[serde(alias = "float", alias = "float64", alias = "number")]
    Double,
    /// true/false (JSON booleans).
    #[serde(alias = "bool")]
    Boolean,
    /// A point in time, UTC, millisecond precision (RFC 3339 text or epoch milliseconds).
    Timestamp,
}

impl FieldType {
    /// The name used in messages and in the catalog.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Long => "long",
            FieldType::Double => "double",
            FieldType::Boolean => "boolean",
            FieldType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A field as a user declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The member of `data` and the SQL column name: `[a-z][a-z0-9_]{0,62}`.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
}

/// A declared field as the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    /// The member of `data` and the SQL column name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Per partition, the first offset the field applies to (empty: from the start everywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub since: Vec<u64>,
}

impl FieldDef {
    /// Whether the event at `offset` of `partition` has this field.
    pub fn applies(&self, partition: u32, offset: u64) -> bool {
        self.since
            .get(partition as usize)
            .is_none_or(|since| offset >= *since)
    }
}

/// Columns every stream has; declared fields may not use these names.
pub const RESERVED_COLUMNS: [&str; 7] =
    ["partition", "offset", "time", "key", "id", "type", "data"];

/// The most fields a stream may declare.
pub const MAX_FIELDS: usize = 256;

impl FieldSpec {
    /// Checks the name: `[a-z][a-z0-9_]{0,62}`, not a built-in column.
    pub fn check(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidField {
            name: self.name.chars().take(80).collect(),
            reason,
        };
        crate::StreamName::new(&self.name).map_err(|e| match e {
            Error::InvalidName { reason, .. } => invalid(reason.to_owned()),
            other => other,
        })?;
        if RESERVED_COLUMNS.contains(&self.name.as_str()) {
            return Err(invalid(format!(
                "`{}` is a built-in column of every stream",
                self.name
            )));
        }
        Ok(())
    }
}

/// Merges `specs` into `existing` fields: new names are appended with `since`; a name already
/// declared with the same type is kept as is; with another type it is an error. Returns whether
/// anything was added.
pub fn merge_fields(
    existing: &mut Vec<FieldDef>,
    specs: &[FieldSpec],
    since: &[u64],
) -> Result<bool> {
    let mut added = false;
    for spec in specs {
        spec.check()?;
        match existing.iter().find(|f| f.name == spec.name) {
            Some(f) if f.field_type == spec.field_type => {}
            Some(f) => {
                return Err(Error::FieldConflict {
                    name: spec.name.clone(),
                    existing: f.field_type,
                    requested: spec.field_type,
                });
            }
            None => {
                if existing.len() >= MAX_FIELDS {
                    return Err(Error::InvalidField {
                        name: spec.name.clone(),
                        reason: format!("a stream declares at most {MAX_FIELDS} fields"),
                    });
                }
                existing.push(FieldDef {
                    name: spec.name.clone(),
                    field_type: spec.field_type,
                    since: since.to_vec(),
                });
                added = true;
            }
        }
    }
    Ok(added)
}

/// A typed value of a declared field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// Absent, `null`, or (when not strict) of the wrong type.
    Null,
    /// A string.
    String(String),
    /// An integer.
    Long(i64),
    /// A float.
    Double(f64),
    /// A boolean.
    Boolean(bool),
    /// Epoch milliseconds.
    Timestamp(i64),
}

/// What a JSON value is, for error messages ("a string", "an integer", "a number", …).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts a JSON value to `t`, or says why it does not fit.
fn convert(v: Value, t: FieldType) -> std::result::Result<FieldValue, String> {
    let mismatch = |v: &Value| Err(format!("must be a {t}, got {}", json_kind(v)));
    Ok(match (t, v) {
        (_, Value::Null) => FieldValue::Null,
        (FieldType::String, Value::String(s)) => FieldValue::String(s),
        (FieldType::Long, Value::Number(n)) => match n.as_i64() {
            Some(i) => FieldValue::Long(i),
            None => return mismatch(&Value::Number(n)),
        },
        (FieldType::Double, Value::Number(n)) => match n.as_f64() {
            Some(f) => FieldValue::Double(f),
            None => return mismatch(&Value::Number(n)),
        },
        (FieldType::Boolean, Value::Bool(b)) => FieldValue::Boolean(b),
        (FieldType::Timestamp, Value::Number(n)) => match n.as_i64() {
            Some(ms) => FieldValue::Timestamp(ms),
            None => {
                return Err(
                    "must be a timestamp (RFC 3339 text or epoch milliseconds), got a fraction"
                        .into(),
                );
            }
        },
        (FieldType::Timestamp, Value::String(s)) => {
            match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => FieldValue::Timestamp(t.timestamp_millis()),
                Err(e) => {
                    return Err(format!(
                        "must be a timestamp (RFC 3339 text or epoch milliseconds): {s:?}: {e}"
                    ));
                }
            }
        }
        (_, v) => return mismatch(&v),
    })
}

struct Extract<'a> {
    fields: &'a [FieldDef],
    strict: bool,
}

impl Extract<'_> {
    /// The answer for a `data` that is not an object, so has no members: every field NULL.
    fn no_members(&self) -> std::result::Result<Vec<FieldValue>, (usize, String)> {
        Ok(vec![FieldValue::Null; self.fields.len()])
    }
}

impl<'de> DeserializeSeed<'de> for Extract<'_> {
    type Value = std::result::Result<Vec<FieldValue>, (usize, String)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name of a JSON object, borrowed from the input when it has no escapes (serde's
/// `Cow<str>` always copies: an allocation per member of every event's `data`).
struct MemberName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Name;
        impl<'de> Visitor<'de> for Name {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(Name)
    }
}

impl<'de> Visitor<'de> for Extract<'_> {
    type Value = std::result::Result<Vec<FieldValue>, (usize, String)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut values = vec![FieldValue::Null; self.fields.len()];
        let mut error = None;
        while let Some(MemberName(key)) = map.next_key::<MemberName<'de>>()? {
            match self.fields.iter().position(|f| f.name == *key) {
                Some(i) => {
                    let v: Value = map.next_value()?;
                    match convert(v, self.fields[i].field_type) {
                        Ok(v) => values[i] = v,
                        Err(reason) if self.strict && error.is_none() => error = Some((i, reason)),
                        Err(_) => values[i] = FieldValue::Null,
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(values),
        })
    }

    // Anything but an object has no members: every field is NULL.
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(self.no_members())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.no_members())
    }
}

/// Checks `data` (JSON text) against declared fields: a member of the wrong type is an error naming
/// it (`field `amount` must be a double, got a string`). Missing members and `null` are fine.
pub fn validate_fields(data: &str, fields: &[FieldDef]) -> std::result::Result<(), String> {
    if fields.is_empty() {
        return Ok(());
    }
    let mut de = serde_json::Deserializer::from_str(data);
    match (Extract {
        fields,
        strict: true,
    })
    .deserialize(&mut de)
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((i, reason))) => Err(format!("field `{}` {reason}", fields[i].name)),
        Err(e) => Err(format!("invalid `data`: {e}")),
    }
}

/// The values of `fields` in `data` (JSON text); anything missing, `null`, unparsable or of the
/// wrong type is [`FieldValue::Null`] (events written straight to a log may not have been checked).
pub fn extract_fields(data: &str, fields: &[FieldDef]) -> Vec<FieldValue> {
    let mut de = serde_json::Deserializer::from_str(data);
    match (Extract {
        fields,
        strict: false,
    })
    .deserialize(&mut de)
    {
        Ok(Ok(values)) => values,
        _ => vec![FieldValue::Null; fields.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> Vec<FieldDef> {
        [
            ("amount", FieldType::Double),
            ("n", FieldType::Long),
            ("country", FieldType::String),
            ("ok", FieldType::Boolean),
            ("at", FieldType::Timestamp),
        ]
        .into_iter()
        .map(|(name, field_type)| FieldDef {
            name: name.into(),
            field_type,
            since: vec![],
        })
        .collect()
    }

    #[test]
    fn extracts_typed_values() {
        let v = extract_fields(
            r#"{"x":{"amount":1},"amount":2,"n":-3,"country":"NL","ok":true,"at":"2024-05-01T00:00:00Z","y":[1]}"#,
            &defs(),
        );
        assert_eq!(
            v,
            vec![
                FieldValue::Double(2.0),
                FieldValue::Long(-3),
                FieldValue::String("NL".into()),
                FieldValue::Boolean(true),
                FieldValue::Timestamp(1_714_521_600_000)
            ]
        );
        let v = extract_fields(r#"{"amount":"cheap","at":5}"#, &defs());
        assert_eq!(v[0], FieldValue::Null);
        assert_eq!(v[4], FieldValue::Timestamp(5));
        assert_eq!(extract_fields("[1,2]", &defs()), vec![FieldValue::Null; 5]);
        assert_eq!(
            extract_fields("not json", &defs()),
            vec![FieldValue::Null; 5]
        );
        // A member name with an escape (read into a copy, not borrowed) names its field too.
        let v = extract_fields(
            r#"{"amo\u0075nt":7,"n\u0000":1,"country":"\u004eL"}"#,
            &defs(),
        );
        assert_eq!(v[0], FieldValue::Double(7.0));
        assert_eq!(v[1], FieldValue::Null);
        assert_eq!(v[2], FieldValue::String("NL".into()));
        assert_eq!(
            validate_fields(r#"{"amo\u0075nt":"cheap"}"#, &defs()).unwrap_err(),
            validate_fields(r#"{"amount":"cheap"}"#, &defs()).unwrap_err()
        );
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            validate_fields(r#"{"amount":"cheap"}"#, &defs()).unwrap_err(),
            "field `amount` must be a double, got a string"
        );
        assert_eq!(
            validate_fields(r#"{"n":1.5}"#, &defs()).unwrap_err(),
            "field `n` must be a long, got a number"
        );
        assert!(
            validate_fields(r#"{"at":"yesterday"}"#, &defs())
                .unwrap_err()
                .starts_with("field `at` must be a timestamp")
        );
        assert!(validate_fields(r#"{"amount":null,"other":"x"}"#, &defs()).is_ok());
        assert!(validate_fields("7", &defs()).is_ok());
    }

    #[test]
    fn merging_and_names() {
        let mut fields = vec![];
        let spec = |n: &str, t| FieldSpec {
            name: n.into(),
            field_type: t,
        };
        assert!(merge_fields(&mut fields, &[spec("amount", FieldType::Double)], &[]).unwrap());
        assert!(!merge_fields(&mut fields, &[spec("amount", FieldType::Double)], &[5]).unwrap());
        assert!(merge_fields(&mut fields, &[spec("amount", FieldType::Long)], &[5]).is_err());
        assert!(merge_fields(&mut fields, &[spec("status", FieldType::String)], &[5, 6]).unwrap());
        assert_eq!(fields[1].since, vec![5, 6]);
        assert!(fields[1].applies(0, 5) && !fields[1].applies(1, 5) && fields[1].applies(2, 0));
        for bad in ["time", "Amount", "", "a-b"] {
            assert!(
                merge_fields(&mut fields, &[spec(bad, FieldType::Long)], &[]).is_err(),
                "{bad}"
            );
        }
        let parsed: FieldSpec = serde_json::from_str(r#"{"name":"n","type":"bigint"}"#).unwrap();
        assert_eq!(parsed.field_type, FieldType::Long);
    }

    /// The checks as the model would make them: each member of an object, in order, converted
    /// with [`convert`] when it is declared; the first failure names its field.
    fn model(members: &[(String, Value)], fields: &[FieldDef]) -> std::result::Result<(), String> {
        for (name, value) in members {
            if let Some(f) = fields.iter().find(|f| f.name == *name) {
                convert(value.clone(), f.field_type)
                    .map_err(|reason| format!("field `{}` {reason}", f.name))?;
            }
        }
        Ok(())
    }

    /// The values as the model would take them: each declared member converted with [`convert`],
    /// NULL when it does not fit, a later member of the same name replacing an earlier one.
    fn model_values(members: &[(String, Value)], fields: &[FieldDef]) -> Vec<FieldValue> {
        let mut values = vec![FieldValue::Null; fields.len()];
        for (name, value) in members {
            if let Some(i) = fields.iter().position(|f| f.name == *name) {
                values[i] =
                    convert(value.clone(), fields[i].field_type).unwrap_or(FieldValue::Null);
            }
        }
        values
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1000i64..1000).prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            prop_oneof![
                Just("2024-05-01T00:00:00Z".to_owned()),
                Just("2024-05-01T00:00:00.5+02:00".to_owned()),
                Just("yesterday".to_owned()),
                "[a-z\\\\\"é\n]{0,6}",
            ]
            .prop_map(Value::String),
        ];
        let nested = leaf.clone().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-c]", inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![3 => leaf, 1 => nested]
    }

    proptest::proptest! {
        /// Checking and taking the declared fields give the model's verdict, message and values
        /// for any object and any declared types, duplicate members included.
        #[test]
        fn fields_agree_with_converting_each_member(
            members in proptest::collection::vec(
                (proptest::sample::select(vec!["amount", "n", "country", "ok", "at", "x"]),
                 json_value()),
                0..6,
            ),
            types in proptest::collection::vec(0..5usize, 5),
        ) {
            let all = [
                FieldType::String,
                FieldType::Long,
                FieldType::Double,
                FieldType::Boolean,
                FieldType::Timestamp,
            ];
            let fields: Vec<FieldDef> = ["amount", "n", "country", "ok", "at"]
                .iter()
                .zip(&types)
                .map(|(name, t)| FieldDef { name: (*name).into(), field_type: all[*t], since: vec![] })
                .collect();
            // The model reads the values back from their text, as the checks do (serde_json's
            // float parsing may land one unit in the last place away from the value written).
            let members: Vec<(String, Value)> = members
                .into_iter()
                .map(|(n, v)| (n.to_owned(), serde_json::from_str(&v.to_string()).unwrap()))
                .collect();
            let text = format!(
                "{{{}}}",
                members
                    .iter()
                    .map(|(n, v)| format!("{}:{v}", Value::from(n.as_str())))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            proptest::prop_assert_eq!(validate_fields(&text, &fields), model(&members, &fields));
            proptest::prop_assert_eq!(extract_fields(&text, &fields), model_values(&members, &fields));
        }
    }
}
