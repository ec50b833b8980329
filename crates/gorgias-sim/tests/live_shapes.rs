//! The simulator answers in the shapes of the live exchanges of 2026 (`gorgias-api.md` §11),
//! by default: checked over HTTP, as the service sees them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gorgias_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

struct Sim {
    sim: Simulator,
    http: reqwest::Client,
}

async fn start(config: SimConfig) -> Sim {
    let sim = Simulator::spawn(
        SimConfig {
            rate_limit: None,
            ..config
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    Sim {
        sim,
        http: reqwest::Client::new(),
    }
}

async fn sim() -> Sim {
    start(SimConfig::default()).await
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim.addr())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = req
            .basic_auth(
                gorgias_sim::DEFAULT_USERNAME,
                Some(gorgias_sim::DEFAULT_API_KEY),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, _, b) = self.send(self.http.post(self.url(path)).json(body)).await;
        (s, b)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, b) = self.send(self.http.get(self.url(path))).await;
        (s, b)
    }

    async fn search(&self, kind: &str, query: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send(
            self.http
                .post(self.url("/api/search"))
                .json(&json!({"type": kind, "query": query})),
        )
        .await
    }
}

/// The minimal create the live API accepted (§11): no `via`, `external_id`, `body_html` or
/// `attachments`.
fn minimal_ticket(customer_id: u64) -> Value {
    json!({"channel": "phone", "customer": {"id": customer_id}, "from_agent": false,
           "subject": "Test ticket",
           "messages": [{"channel": "phone", "body_text": "Hello from dryrun", "from_agent": false,
                         "sender": {"id": customer_id}}]})
}

#[tokio::test]
async fn a_minimal_ticket_answers_in_the_2026_shape() {
    let s = sim().await;
    let cid = s
        .sim
        .add_customer(Some("nango@example.com"), Some("0719908543"));
    let (status, t) = s.post("/api/tickets", &minimal_ticket(cid)).await;
    assert_eq!(status, 201, "{t}");

    assert_eq!(t["opened_datetime"], Value::Null, "not set to now (§11)");
    assert_eq!(t["priority"], "normal");
    assert_eq!(t["summary"], Value::Null);
    assert_eq!(t["imported"], false);
    assert!(t["processed_datetime"].is_string());
    assert_eq!(t["subject"], "Test ticket");
    assert_eq!(t["via"], "api");
    assert_eq!(t["external_id"], Value::Null);
    assert_eq!(t["satisfaction_survey"], Value::Null);
    assert_eq!(t["events"], json!([]));
    assert_eq!(t["tags"], json!([]));
    for key in ["assignee_user_id", "assignee_team", "assignee_team_id"] {
        assert_eq!(t[key], Value::Null, "{key}");
    }
    assert_eq!(
        t["reply_options"],
        json!({"email": {"answerable": true}, "internal-note": {"answerable": true}})
    );
    assert_eq!(t["requester"]["id"], cid);
    assert_eq!(t["requester"]["channels"].as_array().unwrap().len(), 2);
    assert_eq!(t["customer"]["id"], cid);

    let m = &t["messages"][0];
    assert_eq!(m["via"], "api", "filled in when not sent");
    assert_eq!(m["source"], json!({"type": "phone"}));
    assert_eq!(m["opened_datetime"], Value::Null);
    assert_eq!(m["imported"], false);
    assert!(m["processed_datetime"].is_string());
    assert_eq!(m["sent_datetime"], m["created_datetime"]);
    assert_eq!(m["is_retriable"], true);
    assert_eq!(m["intents"], json!([]));
    assert_eq!(m["auth_customer_identity"], Value::Null);
    assert_eq!(m["attachments"], Value::Null);
    assert_eq!(m["body_html"], Value::Null);
    assert_eq!(m["external_id"], Value::Null);
    assert_eq!(m["sender"]["id"], cid);

    // The full ticket, as stored and as GET answers it.
    let (status, full) = s.get(&format!("/api/tickets/{}", t["id"])).await;
    assert_eq!(status, 200);
    assert_eq!(full, t);
}

