//! The published schema and the validator agree: every body `openapi.json` allows is accepted.
//!
//! The strategies are built at test time by walking the `POST /ticket` request body schema in
//! `openapi.json` (resolving its `$ref`s into `components/schemas`), not from a hand-written
//! copy of the shape, so a change to the DTOs is picked up here through the drift-tested
//! document. The walker supports what the schema uses and fails loudly on any keyword it does
//! not know, so a new constraint cannot go untested silently.
//!
//! Generation follows JSON Schema 2020-12 (OpenAPI 3.1) semantics, not Rust's:
//! - `pattern` is an ECMA-262 regex matched anywhere in the string: `\s`/`\S` use ECMA's
//!   whitespace set (which has U+FEFF and lacks U+0085, unlike Rust's), `\d`/`\w` are ASCII,
//!   `.` excludes the four line terminators, and an unanchored pattern gets arbitrary text
//!   around it. Unbounded repetitions are capped (`*` ≤ 3, `+` ≤ 4, `{n,}` ≤ n + 4): every
//!   value generated still matches; very long values are the boundary test's job.
//! - `integer` includes whole floats (`12.0`), so integers are sometimes sent that way.
//! - `minLength`/`maxLength` count code points.
//!
//! The rules `src/domain/request.rs` runs beside the schema (the schema cannot state them) are
//! applied to each generated body as the minimal post-processing in [`beyond_the_schema`]:
//! distinct message ids, distinct custom field ids, `meta` at most 4 KiB serialised. The phone
//! region rule is off under `Rules::default()`; the second property turns it on (see there).

use std::collections::HashSet;
use std::sync::LazyLock;

use gorgias_proxy::domain::NewTicket;
use gorgias_proxy::domain::request::{META_MAX_BYTES, Rules};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Map, Value, json};

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON")
});

/// The `POST /ticket` request body schema, as published.
fn request_schema() -> &'static Value {
    let schema = &DOCUMENT["paths"]["/ticket"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "openapi.json has no POST /ticket JSON body"
    );
    schema
}

// ---------------------------------------------------------------------------------------------
// Reading the schema
// ---------------------------------------------------------------------------------------------

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &[
    "description",
    "example",
    "examples",
    "title",
    "default",
    "deprecated",
    "$comment",
];

/// Keywords the generator understands (after `$ref` and `allOf` are flattened away).
const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "enum",
    "const",
    "oneOf",
    "anyOf",
];

/// `schema` with its `$ref` (a JSON pointer into the document) and `allOf` merged in.
fn flatten(schema: &Value) -> Map<String, Value> {
    let m = match schema {
        Value::Object(m) => m,
        Value::Bool(true) => return Map::new(),
        other => panic!("unsupported schema {other}"),
    };
    let mut out = match m.get("$ref") {
        Some(Value::String(r)) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $refs are supported, found {r}"));
            let target = DOCUMENT
                .pointer(pointer)
                .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
            flatten(target)
        }
        Some(other) => panic!("$ref must be a string, found {other}"),
        None => Map::new(),
    };
    let mut siblings = m.clone();
    siblings.remove("$ref");
    merge(&mut out, &siblings);
    if let Some(Value::Array(all)) = out.remove("allOf") {
        for part in &all {
            merge(&mut out, &flatten(part));
        }
    }
    out
}

/// Both `base` and `extra` must hold (as `allOf`): properties merge one by one, `required`
/// and `type` combine, any other keyword must not conflict.
fn merge(base: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (key, value) in extra {
        match (key.as_str(), base.get_mut(key)) {
            (_, None) => {
                base.insert(key.clone(), value.clone());
            }
            (k, Some(_)) if ANNOTATIONS.contains(&k) => {}
            ("properties", Some(Value::Object(props))) => {
                for (name, sub) in value.as_object().into_iter().flatten() {
                    let merged = match props.get(name) {
                        Some(existing) => {
                            let mut m = flatten(existing);
                            merge(&mut m, &flatten(sub));
                            Value::Object(m)
                        }
                        None => sub.clone(),
                    };
                    props.insert(name.clone(), merged);
                }
            }
            ("required", Some(Value::Array(required))) => {
                for name in value.as_array().into_iter().flatten() {
                    if !required.contains(name) {
                        required.push(name.clone());
                    }
                }
            }
            ("type", Some(existing)) => {
                let theirs = types_of(value);
                let both: Vec<Value> = types_of(existing)
                    .into_iter()
                    .filter(|t| theirs.contains(t))
                    .map(Value::String)
                    .collect();
                assert!(
                    !both.is_empty(),
                    "types {existing} and {value} are disjoint"
                );
                *existing = Value::Array(both);
            }
            (k, Some(existing)) => assert!(
                existing == value,
                "conflicting `{k}`: {existing} and {value}"
            ),
        }
    }
}

