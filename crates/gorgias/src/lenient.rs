//! Reading Gorgias's answers leniently, straight from the parser.
//!
//! A field of an answer that is `null` or of an unexpected shape must become its empty value
//! rather than fail the answer (see `models`). The obvious ways to do that buffer each value
//! first and try to read the buffer: serde_with's `DefaultOnError` copies it into an
//! intermediate tree, going through `serde_json::Value` builds one. On a created ticket, that
//! buffering was the largest single cost of the service's request path.
//!
//! These adapters read each value as it streams by instead. A value of the expected shape is
//! read directly. Any other value is consumed and dropped, and the field gets `None` or its
//! default. Only a broken document (bad JSON) is an error.
//!
//! An error from the parser is told apart from a value that `T` rejects by where it comes from:
//! the parser's come through the object or list being read. That holds because every nested
//! type here is itself read leniently (or is a `serde_json::Value`, which takes anything), so
//! nothing below rejects a value by its type. A new nested field must keep it so.
//!
//! One case differs from buffering: an object with a repeated key. serde's derived structs
//! refuse it part-way through; the rest of that object is then skipped and it reads as empty,
//! where buffering kept the last value. Gorgias's JSON (Python's `json.dumps` of a dict) never
//! repeats a key.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_with::{DeserializeAs, Same};

/// The value when it reads as `T`, else `T::default()`.
pub(crate) struct Lenient<TAs = Same>(PhantomData<TAs>);

impl<'de, T: Default, TAs: DeserializeAs<'de, T>> DeserializeAs<'de, T> for Lenient<TAs> {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        Ok(d.deserialize_any(Attempt::<T, TAs>::new(false))?
            .unwrap_or_default())
    }
}

/// For keys Gorgias may leave out (with `#[serde(default)]`): absent stays `None`, present is
/// `Some`, holding `None` when the value is `null` or does not read as `T`.
pub(crate) struct Present<TAs = Same>(PhantomData<TAs>);

impl<'de, T, TAs: DeserializeAs<'de, T>> DeserializeAs<'de, Option<Option<T>>> for Present<TAs> {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        d.deserialize_any(Attempt::<T, TAs>::new(false)).map(Some)
    }
}

/// A list of objects: `null` or anything but a list reads as empty, and an item that is not an
/// object, or does not read as `T`, is skipped.
pub(crate) struct ObjectList<TAs = Same>(PhantomData<TAs>);

impl<'de, T, TAs: DeserializeAs<'de, T>> DeserializeAs<'de, Vec<T>> for ObjectList<TAs> {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(
            d.deserialize_any(Attempt::<Vec<T>, Objects<TAs>>::new(false))?
                .unwrap_or_default(),
        )
    }
}

/// The items of a list that read as objects of `T`; only ever given a list, by [`ObjectList`].
struct Objects<TAs>(PhantomData<TAs>);

impl<'de, T, TAs: DeserializeAs<'de, T>> DeserializeAs<'de, Vec<T>> for Objects<TAs> {
    fn deserialize_as<D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        struct Items<T, TAs>(PhantomData<fn() -> (T, TAs)>);
        impl<'de, T, TAs: DeserializeAs<'de, T>> Visitor<'de> for Items<T, TAs> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element_seed(Attempt::<T, TAs>::new(true))? {
                    items.extend(item);
                }
                Ok(items)
            }
        }
        d.deserialize_seq(Items::<T, TAs>(PhantomData))
    }
}

/// Reads one value of any shape: `Some` when it reads as `T` (through `TAs`), `None` when it
/// does not (the value is consumed either way). With `objects_only`, only objects are tried.
struct Attempt<T, TAs> {
    objects_only: bool,
    marker: PhantomData<fn() -> (T, TAs)>,
}

impl<'de, T, TAs: DeserializeAs<'de, T>> Attempt<T, TAs> {
    fn new(objects_only: bool) -> Self {
        Self {
            objects_only,
            marker: PhantomData,
        }
    }

    fn scalar(self, value: Scalar<'de, '_>) -> Option<T> {
        if self.objects_only {
            return None;
        }
        TAs::deserialize_as(value).ok()
    }
}