#[tokio::test]
async fn every_key_of_the_recorded_answer_is_still_there() {
    let recorded: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/post-tickets.json")).unwrap();
    let recorded = &recorded["body"];
    let s = sim().await;
    let cid = s
        .sim
        .add_customer(Some("nango@example.com"), Some("0719908543"));
    let mut body = minimal_ticket(cid);
    body["messages"][0]["body_html"] = json!("<div>Hi</div>");
    body["messages"][0]["external_id"] = json!("message123");
    body["messages"][0]["attachments"] = json!([{"url": "https://example.com/f.png",
        "name": "f.png", "size": 1, "content_type": "image/png"}]);
    let (status, t) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 201, "{t}");
    let missing = |want: &Value, got: &Value, at: &str| -> Vec<String> {
        want.as_object()
            .unwrap()
            .keys()
            .filter(|k| got.get(k.as_str()).is_none())
            .map(|k| format!("{at}.{k}"))
            .collect()
    };
    let mut gaps = missing(recorded, &t, "ticket");
    gaps.extend(missing(
        &recorded["messages"][0],
        &t["messages"][0],
        "message",
    ));
    gaps.extend(missing(&recorded["customer"], &t["customer"], "customer"));
    gaps.extend(missing(
        &recorded["messages"][0]["sender"],
        &t["messages"][0]["sender"],
        "sender",
    ));
    gaps.extend(missing(
        &recorded["messages"][0]["attachments"][0],
        &t["messages"][0]["attachments"][0],
        "attachment",
    ));
    assert_eq!(gaps, Vec::<String>::new());
    assert_eq!(t["messages"][0]["body_html"], "<div>Hi</div>");
    assert_eq!(t["messages"][0]["external_id"], "message123");
}

#[tokio::test]
async fn subject_tags_priority_custom_fields_and_meta_are_kept() {
    let s = sim().await;
    let cid = s.sim.add_customer(Some("a@example.com"), None);
    let mut body = minimal_ticket(cid);
    body["priority"] = json!("high");
    body["tags"] = json!([{"name": "vip"}, {"name": "sms"}]);
    body["custom_fields"] = json!([{"id": 12, "value": "gold"}]);
    body["meta"] = json!({"source": "proxy", "n": 1});
    let (status, t) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["priority"], "high");
    assert_eq!(t["subject"], "Test ticket");
    assert_eq!(t["custom_fields"], json!([{"id": 12, "value": "gold"}]));
    assert_eq!(t["meta"], json!({"source": "proxy", "n": 1}));
    let tags = t["tags"].as_array().unwrap();
    assert_eq!(tags.len(), 2);
    for (tag, name) in tags.iter().zip(["vip", "sms"]) {
        let keys: Vec<&str> = tag
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["created_datetime", "decoration", "id", "name", "uri"],
            "{tag}"
        );
        assert_eq!(tag["name"], name);
        assert_eq!(tag["decoration"], Value::Null);
        assert_eq!(tag["uri"], format!("/api/tags/{}/", tag["id"]));
    }
    // A tag name keeps its id across tickets (tags are account-wide).
    let (_, again) = s.post("/api/tickets", &body).await;
    assert_eq!(again["tags"][0]["id"], tags[0]["id"]);

    let (status, err) = s
        .post("/api/tickets", &{
            let mut b = minimal_ticket(cid);
            b["tags"] = json!([{"label": "x"}]);
            b
        })
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        err["error"]["data"]["tags"]["0"]["name"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn an_email_message_without_a_source_is_refused_naming_the_message() {
    let s = sim().await;
    let cid = s.sim.add_customer(Some("a@example.com"), None);
    let mut body = minimal_ticket(cid);
    body["channel"] = json!("email");
    body["messages"][0]["channel"] = json!("email");
    let (status, err) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 400);
    assert!(err["error"]["msg"].is_string());
    let reasons = err["error"]["data"]["messages"]["0"]["source"]
        .as_array()
        .unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].is_string());
    assert_eq!(s.sim.stats().tickets_created, 0);

    // With a full envelope it is accepted and the source kept.
    body["messages"][0]["source"] = json!({"from": {"address": "a@example.com"},
                                           "to": [{"address": "support@example.com"}]});
    let (status, t) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["messages"][0]["source"]["type"], "email");
    assert_eq!(
        t["messages"][0]["source"]["from"]["address"],
        "a@example.com"
    );
}