fn types_of(t: &Value) -> Vec<String> {
    match t {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        other => panic!("`type` must be a string or an array, found {other}"),
    }
}

fn check_keywords(s: &Map<String, Value>, at: &str) {
    for key in s.keys() {
        assert!(
            SUPPORTED.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()),
            "{at}: the generator does not support `{key}`; teach it before relying on this test"
        );
    }
}

fn usize_of(s: &Map<String, Value>, key: &str) -> Option<usize> {
    s.get(key).map(|v| {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| panic!("`{key}` must be a whole number, found {v}"))
    })
}

/// The smallest whole number `>=` (or, `strict`, `>`) `v`.
fn least_int(v: &Value, strict: bool) -> i128 {
    if let Some(i) = v.as_i64().map(i128::from).or(v.as_u64().map(i128::from)) {
        return i + i128::from(strict);
    }
    let f = v
        .as_f64()
        .unwrap_or_else(|| panic!("a bound must be a number, found {v}"));
    if strict && f.ceil() == f {
        f as i128 + 1
    } else {
        f.ceil() as i128
    }
}

/// The largest whole number `<=` (or, `strict`, `<`) `v`.
fn greatest_int(v: &Value, strict: bool) -> i128 {
    if let Some(i) = v.as_i64().map(i128::from).or(v.as_u64().map(i128::from)) {
        return i - i128::from(strict);
    }
    let f = v
        .as_f64()
        .unwrap_or_else(|| panic!("a bound must be a number, found {v}"));
    if strict && f.floor() == f {
        f as i128 - 1
    } else {
        f.floor() as i128
    }
}

/// The whole numbers an `integer` schema allows: its bounds (2020-12 numeric exclusive bounds,
/// or OpenAPI 3.0 boolean ones) within what its `format` holds.
fn int_bounds(s: &Map<String, Value>) -> (i128, i128) {
    let (mut lo, mut hi): (i128, i128) = match s.get("format").and_then(Value::as_str) {
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        Some("int64") => (i64::MIN.into(), i64::MAX.into()),
        Some("uint32") => (0, u32::MAX.into()),
        Some("uint64") => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), u64::MAX.into()),
    };
    let flag = |k| s.get(k) == Some(&Value::Bool(true));
    if let Some(m) = s.get("minimum") {
        lo = lo.max(least_int(m, flag("exclusiveMinimum")));
    }
    if let Some(m) = s.get("exclusiveMinimum").filter(|v| v.is_number()) {
        lo = lo.max(least_int(m, true));
    }
    if let Some(m) = s.get("maximum") {
        hi = hi.min(greatest_int(m, flag("exclusiveMaximum")));
    }
    if let Some(m) = s.get("exclusiveMaximum").filter(|v| v.is_number()) {
        hi = hi.min(greatest_int(m, true));
    }
    assert!(lo <= hi, "no whole number between {lo} and {hi}");
    (lo, hi)
}

/// The finite numbers a `number` schema allows, as the closed range `[lo, hi]`.
fn number_bounds(s: &Map<String, Value>) -> (f64, f64) {
    let limit = if s.get("format").and_then(Value::as_str) == Some("float") {
        f64::from(f32::MAX)
    } else {
        f64::MAX
    };
    let (mut lo, mut hi) = (-limit, limit);
    let flag = |k| s.get(k) == Some(&Value::Bool(true));
    let f = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("a bound must be a number: {v}"))
    };
    if let Some(m) = s.get("minimum").map(f) {
        lo = lo.max(if flag("exclusiveMinimum") {
            m.next_up()
        } else {
            m
        });
    }
    if let Some(m) = s.get("exclusiveMinimum").filter(|v| v.is_number()).map(f) {
        lo = lo.max(m.next_up());
    }
    if let Some(m) = s.get("maximum").map(f) {
        hi = hi.min(if flag("exclusiveMaximum") {
            m.next_down()
        } else {
            m
        });
    }
    if let Some(m) = s.get("exclusiveMaximum").filter(|v| v.is_number()).map(f) {
        hi = hi.min(m.next_down());
    }
    assert!(lo <= hi, "no number between {lo} and {hi}");
    (lo, hi)
}

/// `n` as JSON: a whole float (`12.0`) when asked and exact, else an integer.
fn int_value(n: i128, as_float: bool) -> Value {
    if as_float && n.unsigned_abs() <= 1 << 53 {
        return json!(n as f64);
    }
    u64::try_from(n)
        .map(Value::from)
        .or_else(|_| i64::try_from(n).map(Value::from))
        .unwrap_or_else(|_| json!(n as f64))
}

// ---------------------------------------------------------------------------------------------
// ECMA-262 patterns as generators
// ---------------------------------------------------------------------------------------------

