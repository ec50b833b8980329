//! The seed's output model as a checker: a port of `tools/seed_model.py`, so the test suite
//! holds the contract without reaching outside the repo.

use serde_json::Value;

#[derive(Clone, Copy)]
enum T {
    S,
    N,
    B,
    Null,
    O,
    A,
    Obj(&'static [F]),
    List(&'static [F]),
}

type F = (&'static str, &'static [T], bool);

use T::*;

const USER: &[F] = &[
    ("id", &[N], true),
    ("firstname", &[S], true),
    ("lastname", &[S], true),
    ("meta", &[O, Null], true),
    ("email", &[S, Null], true),
    ("name", &[S, Null], true),
];
const ASSIGNEE: &[F] = &[
    ("id", &[N], true),
    ("firstname", &[S], true),
    ("lastname", &[S], true),
    ("meta", &[O, Null], true),
    ("email", &[S], true),
    ("name", &[S], true),
    ("bio", &[S, Null], true),
];
const ATTACHMENT: &[F] = &[
    ("url", &[S], true),
    ("name", &[S], true),
    ("size", &[N, Null], true),
    ("content_type", &[S], true),
    ("public", &[B], true),
    ("extra", &[S, Null], true),
];
const MESSAGE: &[F] = &[
    ("id", &[N], true),
    ("uri", &[S], true),
    ("message_id", &[S, Null], true),
    ("integration_id", &[N, Null], true),
    ("rule_id", &[N, Null], true),
    ("external_id", &[S, Null], true),
    ("ticket_id", &[N], true),
    ("channel", &[S], true),
    ("via", &[S], true),
    ("subject", &[S, Null], true),
    ("body_text", &[S, Null], true),
    ("body_html", &[S, Null], true),
    ("stripped_text", &[S, Null], true),
    ("stripped_html", &[S, Null], true),
    ("stripped_signature", &[S, Null], true),
    ("public", &[B], true),
    ("from_agent", &[B], true),
    ("sender", &[Obj(USER)], true),
    ("receiver", &[Obj(USER), Null], true),
    ("attachments", &[List(ATTACHMENT), Null], true),
    ("meta", &[O, Null], true),
    ("headers", &[O, Null], true),
    ("actions", &[A, Null], true),
    ("macros", &[A, Null], true),
    ("created_datetime", &[S, Null], true),
    ("opened_datetime", &[S, Null], true),
    ("failed_datetime", &[S, Null], true),
    ("last_sending_error", &[O, Null], true),
    ("deleted_datetime", &[S, Null], true),
    ("replied_by", &[S, Null], false),
    ("replied_to", &[S, Null], false),
];
const TAG: &[F] = &[
    ("id", &[N], true),
    ("name", &[S], true),
    ("uri", &[S, Null], true),
    ("decoration", &[O, Null], true),
    ("created_datetime", &[S, Null], true),
    ("deleted_datetime", &[S, Null], false),
];
const TICKET: &[F] = &[
    ("id", &[S], true),
    ("assignee_user", &[Obj(ASSIGNEE), Null], true),
    ("channel", &[S], true),
    ("closed_datetime", &[S, Null], true),
    ("created_datetime", &[S, Null], true),
    ("excerpt", &[S], false),
    ("external_id", &[S, Null], true),
    ("from_agent", &[B], true),
    ("integrations", &[A, Null], false),
    ("is_unread", &[B], true),
    ("language", &[S, Null], true),
    ("last_message_datetime", &[S, Null], true),
    ("last_received_message_datetime", &[S, Null], true),
    ("messages_count", &[N], false),
    ("messages", &[List(MESSAGE)], true),
    ("meta", &[O, Null], true),
    ("opened_datetime", &[S, Null], true),
    ("snooze_datetime", &[S, Null], true),
    ("status", &[S], true),
    ("subject", &[S, Null], true),
    ("tags", &[List(TAG)], true),
    ("spam", &[B, Null], true),
    ("trashed_datetime", &[S, Null], true),
    ("updated_datetime", &[S, Null], true),
    ("via", &[S], true),
    ("uri", &[S], true),
];

/// Every way `value` departs from the seed's ticket model; empty when it conforms. Like the
/// Python checker, extra keys are not reported; [`extra_keys`] reports them separately.
pub fn problems(value: &Value) -> Vec<String> {
    check(value, TICKET, "ticket")
}

fn check(value: &Value, spec: &[F], path: &str) -> Vec<String> {
    let Some(obj) = value.as_object() else {
        return vec![format!("{path}: not an object")];
    };
    let mut out = Vec::new();
    for (key, types, required) in spec {
        let p = format!("{path}.{key}");
        let Some(v) = obj.get(*key) else {
            if *required {
                out.push(format!("{p}: missing"));
            }
            continue;
        };
        let mut sub = Vec::new();
        let ok = types.iter().any(|t| match t {
            S => v.is_string(),
            N => v.is_number(),
            B => v.is_boolean(),
            Null => v.is_null(),
            O => v.is_object(),
            A => v.is_array(),
            Obj(s) => {
                sub = check(v, s, &p);
                v.is_object() && sub.is_empty()
            }
            List(s) => {
                sub = v
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .enumerate()
                            .flat_map(|(i, item)| check(item, s, &format!("{p}[{i}]")))
                            .collect()
                    })
                    .unwrap_or_default();
                v.is_array() && sub.is_empty()
            }
        });
        if !ok {
            if sub.is_empty() {
                out.push(format!("{p}: {v} is not of the model's types"));
            } else {
                out.extend(sub);
            }
        }
    }
    out
}

/// Keys present in the answer that the model does not declare (the model is exact).
pub fn extra_keys(value: &Value) -> Vec<String> {
    fn walk(v: &Value, spec: &[F], path: &str, out: &mut Vec<String>) {
        let Some(obj) = v.as_object() else { return };
        for (k, child) in obj {
            let p = format!("{path}.{k}");
            match spec.iter().find(|(name, _, _)| name == k) {
                None => out.push(p),
                Some((_, types, _)) => {
                    for t in *types {
                        match t {
                            Obj(s) => walk(child, s, &p, out),
                            List(s) => {
                                for (i, item) in child.as_array().into_iter().flatten().enumerate()
                                {
                                    walk(item, s, &format!("{p}[{i}]"), out);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(value, TICKET, "ticket", &mut out);
    out
}
