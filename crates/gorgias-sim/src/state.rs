//! The simulator's account: customers, tickets, the leaky bucket, counters. Plain data behind
//! one mutex, never held across an await.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

/// A customer with its channels.
#[derive(Debug, Clone)]
pub(crate) struct CustomerRec {
    pub id: u64,
    pub email: Option<String>,
    /// As sent; `firstname`/`lastname` are derived from it (see [`split_name`]).
    pub name: Option<String>,
    pub external_id: Option<String>,
    pub channels: Vec<ChannelRec>,
    pub created: String,
    /// When the search index has it: search is backed by an index (Elasticsearch,
    /// `x-gorgias-search-engine: ES`), so a customer created through the API is missing from
    /// `POST /api/search` for a while (gorgias-api.md §11). How long live is unknown.
    pub searchable_at: Instant,
}

/// What a new customer is made of.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewCustomer {
    pub email: Option<String>,
    pub name: Option<String>,
    pub external_id: Option<String>,
    /// `(type, address)`, in the order sent.
    pub channels: Vec<(String, String)>,
}

/// `firstname` and `lastname` from a name, split on the last space as the live API does
/// ("Nango TestUser" → "Nango" / "TestUser", gorgias-api.md §11); one word is all firstname.
/// How Gorgias treats other whitespace (tabs, runs of spaces) is unknown: only ' ' splits here.
pub(crate) fn split_name(name: Option<&str>) -> (String, String) {
    match name {
        None => (String::new(), String::new()),
        Some(n) => match n.rsplit_once(' ') {
            Some((first, last)) => (first.to_owned(), last.to_owned()),
            None => (n.to_owned(), String::new()),
        },
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ChannelRec {
    pub id: u64,
    pub kind: String,
    pub address: String,
    pub created: String,
}

/// What `GET /_sim/stats` shows.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Every `/api` request received (rejected ones included).
    pub requests_total: u64,
    /// Per `METHOD /route-template`.
    pub requests: BTreeMap<String, u64>,
    /// Tickets stored.
    pub tickets_created: u64,
    /// Customers created through the API (seeded ones not counted).
    pub customers_created: u64,
    /// Answers of 429.
    pub rate_limited: u64,
    /// OAuth2 refreshes granted (`grant_type=refresh_token`).
    #[serde(default)]
    pub token_refreshes: u64,
    /// OAuth2 codes exchanged (`grant_type=authorization_code`).
    #[serde(default)]
    pub codes_exchanged: u64,
    /// Grants refused with `invalid_grant`.
    #[serde(default)]
    pub refused_grants: u64,
    /// Calls refused 401 for an access token that had expired.
    #[serde(default)]
    pub expired_tokens: u64,
}

/// Gorgias's account-wide leaky bucket: each call adds one; it drains at `limit/window`.
#[derive(Debug)]
pub(crate) struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            capacity: f64::from(limit),
            per_sec: f64::from(limit) / window.as_secs_f64().max(1e-3),
            level: 0.0,
            at: Instant::now(),
        }
    }

    /// Takes one call: `Ok(used/limit)` or `Err(seconds to wait)`.
    pub(crate) fn take(&mut self) -> Result<String, u64> {
        let now = Instant::now();
        let drained = now.duration_since(self.at).as_secs_f64() * self.per_sec;
        self.level = (self.level - drained).max(0.0);
        self.at = now;
        if self.level + 1.0 > self.capacity {
            let wait = (self.level + 1.0 - self.capacity) / self.per_sec;
            return Err((wait.ceil() as u64).max(1));
        }
        self.level += 1.0;
        Ok(self.usage())
    }

    pub(crate) fn usage(&self) -> String {
        format!("{}/{}", self.level.ceil() as u64, self.capacity as u64)
    }
}