/// ECMA-262 `\s`: WhiteSpace (TAB, VT, FF, ZWNBSP, every `Zs`) and LineTerminator (LF, CR,
/// LS, PS), as the items of a Rust regex class.
const ECMA_SPACE: &str =
    r"\t-\r\x20\xA0\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF}";

/// Unanchored patterns match anywhere: this much arbitrary text goes on an open side.
const FILLER: &str = "(?s:.){0,3}";

/// A Rust regex (for `proptest::string::string_regex`, which knows no anchors) whose every
/// match, as a whole string, matches the ECMA-262 `pattern` as JSON Schema applies it.
fn generator_regex(pattern: &str) -> String {
    let (open_start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => (false, rest),
        None => (true, pattern),
    };
    let trailing_backslashes = rest
        .strip_suffix('$')
        .map(|r| r.chars().rev().take_while(|c| *c == '\\').count());
    let (open_end, body) = match trailing_backslashes {
        Some(n) if n % 2 == 0 => (false, &rest[..rest.len() - 1]),
        _ => (true, rest),
    };
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::new();
    if open_start {
        out.push_str(FILLER);
    }
    let mut in_class = false;
    let mut class_start = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let e = *chars
                .get(i + 1)
                .unwrap_or_else(|| panic!("`{pattern}` ends in a backslash"));
            i += 2;
            let (inside, outside) = match e {
                's' => (ECMA_SPACE.to_owned(), format!("[{ECMA_SPACE}]")),
                'S' => (format!("[^{ECMA_SPACE}]"), format!("[^{ECMA_SPACE}]")),
                'd' => ("0-9".to_owned(), "[0-9]".to_owned()),
                'D' => ("[^0-9]".to_owned(), "[^0-9]".to_owned()),
                'w' => ("A-Za-z0-9_".to_owned(), "[A-Za-z0-9_]".to_owned()),
                'W' => ("[^A-Za-z0-9_]".to_owned(), "[^A-Za-z0-9_]".to_owned()),
                'b' if in_class => (r"\x08".to_owned(), String::new()),
                'b' | 'B' | 'c' | 'k' | '1'..='9' => {
                    panic!("`{pattern}`: `\\{e}` is not supported by the generator")
                }
                _ => (format!("\\{e}"), format!("\\{e}")),
            };
            out.push_str(if in_class { &inside } else { &outside });
            class_start = false;
            continue;
        }
        i += 1;
        if in_class {
            match c {
                '^' if class_start => {
                    out.push('^');
                    continue;
                }
                ']' if class_start => panic!("`{pattern}`: empty ECMA classes are not supported"),
                ']' => {
                    in_class = false;
                    out.push(']');
                }
                // Literal in ECMA, nesting or set operators in Rust.
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                }
                '-' if chars.get(i) == Some(&'-') => {
                    panic!("`{pattern}`: `--` in a class is not supported")
                }
                _ => out.push(c),
            }
            class_start = false;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                class_start = true;
                out.push('[');
            }
            '.' => out.push_str(r"[^\n\r\x{2028}\x{2029}]"),
            '*' => out.push_str("{0,3}"),
            '+' => out.push_str("{1,4}"),
            '{' => {
                let close = (i..chars.len())
                    .find(|&j| chars[j] == '}')
                    .unwrap_or_else(|| panic!("`{pattern}`: a literal `{{` is not supported"));
                let inner: String = chars[i..close].iter().collect();
                match inner.split_once(',') {
                    Some((n, "")) => {
                        let n: usize = n.parse().expect("a repetition count");
                        out.push_str(&format!("{{{n},{}}}", n + 4));
                    }
                    _ => out.push_str(&format!("{{{inner}}}")),
                }
                i = close + 1;
            }
            '^' | '$' => panic!("`{pattern}`: inner anchors are not supported"),
            _ => out.push(c),
        }
    }
    if open_end {
        out.push_str(FILLER);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Strategies from the schema
// ---------------------------------------------------------------------------------------------

fn weighted(arms: Vec<(u32, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    Union::new_weighted(arms).boxed()
}

/// Any JSON value, small: what an unconstrained schema (`{}`, free-form object) allows.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        finite_f64().prop_map(|f| json!(f)),
        "(?s:.){0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("(?s:.){0,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// Every value this strategy yields is valid against `schema` (given the caveat on `oneOf`
/// below).
fn strategy(schema: &Value, at: &str) -> BoxedStrategy<Value> {
    let s = flatten(schema);
    check_keywords(&s, at);
    // `anyOf`/`oneOf`: pick a branch and require it together with the rest of the schema.
    // (`oneOf` also needs the other branches to fail; the schema's only `oneOf`s are
    // `[T, null]`, which cannot both hold.)
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = s.get(key) {
            let branches = branches
                .as_array()
                .unwrap_or_else(|| panic!("{at}: `{key}` must be an array"));
            let mut base = s.clone();
            base.remove(key);
            let arms = branches
                .iter()
                .enumerate()
                .map(|(i, branch)| {
                    let mut both = base.clone();
                    merge(&mut both, &flatten(branch));
                    (
                        1,
                        strategy(&Value::Object(both), &format!("{at}/{key}/{i}")),
                    )
                })
                .collect();
            return weighted(arms);
        }
    }
    if let Some(options) = s.get("enum") {
        let options = options
            .as_array()
            .unwrap_or_else(|| panic!("{at}: `enum` must be an array"))
            .clone();
        return proptest::sample::select(options).boxed();
    }
    if let Some(c) = s.get("const") {
        return Just(c.clone()).boxed();
    }
    let types = match s.get("type") {
        Some(t) => types_of(t),
        None if s.contains_key("properties") => vec!["object".to_owned()],
        None => return any_json(),
    };
    let arms = types
        .iter()
        .map(|t| {
            let st = match t.as_str() {
                "null" => return (1, Just(Value::Null).boxed()),
                "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
                "integer" => integer(&s),
                "number" => number(&s),
                "string" => string(&s, at),
                "array" => array(&s, at),
                "object" => object(&s, at),
                other => panic!("{at}: unknown type `{other}`"),
            };
            (4, st)
        })
        .collect();
    weighted(arms)
}

fn integer(s: &Map<String, Value>) -> BoxedStrategy<Value> {
    let (lo, hi) = int_bounds(s);
    let mut n = vec![
        (2, Just(lo).boxed()),
        (2, Just(hi).boxed()),
        (4, (lo..=hi).boxed()),
        (4, (lo..=hi.min(lo + 100)).boxed()),
    ];
    if lo < hi {
        n.push((1, Just(lo + 1).boxed()));
        n.push((1, Just(hi - 1).boxed()));
    }
    // JSON Schema's `integer` is any whole number, `12.0` included.
    (Union::new_weighted(n), proptest::bool::weighted(0.25))
        .prop_map(|(n, as_float)| int_value(n, as_float))
        .boxed()
}

fn number(s: &Map<String, Value>) -> BoxedStrategy<Value> {
    let (lo, hi) = number_bounds(s);
    let mut arms = vec![
        (1, Just(json!(lo)).boxed()),
        (1, Just(json!(hi)).boxed()),
        (
            6,
            finite_f64()
                .prop_map(move |f| json!(f.clamp(lo, hi)))
                .boxed(),
        ),
    ];
    let (ilo, ihi) = (lo.max(-1e6).ceil(), hi.min(1e6).floor());
    if ilo <= ihi {
        arms.push((2, (ilo as i64..=ihi as i64).prop_map(Value::from).boxed()));
    }
    weighted(arms)
}

/// Simple valid values for the formats a producer would honour.
fn format_regex(format: &str) -> Option<&'static str> {
    Some(match format {
        "email" => r"[a-z0-9._+\-]{1,8}@[a-z0-9\-]{1,8}\.[a-z]{2,4}",
        "uri" => r"https?://[a-z0-9\-]{1,8}\.example(:[0-9]{2,4})?/[a-z0-9/]{0,8}",
        "uri-reference" => r"(https?://[a-z0-9\-]{1,8}\.example)?/[a-z0-9/]{0,8}",
        "date-time" => {
            r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z"
        }
        "date" => r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
        "uuid" => r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "hostname" => r"[a-z][a-z0-9\-]{0,8}(\.[a-z][a-z0-9\-]{0,8}){0,2}",
        "ipv4" => {
            r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}"
        }
        _ => return None,
    })
}