impl<'de, T, TAs: DeserializeAs<'de, T>> DeserializeSeed<'de> for Attempt<T, TAs> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T, TAs: DeserializeAs<'de, T>> Visitor<'de> for Attempt<T, TAs> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::Null))
    }
    fn visit_none<E>(self) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::I64(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::U64(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::F64(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::Str(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::Borrowed(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Option<T>, E> {
        Ok(self.scalar(Scalar::String(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut watched = Watch::new(&mut map);
        let read = TAs::deserialize_as(MapDe(&mut watched));
        let (broken, key_read) = (watched.broken, watched.key_read);
        let read = match read {
            Ok(value) => Some(value),
            Err(e) if broken => return Err(e),
            Err(_) => None,
        };
        // `T` gave up between a key and its value (a key it had already seen): skip the value.
        if key_read {
            map.next_value::<IgnoredAny>()?;
        }
        // Whatever was not read (all of it, when `T` is not an object) is skipped.
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(read)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        let read = if self.objects_only {
            None
        } else {
            let mut watched = Watch::new(&mut seq);
            match TAs::deserialize_as(SeqDe(&mut watched)) {
                Ok(value) => Some(value),
                Err(e) if watched.broken => return Err(e),
                Err(_) => None,
            }
        };
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(read)
    }
}

/// A scalar already read, offered to `T` again.
enum Scalar<'de, 'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Borrowed(&'de str),
    String(String),
}

/// Why a value was not read; the reason is never shown, so it is not kept (no formatting).
#[derive(Debug)]
struct Rejected;

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected")
    }
}

impl std::error::Error for Rejected {}

impl de::Error for Rejected {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Rejected
    }
}

impl<'de> Deserializer<'de> for Scalar<'de, '_> {
    type Error = Rejected;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Rejected> {
        match self {
            Scalar::Null => v.visit_unit(),
            Scalar::Bool(b) => v.visit_bool(b),
            Scalar::I64(n) => v.visit_i64(n),
            Scalar::U64(n) => v.visit_u64(n),
            Scalar::F64(n) => v.visit_f64(n),
            Scalar::Str(s) => v.visit_str(s),
            Scalar::Borrowed(s) => v.visit_borrowed_str(s),
            Scalar::String(s) => v.visit_string(s),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Rejected> {
        match self {
            Scalar::Null => v.visit_none(),
            value => v.visit_some(value),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// An object or a list being read, noting whether the parser itself failed: a value that `T`
/// rejects is skipped, but an error from the parser (bad JSON) must fail the whole answer.
struct Watch<'a, A> {
    access: &'a mut A,
    broken: bool,
    /// An object's key was read and its value not yet.
    key_read: bool,
}

impl<'a, A> Watch<'a, A> {
    fn new(access: &'a mut A) -> Self {
        Self {
            access,
            broken: false,
            key_read: false,
        }
    }

    fn note<V, E>(&mut self, r: Result<V, E>) -> Result<V, E> {
        self.broken |= r.is_err();
        r
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Watch<'_, A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        k: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let r = self.access.next_key_seed(k);
        self.key_read = matches!(r, Ok(Some(_)));
        self.note(r)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, v: V) -> Result<V::Value, A::Error> {
        self.key_read = false;
        let r = self.access.next_value_seed(v);
        self.note(r)
    }
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Watch<'_, A> {
    type Error = A::Error;
    fn next_element_seed<V: DeserializeSeed<'de>>(
        &mut self,
        v: V,
    ) -> Result<Option<V::Value>, A::Error> {
        let r = self.access.next_element_seed(v);
        self.note(r)
    }
    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

/// An object being read, offered to `T` as it streams by.
struct MapDe<'w, 'a, A>(&'w mut Watch<'a, A>);

impl<'de, A: MapAccess<'de>> Deserializer<'de> for MapDe<'_, '_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
        v.visit_map(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
        v.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// A list being read, offered to `T` as it streams by.
struct SeqDe<'w, 'a, A>(&'w mut Watch<'a, A>);

impl<'de, A: SeqAccess<'de>> Deserializer<'de> for SeqDe<'_, '_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
        v.visit_seq(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
        v.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::models::Ticket;

    fn recorded_ticket() -> Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/post-tickets.json"
        ))
        .unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["body"].clone()
    }

    /// Values of every JSON shape, some of them nested.
    fn odd_values() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(7),
            json!(1.5),
            json!(""),
            json!("x\"y\\u00e9"),
            json!([]),
            json!([1, {"a": [null]}, "s"]),
            json!({}),
            json!({"a": {"b": [1, 2, {"c": null}]}, "id": 3}),
        ]
    }

    /// Read as the service reads it: from bytes, streaming.
    fn read(v: &Value) -> Ticket {
        serde_json::from_slice(&serde_json::to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn any_value_in_any_field_leaves_the_rest_of_the_ticket_intact() {
        let original = recorded_ticket();
        let message = original["messages"][0].clone();
        let as_read = read(&original);
        let top: Vec<String> = original.as_object().unwrap().keys().cloned().collect();
        let inner: Vec<String> = message.as_object().unwrap().keys().cloned().collect();
        for odd in odd_values() {
            for key in &top {
                let mut t = original.clone();
                t[key] = odd.clone();
                let mut got = read(&t);
                let mut want = as_read.clone();
                // Only the replaced field may differ: blank it on both sides, then compare.
                blank_top(&mut got, key);
                blank_top(&mut want, key);
                assert_eq!(got, want, "ticket.{key} = {odd}");
            }
            for key in &inner {
                let mut t = original.clone();
                t["messages"][0][key] = odd.clone();
                let got = read(&t);
                let messages = got.messages.as_ref().unwrap();
                let count = as_read.messages.as_ref().unwrap().len();
                assert_eq!(messages.len(), count, "message.{key} = {odd}");
                assert_eq!(got.id, as_read.id, "message.{key} = {odd}");
                let mut got_m = messages[0].clone();
                let mut want_m = as_read.messages.as_ref().unwrap()[0].clone();
                blank_message(&mut got_m, key);
                blank_message(&mut want_m, key);
                assert_eq!(got_m, want_m, "message.{key} = {odd}");
            }
        }
    }

    fn blank_top(t: &mut Ticket, key: &str) {
        let empty = Ticket::default();
        macro_rules! blank {
            ($($f:ident),*) => {
                match key { $(stringify!($f) => t.$f = empty.$f.clone(),)* _ => {} }
            };
        }
        blank!(
            id,
            assignee_user,
            channel,
            closed_datetime,
            created_datetime,
            excerpt,
            external_id,
            from_agent,
            integrations,
            is_unread,
            language,
            last_message_datetime,
            last_received_message_datetime,
            messages_count,
            messages,
            meta,
            opened_datetime,
            snooze_datetime,
            status,
            priority,
            subject,
            tags,
            spam,
            trashed_datetime,
            updated_datetime,
            via,
            uri
        );
    }

    fn blank_message(m: &mut crate::models::Message, key: &str) {
        let empty = crate::models::Message::default();
        macro_rules! blank {
            ($($f:ident),*) => {
                match key { $(stringify!($f) => m.$f = empty.$f.clone(),)* _ => {} }
            };
        }
        blank!(
            id,
            uri,
            message_id,
            integration_id,
            rule_id,
            external_id,
            ticket_id,
            channel,
            via,
            subject,
            body_text,
            body_html,
            stripped_text,
            stripped_html,
            stripped_signature,
            public,
            from_agent,
            sender,
            receiver,
            attachments,
            meta,
            headers,
            actions,
            macros,
            created_datetime,
            opened_datetime,
            failed_datetime,
            last_sending_error,
            deleted_datetime,
            replied_by,
            replied_to
        );
    }

    #[test]
    fn values_of_the_expected_shape_are_kept_and_others_become_empty() {
        let t: Ticket = serde_json::from_str(
            r#"{"id": 17, "via": 5, "channel": null, "subject": "s", "spam": true,
                "tags": [1, {"id": "4", "name": "vip"}, [], {"name": 3}],
                "integrations": null, "meta": {"k": [1]},
                "messages": [7, {"id": "12", "public": true, "attachments": {"url": "u"},
                                 "sender": {"id": 5, "email": ["no"]}, "replied_by": 3}],
                "unknown": {"deep": [true, {"x": null}]}}"#,
        )
        .unwrap();
        assert_eq!(t.id.as_ref().map(|i| i.as_str()), Some("17"));
        assert_eq!((t.via.as_str(), t.channel.as_str()), ("", ""));
        assert_eq!((t.subject.as_deref(), t.spam), (Some("s"), Some(true)));
        let tags: Vec<_> = t.tags.iter().map(|t| (t.id.0, t.name.as_str())).collect();
        assert_eq!(tags, vec![(4, "vip"), (0, "")]);
        assert_eq!(t.integrations, Some(None));
        assert_eq!(t.meta.unwrap()["k"], json!([1]));
        let m = t.messages.unwrap();
        assert_eq!(m[0], crate::models::Message::default());
        assert_eq!((m[1].id.0, m[1].public), (12, true));
        assert!(m[1].attachments.is_empty());
        let sender = m[1].sender.as_ref().unwrap();
        assert_eq!((sender.id.0, sender.email.as_deref()), (5, None));
        assert_eq!(
            (m[1].replied_by.clone(), m[1].replied_to.clone()),
            (Some(None), None)
        );
    }

    #[test]
    fn an_object_with_a_repeated_key_reads_as_empty_and_the_rest_survives() {
        let t: Ticket = serde_json::from_str(
            r#"{"id": 5, "messages": [{"id": 1, "id": 2, "body_text": "x"}, {"id": 3}],
                "subject": "kept"}"#,
        )
        .unwrap();
        let m = t.messages.unwrap();
        assert_eq!(m[0], crate::models::Message::default());
        assert_eq!(m[1].id.0, 3);
        assert_eq!(t.subject.as_deref(), Some("kept"));
    }

    #[test]
    fn broken_json_is_still_an_error() {
        for text in [
            r#"{"id": 1, "messages": [{"id": 2,}]}"#,
            r#"{"id": 1, "tags": [{"id": 2]}"#,
            r#"{"id": 1, "meta": {"a" 1}}"#,
            r#"{"id": 1, "subject": "unterminated}"#,
        ] {
            assert!(serde_json::from_str::<Ticket>(text).is_err(), "{text}");
        }
    }
}