/// The account's data.
#[derive(Debug, Default)]
pub(crate) struct Data {
    pub customers: HashMap<u64, CustomerRec>,
    pub by_email: HashMap<String, u64>,
    /// Customer `external_id` → customer ids (uniqueness is not known to be enforced).
    pub customers_by_external_id: HashMap<String, Vec<u64>>,
    /// Tag name → (id, created): tags are account-wide, so a name keeps its id.
    pub tags: HashMap<String, (u64, String)>,
    /// Normalised phone → (customer id, channel index), ordered for prefix search.
    pub phones: BTreeMap<String, Vec<(u64, usize)>>,
    pub tickets: HashMap<u64, Value>,
    pub ticket_order: Vec<u64>,
    /// Ticket `external_id` → (ticket id, when the filtered list starts showing it).
    pub by_external_id: HashMap<String, Vec<(u64, Instant)>>,
    next_customer: u64,
    next_channel: u64,
    next_ticket: u64,
    next_message: u64,
    next_tag: u64,
    pub stats: Stats,
}

impl Data {
    pub(crate) fn new() -> Self {
        Self {
            next_customer: 488_071_553,
            next_channel: 613_364_760,
            next_ticket: 173_596_132,
            next_message: 441_571_080,
            next_tag: 1_000_001,
            ..Self::default()
        }
    }

    /// Adds a customer with the given channels, searchable from `searchable_at`.
    pub(crate) fn insert_customer(&mut self, new: NewCustomer, searchable_at: Instant) -> u64 {
        let id = self.next_customer;
        self.next_customer += 1;
        let created = now_iso();
        let mut recs = Vec::with_capacity(new.channels.len());
        for (i, (kind, address)) in new.channels.into_iter().enumerate() {
            let cid = self.next_channel;
            self.next_channel += 1;
            if kind == "phone" {
                self.phones
                    .entry(normalize(&address))
                    .or_default()
                    .push((id, i));
            }
            if kind == "email" {
                self.by_email.entry(address.to_lowercase()).or_insert(id);
            }
            recs.push(ChannelRec {
                id: cid,
                kind,
                address,
                created: created.clone(),
            });
        }
        if let Some(e) = &new.email {
            self.by_email.entry(e.to_lowercase()).or_insert(id);
        }
        if let Some(x) = &new.external_id {
            self.customers_by_external_id
                .entry(x.clone())
                .or_default()
                .push(id);
        }
        self.customers.insert(
            id,
            CustomerRec {
                id,
                email: new.email,
                name: new.name,
                external_id: new.external_id,
                channels: recs,
                created,
                searchable_at,
            },
        );
        id
    }

    /// The tag object for `name`, made on first use.
    pub(crate) fn tag(&mut self, name: &str) -> Value {
        let (id, created) = match self.tags.get(name) {
            Some(t) => t.clone(),
            None => {
                let t = (self.next_tag, now_iso());
                self.next_tag += 1;
                self.tags.insert(name.to_owned(), t.clone());
                t
            }
        };
        json!({"id": id, "name": name, "uri": format!("/api/tags/{id}/"), "decoration": null,
               "created_datetime": created})
    }

    /// Preloads `n` customers: `customer{i}@example.com`, phone `+1555` and `i` on 7 digits.
    pub(crate) fn seed(&mut self, n: usize) {
        for i in 0..n {
            let email = format!("customer{i}@example.com");
            let phone = format!("+1555{i:07}");
            self.insert_customer(
                NewCustomer {
                    email: Some(email.clone()),
                    channels: vec![("email".into(), email), ("phone".into(), phone)],
                    ..NewCustomer::default()
                },
                Instant::now(),
            );
        }
    }

    pub(crate) fn next_ticket_id(&mut self) -> u64 {
        let id = self.next_ticket;
        self.next_ticket += 1;
        id
    }

    pub(crate) fn next_message_id(&mut self) -> u64 {
        let id = self.next_message;
        self.next_message += 1;
        id
    }

    /// Stores a ticket; the list filtered by its `external_id` shows it from `listed_at`.
    pub(crate) fn store_ticket(&mut self, id: u64, ticket: Value, listed_at: Instant) {
        if let Some(ext) = ticket.get("external_id").and_then(Value::as_str) {
            self.by_external_id
                .entry(ext.to_owned())
                .or_default()
                .push((id, listed_at));
        }
        self.tickets.insert(id, ticket);
        self.ticket_order.push(id);
        self.stats.tickets_created += 1;
    }
}