fn string(s: &Map<String, Value>, at: &str) -> BoxedStrategy<Value> {
    let min = usize_of(s, "minLength").unwrap_or(0);
    let max = usize_of(s, "maxLength");
    let text: BoxedStrategy<String> = match (
        s.get("pattern").and_then(Value::as_str),
        s.get("format")
            .and_then(Value::as_str)
            .and_then(format_regex),
    ) {
        (Some(pattern), _) => {
            let regex = generator_regex(pattern);
            proptest::string::string_regex(&regex)
                .unwrap_or_else(|e| panic!("{at}: `{pattern}` (as `{regex}`): {e}"))
                .boxed()
        }
        (None, Some(format)) => proptest::string::string_regex(format)
            .expect("a format regex")
            .boxed(),
        (None, None) => {
            // Mostly short, sometimes anywhere up to the bound, sometimes right at it.
            let short = max.map_or(min + 12, |m| m.min(min + 12));
            let mut sizes = vec![(6, (min..=short).boxed())];
            match max {
                Some(m) if m > short => {
                    sizes.push((1, (min..=m).boxed()));
                    sizes.push((1, Just(m).boxed()));
                }
                Some(_) => {}
                None => sizes.push((1, (min..=min + 64).boxed())),
            }
            let any_text = Union::new_weighted(sizes)
                .prop_flat_map(|n| vec(any::<char>(), n))
                .prop_map(String::from_iter);
            // A tiny alphabet too, so that equal values (ids, tags) occur.
            let few = max.map_or(min + 1, |m| m.min(min + 1));
            let alike = vec(proptest::char::range('a', 'b'), min..=few).prop_map(String::from_iter);
            prop_oneof![6 => any_text, 1 => alike].boxed()
        }
    };
    text.prop_filter(format!("{at}: {min}..={max:?} characters"), move |t| {
        let n = t.chars().count();
        n >= min && max.is_none_or(|m| n <= m)
    })
    .prop_map(Value::String)
    .boxed()
}