#[tokio::test]
async fn message_via_is_optional_but_checked_when_sent() {
    let s = sim().await;
    let cid = s.sim.add_customer(Some("a@example.com"), None);
    let mut body = minimal_ticket(cid);
    body["messages"][0]["via"] = json!("carrier-pigeon");
    let (status, err) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 400);
    assert!(err["error"]["data"]["messages"]["0"]["via"].is_array());
    body["messages"][0]["via"] = json!("helpdesk");
    let (status, t) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 201);
    assert_eq!(t["messages"][0]["via"], "helpdesk");
}

#[tokio::test]
async fn ticket_list_items_are_abridged_and_the_full_ticket_is_by_id() {
    let s = sim().await;
    let cid = s.sim.add_customer(Some("a@example.com"), None);
    let mut body = minimal_ticket(cid);
    body["external_id"] = json!("ext-1");
    body["messages"][0]["body_text"] = json!("x".repeat(250));
    body["messages"].as_array_mut().unwrap().push(
        json!({"channel": "phone", "body_text": "second", "from_agent": false,
                     "sender": {"id": cid}}),
    );
    let (status, t) = s.post("/api/tickets", &body).await;
    assert_eq!(status, 201, "{t}");
    s.post("/api/tickets", &minimal_ticket(cid)).await;

    let (status, list) = s.get("/api/tickets?external_id=ext-1&limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["uri"], "/api/tickets?external_id=ext-1&limit=1");
    assert_eq!(
        list["meta"],
        json!({"prev_cursor": null, "next_cursor": null, "total_resources": null})
    );
    let items = list["data"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["id"], t["id"]);
    assert!(item.get("messages").is_none(), "abridged: no messages");
    assert_eq!(item["messages_count"], 2);
    assert_eq!(item["excerpt"], "x".repeat(100));
    assert_eq!(item["summary"], Value::Null);
    assert_eq!(item["integrations"], json!([]));
    assert_eq!(item["custom_fields"], json!({}));
    assert_eq!(item["last_sent_message_not_delivered"], false);
    assert_eq!(item["external_id"], "ext-1");

    let (status, full) = s.get(&format!("/api/tickets/{}", t["id"])).await;
    assert_eq!(status, 200);
    assert_eq!(full["messages"].as_array().unwrap().len(), 2);
    assert!(full.get("messages_count").is_none());

    let (_, all) = s.get("/api/tickets").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("messages").is_none())
    );
}

#[tokio::test]
async fn customer_names_split_on_the_last_space_everywhere() {
    let s = sim().await;
    let (status, c) = s
        .post(
            "/api/customers",
            &json!({"name": "Nango Test User", "channels": [{"type": "phone", "address": "+15550001"}]}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["name"], "Nango Test User");
    assert_eq!(c["firstname"], "Nango Test");
    assert_eq!(c["lastname"], "User");
    assert_eq!(c["meta"], json!({"name_set_via": "agent"}));
    assert_eq!(c["channels"][0]["customer"]["name"], "Nango Test User");
    let id = c["id"].as_u64().unwrap();

    let (_, one) = s
        .post(
            "/api/customers",
            &json!({"name": "Cher", "email": "cher@example.com"}),
        )
        .await;
    assert_eq!(
        (one["firstname"].as_str(), one["lastname"].as_str()),
        (Some("Cher"), Some(""))
    );
    let (_, none) = s
        .post("/api/customers", &json!({"email": "anon@example.com"}))
        .await;
    assert_eq!(none["name"], Value::Null);
    assert_eq!(
        (none["firstname"].as_str(), none["lastname"].as_str()),
        (Some(""), Some(""))
    );

    // Full customer, list item, and the ticket's customer / requester / sender.
    let (_, full) = s.get(&format!("/api/customers/{id}")).await;
    assert_eq!(full["firstname"], "Nango Test");
    let (_, list) = s.get("/api/customers?limit=100").await;
    let item = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(
        (&item["name"], &item["firstname"], &item["lastname"]),
        (
            &json!("Nango Test User"),
            &json!("Nango Test"),
            &json!("User")
        )
    );
    assert!(item.get("channels").is_none());
    let (status, t) = s.post("/api/tickets", &minimal_ticket(id)).await;
    assert_eq!(status, 201);
    for who in [&t["customer"], &t["requester"], &t["messages"][0]["sender"]] {
        assert_eq!(who["name"], "Nango Test User", "{who}");
        assert_eq!(who["firstname"], "Nango Test");
        assert_eq!(who["lastname"], "User");
        assert_eq!(who["meta"], json!({"name_set_via": "agent"}));
    }
}

#[tokio::test]
async fn customers_filter_by_primary_email_and_by_external_id() {
    let s = sim().await;
    let (_, a) = s
        .post(
            "/api/customers",
            &json!({"email": "Jane@Example.com", "external_id": "crm-1",
                    "channels": [{"type": "email", "address": "Jane@Example.com"},
                                 {"type": "email", "address": "jane.other@example.com"}]}),
        )
        .await;
    assert_eq!(a["external_id"], "crm-1");
    s.post(
        "/api/customers",
        &json!({"email": "bob@example.com", "external_id": "crm-2"}),
    )
    .await;

    let (status, by_email) = s
        .get("/api/customers?email=jane%40example.com&limit=1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        by_email["uri"],
        "/api/customers?email=jane%40example.com&limit=1"
    );
    assert_eq!(
        by_email["meta"],
        json!({"prev_cursor": null, "next_cursor": null})
    );
    let items = by_email["data"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], a["id"]);
    assert_eq!(items[0]["custom_fields"], json!({}));
    // A secondary address is not the customer's email.
    let (_, secondary) = s.get("/api/customers?email=jane.other%40example.com").await;
    assert_eq!(secondary["data"], json!([]));

    let (status, by_ext) = s.get("/api/customers?external_id=crm-1").await;
    assert_eq!(status, 200);
    let items = by_ext["data"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], a["id"]);
    assert_eq!(items[0]["external_id"], "crm-1");
    let (_, none) = s.get("/api/customers?external_id=crm-404").await;
    assert_eq!(none["data"], json!([]));
    let (_, both) = s
        .get("/api/customers?email=bob%40example.com&external_id=crm-1")
        .await;
    assert_eq!(both["data"], json!([]), "filters combine");
}