/// Digits with a leading `+` kept, as the search compares them.
pub(crate) fn normalize(phone: &str) -> String {
    let t = phone.trim_start();
    let mut out = String::with_capacity(t.len());
    if t.starts_with('+') {
        out.push('+');
    }
    out.extend(t.chars().filter(char::is_ascii_digit));
    out
}

impl CustomerRec {
    /// Whether `POST /api/search` finds it yet.
    pub(crate) fn searchable(&self, now: Instant) -> bool {
        self.searchable_at <= now
    }

    /// The list-item shape (`GET /api/customers`): no channels.
    pub(crate) fn list_item(&self) -> Value {
        let (firstname, lastname) = split_name(self.name.as_deref());
        json!({
            "id": self.id, "external_id": self.external_id, "active": true, "email": self.email,
            "name": self.name, "firstname": firstname, "lastname": lastname,
            "language": null, "timezone": null,
            "created_datetime": self.created, "updated_datetime": self.created,
            "meta": {"name_set_via": "agent"}, "data": null, "note": null, "custom_fields": {}
        })
    }

    /// The full shape (`GET /api/customers/{id}`, `POST /api/customers`).
    pub(crate) fn full(&self) -> Value {
        let mut v = self.list_item();
        v["channels"] = self.channels.iter().map(|c| self.channel(c)).collect();
        v["customer"] = Value::Null;
        v["integrations"] = json!({});
        v["external_data"] = json!({});
        v["ecommerce_data"] = json!({});
        v
    }

    /// The ticket's `customer` and `requester`: the person with its channels (recorded shape).
    pub(crate) fn on_ticket(&self) -> Value {
        let mut p = self.person();
        p["channels"] = self.channels.iter().map(|ch| self.channel(ch)).collect();
        p["data"] = Value::Null;
        p["customer"] = Value::Null;
        p["integrations"] = json!({});
        p["external_id"] = json!(self.external_id);
        p["note"] = Value::Null;
        p
    }

    /// A channel record, as channels and phone search return it.
    pub(crate) fn channel(&self, c: &ChannelRec) -> Value {
        json!({
            "id": c.id, "type": c.kind, "address": c.address, "preferred": true,
            "created_datetime": c.created, "updated_datetime": c.created, "deleted_datetime": null,
            "user": {"id": self.id, "name": self.name},
            "customer": {"id": self.id, "name": self.name}
        })
    }

    /// The person shape used by tickets' `sender` and `customer`.
    pub(crate) fn person(&self) -> Value {
        let (firstname, lastname) = split_name(self.name.as_deref());
        json!({
            "id": self.id, "email": self.email, "name": self.name,
            "firstname": firstname, "lastname": lastname,
            "meta": {"name_set_via": "agent"}
        })
    }

    /// The item of a `customer` search: `{id, name, email}` (recorded, §11).
    pub(crate) fn search_item(&self) -> Value {
        json!({"id": self.id, "name": self.name, "email": self.email})
    }
}

/// Now as Gorgias writes datetimes: `2025-02-07T09:55:18.820000+00:00`.
pub(crate) fn now_iso() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    iso(d)
}

fn iso(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_micros()
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_written_like_gorgias() {
        let t = Duration::from_secs(1_738_922_118) + Duration::from_micros(820_000);
        assert_eq!(iso(t), "2025-02-07T09:55:18.820000+00:00");
        assert_eq!(iso(Duration::ZERO), "1970-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn names_split_on_the_last_space() {
        let s = split_name;
        assert_eq!(
            s(Some("Nango TestUser")),
            ("Nango".into(), "TestUser".into())
        );
        assert_eq!(
            s(Some("Nango Test User")),
            ("Nango Test".into(), "User".into())
        );
        assert_eq!(s(Some("Cher")), ("Cher".into(), String::new()));
        assert_eq!(s(None), (String::new(), String::new()));
    }

    #[test]
    fn the_bucket_refuses_past_capacity_and_names_the_wait() {
        let mut b = Bucket::new(2, Duration::from_secs(20));
        assert_eq!(b.take(), Ok("1/2".into()));
        assert_eq!(b.take(), Ok("2/2".into()));
        assert_eq!(b.take(), Err(10));
    }
}