fn array(s: &Map<String, Value>, at: &str) -> BoxedStrategy<Value> {
    let items = match s.get("items") {
        Some(items) => strategy(items, &format!("{at}/items")),
        None => any_json(),
    };
    let min = usize_of(s, "minItems").unwrap_or(0);
    // Small lists: the sizes at the bounds are the boundary test's.
    let hi = usize_of(s, "maxItems").map_or(min + 3, |m| m.min(min + 3));
    vec(items, min..=hi).prop_map(Value::Array).boxed()
}

fn object(s: &Map<String, Value>, at: &str) -> BoxedStrategy<Value> {
    let props = s
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required: Vec<String> = s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    for (name, sub) in &props {
        let st = strategy(sub, &format!("{at}/properties/{name}"));
        let key = name.clone();
        fields.push(if required.contains(name) {
            st.prop_map(move |v| Some((key.clone(), v))).boxed()
        } else {
            // Absent half the time; present (which may be null) otherwise.
            proptest::option::of(st)
                .prop_map(move |v| v.map(|v| (key.clone(), v)))
                .boxed()
        });
    }
    for name in required.iter().filter(|n| !props.contains_key(*n)) {
        let key = name.clone();
        fields.push(any_json().prop_map(move |v| Some((key.clone(), v))).boxed());
    }
    let declared: HashSet<String> = props.keys().cloned().collect();
    let extra_value = match s.get("additionalProperties") {
        Some(Value::Bool(false)) => None,
        None | Some(Value::Bool(true)) => Some(any_json()),
        Some(sub) => Some(strategy(sub, &format!("{at}/additionalProperties"))),
    };
    let extra: BoxedStrategy<Vec<(String, Value)>> = match extra_value {
        None => Just(Vec::new()).boxed(),
        Some(v) => vec(("(?s:.){0,8}", v), 0..=if props.is_empty() { 4 } else { 2 })
            .prop_map(move |kv| {
                kv.into_iter()
                    .filter(|(k, _)| !declared.contains(k))
                    .collect()
            })
            .boxed(),
    };
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut m = Map::new();
            for (k, v) in fields.into_iter().flatten() {
                m.insert(k, v);
            }
            for (k, v) in extra {
                m.entry(k).or_insert(v);
            }
            Value::Object(m)
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// The rules beyond the schema
// ---------------------------------------------------------------------------------------------

/// The minimal change that keeps a schema-valid body within the rules `request.rs` states
/// beside the schema (which cannot express them): message ids distinct, custom field ids
/// distinct (as whole numbers: `12` and `12.0` are one id), `meta` at most
/// [`META_MAX_BYTES`] serialised. Everything else is left as generated.
fn beyond_the_schema(mut body: Value) -> Value {
    if let Some(Value::Array(messages)) = body.pointer_mut("/ticket/messages") {
        let mut seen = HashSet::new();
        for (i, m) in messages.iter_mut().enumerate() {
            if let Some(Value::String(id)) = m.get_mut("id")
                && !seen.insert(id.clone())
            {
                let fresh = (0..)
                    .map(|k| format!("dup-{i}-{k}"))
                    .find(|c| !seen.contains(c))
                    .expect("an unused id");
                seen.insert(fresh.clone());
                *id = fresh;
            }
        }
    }
    if let Some(Value::Array(fields)) = body.pointer_mut("/ticket/custom_fields") {
        let whole = |v: &Value| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64));
        let mut seen = HashSet::new();
        for f in fields.iter_mut() {
            if let Some(id) = f.get_mut("id")
                && let Some(n) = whole(id)
                && !seen.insert(n)
            {
                let fresh = (1..).find(|k| !seen.contains(k)).expect("an unused id");
                seen.insert(fresh);
                *id = json!(fresh);
            }
        }
    }
    if let Some(Value::Object(meta)) = body.pointer_mut("/ticket/meta") {
        while serde_json::to_vec(meta).map_or(usize::MAX, |b| b.len()) > META_MAX_BYTES {
            let last = meta.keys().next_back().cloned().expect("a key to drop");
            meta.remove(&last);
        }
    }
    body
}