#[tokio::test]
async fn search_answers_in_the_recorded_envelope_with_the_engine_header() {
    let s = sim().await;
    let id = s
        .sim
        .add_customer(Some("nango@example.com"), Some("0719908543"));
    let (status, headers, body) = s.search("customer", "nango").await;
    assert_eq!(status, 201);
    assert_eq!(headers["x-gorgias-search-engine"], "ES");
    assert_eq!(
        body,
        json!({"data": [{"id": id, "name": null, "email": "nango@example.com"}],
               "object": "list", "uri": "", "meta": {}})
    );
    let (_, headers, phone) = s.search("customer_channel_phone", "0719908543").await;
    assert_eq!(headers["x-gorgias-search-engine"], "ES");
    assert_eq!(phone["uri"], "");
    assert_eq!(phone["meta"], json!({}));
    assert_eq!(phone["object"], "list");
    assert_eq!(phone["data"][0]["customer"]["id"], id);
    assert_eq!(phone["data"][0]["address"], "0719908543");
}

#[tokio::test]
async fn a_new_customer_reaches_search_only_after_the_lag() {
    let lag = Duration::from_millis(300);
    let s = start(SimConfig {
        search_lag: lag,
        seed_customers: 1,
        ..SimConfig::default()
    })
    .await;
    // Seeded and directly added customers are long indexed.
    let (_, _, seeded) = s.search("customer_channel_phone", "+15550000000").await;
    assert_eq!(seeded["data"].as_array().unwrap().len(), 1);
    s.sim.add_customer(None, Some("+15559990000"));
    let (_, _, added) = s.search("customer_channel_phone", "+15559990000").await;
    assert_eq!(added["data"].as_array().unwrap().len(), 1);

    let created_at = Instant::now();
    let (status, c) = s
        .post(
            "/api/customers",
            &json!({"name": "Lag Test", "channels": [{"type": "phone", "address": "+15551230000"}]}),
        )
        .await;
    assert_eq!(status, 201);
    // In the database at once...
    let (_, listed) = s.get(&format!("/api/customers/{}", c["id"])).await;
    assert_eq!(listed["id"], c["id"]);
    // ...but not in the index yet.
    let (_, _, early) = s.search("customer_channel_phone", "+15551230000").await;
    assert_eq!(early["data"], json!([]));
    let (_, _, early) = s.search("customer", "Lag Test").await;
    assert_eq!(early["data"], json!([]));

    let found_at = loop {
        let (_, _, hits) = s.search("customer_channel_phone", "+15551230000").await;
        if !hits["data"].as_array().unwrap().is_empty() {
            break Instant::now();
        }
        assert!(
            created_at.elapsed() < Duration::from_secs(5),
            "never indexed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(found_at - created_at >= lag);
    let (_, _, hits) = s.search("customer", "lag test").await;
    assert_eq!(hits["data"][0]["id"], c["id"]);
    assert_eq!(hits["data"][0]["name"], "Lag Test");
}

#[tokio::test]
async fn assignment_channels_and_search_lag_come_from_the_flags() {
    let config = gorgias_sim::cli::Args::from_flags([
        "gorgias-sim",
        "--assignment-channels",
        "chat, email,custom-chat",
        "--search-lag-ms",
        "250",
    ])
    .unwrap()
    .config()
    .unwrap();
    assert_eq!(config.search_lag, Duration::from_millis(250));
    assert_eq!(config.assignment_channels, ["chat", "email", "custom-chat"]);
    let defaults = gorgias_sim::cli::Args::from_flags(["gorgias-sim"])
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(defaults.search_lag, Duration::ZERO);

    let s = start(config).await;
    let (status, settings) = s.get("/api/account/settings").await;
    assert_eq!(status, 200);
    let assignment = settings["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "ticket-assignment")
        .unwrap();
    assert_eq!(
        assignment["data"]["assignment_channels"],
        json!(["chat", "email", "custom-chat"])
    );
    assert_eq!(
        assignment["data"]["unassign_on_reply"], true,
        "the rest as recorded"
    );
}

#[tokio::test]
async fn a_stored_ticket_reaches_the_external_id_list_only_after_the_lag() {
    let lag = Duration::from_millis(400);
    let s = start(SimConfig {
        ticket_list_lag: lag,
        seed_customers: 1,
        ..SimConfig::default()
    })
    .await;
    let mut ticket = minimal_ticket(488_071_553);
    ticket["external_id"] = json!("lagging-1");
    let stored_at = Instant::now();
    let (status, created) = s.post("/api/tickets", &ticket).await;
    assert_eq!(status, 201, "{created}");
    // In the database at once...
    let (_, fetched) = s.get(&format!("/api/tickets/{}", created["id"])).await;
    assert_eq!(fetched["id"], created["id"]);
    // ...but not in the filtered list yet.
    let (_, early) = s.get("/api/tickets?external_id=lagging-1").await;
    assert_eq!(early["data"], json!([]));
    let shown_at = loop {
        let (_, listed) = s.get("/api/tickets?external_id=lagging-1").await;
        if listed["data"].as_array().unwrap().len() == 1 {
            break Instant::now();
        }
        assert!(stored_at.elapsed() < Duration::from_secs(5), "never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(shown_at - stored_at >= lag, "{:?}", shown_at - stored_at);
}

#[tokio::test]
async fn a_late_commit_stores_the_ticket_even_when_the_caller_hung_up() {
    let s = start(SimConfig {
        seed_customers: 1,
        faults: gorgias_sim::Faults {
            late_commit_ms: 500,
            ..gorgias_sim::Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut ticket = minimal_ticket(488_071_553);
    ticket["external_id"] = json!("late-1");
    // The caller gives up after 100 ms.
    let gave_up = s
        .http
        .post(s.url("/api/tickets"))
        .basic_auth(
            gorgias_sim::DEFAULT_USERNAME,
            Some(gorgias_sim::DEFAULT_API_KEY),
        )
        .timeout(Duration::from_millis(100))
        .json(&ticket)
        .send()
        .await;
    assert!(gave_up.is_err(), "answered before the commit");
    assert_eq!(s.sim.stats().tickets_created, 0, "not stored yet");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.sim.stats().tickets_created, 1, "stored all the same");
    let (_, listed) = s.get("/api/tickets?external_id=late-1").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn ticket_list_lag_and_late_commit_come_from_the_flags() {
    let config = gorgias_sim::cli::Args::from_flags([
        "gorgias-sim",
        "--ticket-list-lag-ms",
        "5000",
        "--late-commit-ms",
        "3000",
    ])
    .unwrap()
    .config()
    .unwrap();
    assert_eq!(config.ticket_list_lag, Duration::from_secs(5));
    assert_eq!(config.faults.late_commit_ms, 3000);
}