fn request_body() -> BoxedStrategy<Value> {
    strategy(request_schema(), "#/paths/~1ticket/post/requestBody")
        .prop_map(beyond_the_schema)
        .boxed()
}

/// `Ok` when `body` is accepted both as the value and as it travels (serialised and read
/// back), else what was refused and why.
fn accepted(body: &Value, rules: &Rules) -> Result<(), String> {
    let wire: Value =
        serde_json::from_slice(&serde_json::to_vec(body).expect("serialise")).expect("read back");
    for (form, v) in [("value", body), ("wire form", &wire)] {
        match NewTicket::parse_with(v, rules) {
            Ok(t) => {
                let sent = v["ticket"]["messages"].as_array().map_or(0, Vec::len);
                if t.messages.len() != sent {
                    return Err(format!(
                        "{form}: {sent} messages became {}",
                        t.messages.len()
                    ));
                }
            }
            Err(e) => {
                let errors: Vec<String> = e
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                return Err(format!("{form} refused: {errors:#?}"));
            }
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // A failure is reported here; no regression file is written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers valid in Kenya (two spellings) and a French one carrying its own country code: all
/// within the schema's phone pattern.
const VALID_KE_NUMBERS: &[&str] = &[
    "0719 908 543",
    "+254719908543",
    " 0719908543 ",
    "+33 (6) 12-34.56 78",
];

fn valid_in(region: phonenumber::country::Id, raw: &str) -> bool {
    phonenumber::parse(Some(region), raw.trim()).is_ok_and(|n| n.is_valid())
}

proptest! {
    #![proptest_config(config())]

    /// Under the contract alone (no deployment rules) every schema-valid body is accepted.
    #[test]
    fn every_body_the_schema_allows_is_accepted(body in request_body()) {
        let verdict = accepted(&body, &Rules::default());
        prop_assert!(verdict.is_ok(), "{}\nbody: {body:#}", verdict.unwrap_err());
    }

    /// With `PHONE_DEFAULT_REGION` set, a number impossible in the region is refused: a
    /// deployment rule beyond the schema (README, "PHONE_DEFAULT_REGION": "a number impossible
    /// there is 422"), which no pattern can state. So a generated number the region rule
    /// refuses is replaced by a valid one; everything else must still be accepted.
    #[test]
    fn with_a_phone_region_every_schema_valid_body_with_a_possible_number_is_accepted(
        body in request_body(),
        substitute in proptest::sample::select(VALID_KE_NUMBERS),
    ) {
        let region: phonenumber::country::Id = "KE".parse().expect("a region");
        let mut body = body;
        let phone = &mut body["customer"]["phone_number"];
        if !phone.as_str().is_some_and(|p| valid_in(region, p)) {
            *phone = json!(substitute);
        }
        let rules = Rules { phone_region: Some(region) };
        let verdict = accepted(&body, &rules);
        prop_assert!(verdict.is_ok(), "{}\nbody: {body:#}", verdict.unwrap_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Boundaries
// ---------------------------------------------------------------------------------------------

/// A deterministic valid instance with every optional property present: the schema's
/// `example` where it gives one (so the examples are checked too), else the least value.
fn sample(schema: &Value, at: &str) -> Value {
    let s = flatten(schema);
    if let Some(e) = s.get("example") {
        return e.clone();
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        return options.first().cloned().unwrap_or(Value::Null);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = s.get(key) {
            let mut base = s.clone();
            base.remove(key);
            let mut merged = branches.iter().map(|b| {
                let mut m = base.clone();
                merge(&mut m, &flatten(b));
                m
            });
            let first = merged
                .find(|m| m.get("type") != Some(&json!("null")))
                .unwrap_or_else(|| panic!("{at}: only null branches"));
            return sample(&Value::Object(first), at);
        }
    }
    let types = s.get("type").map(types_of).unwrap_or_default();
    let t = types
        .iter()
        .find(|t| *t != "null")
        .map_or("null", String::as_str);
    match t {
        "object" => Value::Object(
            s.get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), sample(v, &format!("{at}/{k}"))))
                .collect(),
        ),
        "array" => {
            let n = usize_of(&s, "minItems").unwrap_or(0).max(1);
            let item = s.get("items").map_or(json!("x"), |i| sample(i, at));
            Value::Array(vec![item; n])
        }
        "string" => {
            let min = usize_of(&s, "minLength").unwrap_or(1).max(1);
            match s.get("pattern").and_then(Value::as_str) {
                Some(pattern) => {
                    let name = at.rsplit('/').next().unwrap_or_default();
                    let v = (min..=min + 64)
                        .find_map(|n| patterned(name, pattern, n))
                        .unwrap_or_else(|| panic!("{at}: no value for `{pattern}`"));
                    json!(v)
                }
                None => json!("x".repeat(min)),
            }
        }
        "integer" => int_value(int_bounds(&s).0.max(0), false),
        "number" => json!(0),
        "boolean" => json!(true),
        _ => Value::Null,
    }
}

/// A place in the body and what the schema says of it.
struct Site {
    pointer: String,
    name: String,
    schema: Map<String, Value>,
    required: bool,
    nullable: bool,
}

/// `s` less its `null` alternative (`type: [T, null]` or `oneOf: [T, {type: null}]`).
fn without_null(mut s: Map<String, Value>) -> (Map<String, Value>, bool) {
    if let Some(t) = s.get("type") {
        let types = types_of(t);
        if types.iter().any(|t| t == "null") {
            let rest: Vec<Value> = types
                .into_iter()
                .filter(|t| t != "null")
                .map(Value::String)
                .collect();
            s.insert("type".into(), Value::Array(rest));
            return (s, true);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(branches)) = s.get(key).cloned() {
            let is_null = |b: &Value| flatten(b).get("type") == Some(&json!("null"));
            if branches.len() == 2 && branches.iter().any(is_null) {
                let other = branches
                    .iter()
                    .find(|b| !is_null(b))
                    .expect("a non-null branch");
                s.remove(key);
                merge(&mut s, &flatten(other));
                return (s, true);
            }
        }
    }
    (s, false)
}

fn collect_sites(schema: &Value, pointer: &str, name: &str, required: bool, out: &mut Vec<Site>) {
    let (s, nullable) = without_null(flatten(schema));
    let types = s.get("type").map(types_of).unwrap_or_default();
    if types.iter().any(|t| t == "object") {
        let required_names: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (p, sub) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            collect_sites(
                sub,
                &format!("{pointer}/{p}"),
                p,
                required_names.contains(&p.as_str()),
                out,
            );
        }
    }
    if types.iter().any(|t| t == "array")
        && let Some(items) = s.get("items")
    {
        collect_sites(items, &format!("{pointer}/0"), name, true, out);
    }
    out.push(Site {
        pointer: pointer.to_owned(),
        name: name.to_owned(),
        schema: s,
        required,
        nullable,
    });
}

/// A string of exactly `n` characters matching the pattern of the property `name` (a pattern
/// cannot be padded generically), or `None` when the pattern needs more.
fn patterned(name: &str, pattern: &str, n: usize) -> Option<String> {
    if pattern == r"\S" {
        return (n >= 1).then(|| "x".repeat(n));
    }
    match name {
        "phone_number" => (n >= 5).then(|| "1".repeat(n)),
        "email" => (n >= 5).then(|| format!("{}@b.c", "a".repeat(n - 4))),
        "url" => (n >= 8).then(|| format!("http://{}", "a".repeat(n - 7))),
        "content_type" => (n >= 3).then(|| format!("a/{}", "b".repeat(n - 2))),
        other => panic!("`{other}` has a pattern: say here how to build a value of n characters"),
    }
}

/// The values at the edges of what the site's schema allows. `None` means "absent".
fn edges(site: &Site, base: &Value) -> Vec<(String, Option<Value>)> {
    let s = &site.schema;
    let mut out: Vec<(String, Option<Value>)> = Vec::new();
    if !site.required {
        out.push(("absent".into(), None));
    }
    if site.nullable {
        out.push(("null".into(), Some(Value::Null)));
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        out.extend(
            options
                .iter()
                .map(|o| (format!("enum {o}"), Some(o.clone()))),
        );
        return out;
    }
    for t in s.get("type").map(types_of).unwrap_or_default() {
        match t.as_str() {
            "integer" => {
                let (lo, hi) = int_bounds(s);
                for (what, n) in [("minimum", lo), ("maximum", hi)] {
                    out.push((format!("{what} {n}"), Some(int_value(n, false))));
                    if n.unsigned_abs() <= 1 << 53 {
                        out.push((format!("{what} {n}.0"), Some(int_value(n, true))));
                    }
                }
            }
            "number" => {
                let (lo, hi) = number_bounds(s);
                for v in [json!(lo), json!(hi), json!(f64::from_bits(1)), json!(-0.0)] {
                    out.push((format!("number {v}"), Some(v)));
                }
                for v in [json!(i64::MIN), json!(u64::MAX)] {
                    out.push((format!("whole number {v}"), Some(v)));
                }
            }
            "boolean" => {
                out.push(("true".into(), Some(json!(true))));
                out.push(("false".into(), Some(json!(false))));
            }
            "string" => {
                let min = usize_of(s, "minLength").unwrap_or(0);
                let max = usize_of(s, "maxLength");
                match s.get("pattern").and_then(Value::as_str) {
                    Some(pattern) => {
                        let upper = max.unwrap_or(min + 64);
                        if let Some(v) =
                            (min..=upper).find_map(|n| patterned(&site.name, pattern, n))
                        {
                            out.push((
                                format!("shortest, {} chars", v.chars().count()),
                                Some(json!(v)),
                            ));
                        }
                        if let Some(v) = max.and_then(|m| patterned(&site.name, pattern, m)) {
                            out.push((format!("maxLength {}", v.chars().count()), Some(json!(v))));
                        }
                        // ECMA-262 `\S`: not whitespace there, though Rust's `\s` has U+0085.
                        if pattern == r"\S" {
                            for v in ["\u{85}", "\u{200B}", "\u{180E}", " \u{85} "] {
                                out.push((format!("`\\S` as ECMA: {v:?}"), Some(json!(v))));
                            }
                        }
                    }
                    None => {
                        out.push((format!("minLength {min}"), Some(json!("x".repeat(min)))));
                        if let Some(m) = max {
                            out.push((format!("maxLength {m}"), Some(json!("x".repeat(m)))));
                            // Code points, not bytes or UTF-16 units.
                            out.push((
                                format!("maxLength {m} astral"),
                                Some(json!("\u{1F600}".repeat(m))),
                            ));
                        }
                    }
                }
            }
            "array" => {
                let item = base
                    .pointer(&site.pointer)
                    .and_then(|a| a.get(0))
                    .cloned()
                    .unwrap_or_else(|| panic!("{}: the sample has no item", site.pointer));
                let min = usize_of(s, "minItems").unwrap_or(0);
                out.push((
                    format!("minItems {min}"),
                    Some(json!(vec![item.clone(); min])),
                ));
                if let Some(m) = usize_of(s, "maxItems") {
                    out.push((format!("maxItems {m}"), Some(json!(vec![item; m]))));
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_schema_bounds_and_examples_are_accepted() {
    let schema = request_schema();
    let base = beyond_the_schema(sample(schema, "#"));
    assert_eq!(
        accepted(&base, &Rules::default()),
        Ok(()),
        "the sample (the schema's examples, every optional field) is refused: {base:#}"
    );
    let mut sites = Vec::new();
    collect_sites(schema, "", "", true, &mut sites);
    let mut cases: Vec<(String, Value)> = Vec::new();
    for site in sites.iter().filter(|s| !s.pointer.is_empty()) {
        for (label, value) in edges(site, &base) {
            let mut body = base.clone();
            match value {
                Some(v) => *body.pointer_mut(&site.pointer).expect("in the sample") = v,
                None => {
                    let (parent, key) = site.pointer.rsplit_once('/').expect("a parent");
                    if let Some(Value::Object(p)) = body.pointer_mut(parent) {
                        p.remove(key);
                    }
                }
            }
            cases.push((
                format!("{} = {label}", site.pointer),
                beyond_the_schema(body),
            ));
        }
    }
    // `meta` at exactly its bound (a rule beyond the schema).
    let mut body = base.clone();
    let filler = META_MAX_BYTES - r#"{"k":""}"#.len();
    body["ticket"]["meta"] = json!({"k": "x".repeat(filler)});
    cases.push((format!("/ticket/meta = {META_MAX_BYTES} bytes"), body));

    let refused: Vec<String> = cases
        .iter()
        .filter_map(|(label, body)| {
            accepted(body, &Rules::default())
                .err()
                .map(|e| format!("{label}: {e}"))
        })
        .collect();
    assert!(
        cases.len() > 40,
        "only {} boundary cases: is the walk broken?",
        cases.len()
    );
    assert!(
        refused.is_empty(),
        "{} of {} boundary values refused:\n{}",
        refused.len(),
        cases.len(),
        refused.join("\n")
    );
}

/// The generator's reading of ECMA-262 patterns: a guard for the translation above.
#[test]
fn patterns_are_read_as_ecma_262() {
    assert_eq!(generator_regex("^a+$"), "a{1,4}");
    assert_eq!(generator_regex("x"), format!("{FILLER}x{FILLER}"));
    assert_eq!(
        generator_regex(r"^[^@\s]{5,}\$"),
        format!(r"[^@{ECMA_SPACE}]{{5,9}}\${FILLER}")
    );
    assert_eq!(generator_regex(r"^[\S&]$"), format!(r"[[^{ECMA_SPACE}]\&]"));
}
