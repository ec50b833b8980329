//! The create-ticket use case: find or create the customer, pick the channel, create the ticket
//! exactly once. Knows Gorgias only through [`GorgiasClient`].
//!
//! Call budget (the account allows 40 calls per 20 s, so calls per ticket decide how many
//! tickets an account can open): a returning customer with warm caches costs 1 call (the ticket);
//! a new one costs at most 4 (email lookup, phone search, create, ticket).

use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

use gorgias::{
    CreateCustomer, CreateTicket, Customer, GorgiasClient, GorgiasError, NewAttachment,
    NewCustomField, NewMessage, PersonRef, TagRef,
};

use crate::coordination::{LockToken, SharedCustomers};
use crate::domain::{NewTicket, PhoneNumber, normalize_phone};
use crate::output::{MappingError, Ticket};
use crate::telemetry::{mask_email, mask_phone};
use crate::traces::TRACE_TARGET;

/// How the use case caches and decides.
#[derive(Debug, Clone)]
pub struct TicketingSettings {
    /// How long a resolved customer is reused without asking Gorgias again.
    pub customer_cache_ttl: Duration,
    /// How many resolved customers are kept at most.
    pub customer_cache_capacity: u64,
    /// How long the account's ticket channel is reused.
    pub settings_ttl: Duration,
    /// A fixed ticket channel (`TICKET_CHANNEL`), which skips the settings lookup.
    pub channel_override: Option<String>,
    /// The channel every message is sent with (`MESSAGE_CHANNEL`), whatever the ticket's.
    pub message_channel: MessageChannel,
    /// How long a create of unknown outcome is given to show in Gorgias's ticket list before
    /// it is looked up (`GORGIAS_SETTLE_SECS`).
    pub settle: Duration,
    /// Customers and creation locks shared with other replicas (with Redis).
    pub shared: Option<SharedCustomers>,
}

impl Default for TicketingSettings {
    fn default() -> Self {
        Self {
            customer_cache_ttl: Duration::from_secs(600),
            customer_cache_capacity: 100_000,
            settings_ttl: Duration::from_secs(300),
            channel_override: None,
            message_channel: MessageChannel::default(),
            settle: Duration::from_secs(15),
            shared: None,
        }
    }
}

/// The channel messages are sent with. Never `email`: the live API refuses an email-channel
/// message without a full `source` envelope (from/to addresses), which an incoming phone
/// ticket does not have (`../shared/gorgias-api.md` §11; Nango's 2026 rewrite and the seed send
/// `phone` too). So the type cannot express it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageChannel {
    /// `phone`: the seed's choice and the default; Gorgias fills `source: {type: phone}`.
    #[default]
    Phone,
    /// `api`: an incoming API message (auto-reply rules do not fire on it).
    Api,
}

impl MessageChannel {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Api => "api",
        }
    }
}

impl std::str::FromStr for MessageChannel {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "phone" => Ok(Self::Phone),
            "api" => Ok(Self::Api),
            _ => Err(()),
        }
    }
}

/// The ticket channel an account's settings give (when `TICKET_CHANNEL` does not fix one):
/// `phone` when the account auto-assigns SMS tickets (`sms` among the `ticket-assignment`
/// setting's channels), else `email`. The one copy of the rule: the use case and the `check`
/// preflight both read it here.
pub fn channel_for(assignment_channels: &[String]) -> &'static str {
    if assignment_channels.iter().any(|c| c == "sms") {
        "phone"
    } else {
        "email"
    }
}

/// Why a ticket could not be created.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketingError {
    /// A Gorgias call failed.
    #[error(transparent)]
    Gorgias(#[from] GorgiasError),
    /// Gorgias answered with something that is not a ticket.
    #[error("Gorgias answered with something that is not a ticket: {0}")]
    Mapping(#[from] MappingError),
    /// A create was sent, its answer was lost, and no lookup settled whether the ticket exists
    /// before the deadline; or an earlier one's window has not passed; or the work lost its
    /// claim before it could create. The ticket carries `external_id`, so the caller can
    /// reconcile (with an `Idempotency-Key`, its retry does).
    #[error("the ticket create's outcome is unknown: {why}")]
    OutcomeUnknown {
        /// The ticket's `external_id`.
        external_id: String,
        /// When a lookup can settle it: the rest of the settle window.
        retry_after: Duration,
        /// Why it is unknown.
        why: Unknown,
    },
}

/// Why a create's outcome is unknown.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unknown {
    /// The create (or the lookup after it) failed this way.
    #[error(transparent)]
    Gorgias(#[from] GorgiasError),
    /// An earlier create of this ticket has not had its settle window yet, and the window
    /// does not fit in this request's deadline.
    #[error("an earlier create has not had its settle window yet")]
    Settling,
    /// The key's or delivery's claim was lost (its lease lapsed and another worker may hold
    /// it), so no create may be sent.
    #[error("the claim on this ticket was lost before its create")]
    ClaimLost,
    /// The create was answered 2xx with a ticket we cannot read.
    #[error(transparent)]
    Unreadable(MappingError),
}

/// Asked right before each ticket create is sent: whether the work still holds what entitles
/// it to create (its key's or delivery's lease), marking that a create is being sent. A
/// `false` stops the work before the create.
#[async_trait::async_trait]
pub trait Fence: Send + Sync {
    /// Whether the create may be sent.
    async fn may_create(&self) -> bool;
}

/// No fence: a request without a key has nothing another worker could take over.
pub struct Unfenced;

#[async_trait::async_trait]
impl Fence for Unfenced {
    async fn may_create(&self) -> bool {
        true
    }
}

/// One attempt at a ticket: what identifies it, when it must end, and what an earlier
/// attempt of the same ticket left behind.
pub struct Attempt<'a> {
    /// The ticket's `external_id`, stable across attempts.
    pub external_id: &'a str,
    /// When this attempt must answer.
    pub deadline: Instant,
    /// An earlier attempt may have created the ticket: look it up before creating.
    pub reconcile_first: bool,
    /// How long until that earlier create has had its settle window (the lookup waits).
    pub settle_remaining: Duration,
    /// Whether a settle window may be waited out within this attempt (a caller waiting) or is
    /// handed back as [`TicketingError::OutcomeUnknown`] for a later attempt (a delivery,
    /// which schedules its next attempt after the window).
    pub wait_in_attempt: bool,
    /// Checked before every create.
    pub fence: &'a dyn Fence,
}

/// The use case and its caches; one per process, cheap to clone.
#[derive(Clone)]
pub struct Ticketing {
    client: GorgiasClient,
    customers: Cache<String, Customer>,
    channel: Cache<(), String>,
    channel_override: Option<String>,
    message_channel: MessageChannel,
    settle: Duration,
    shared: Option<SharedCustomers>,
}

/// How many times a create whose outcome was unknown is reconciled and sent again.
const MAX_CREATE_TRIES: usize = 4;

/// Time kept free after a settle window for the lookup (and a create) before the deadline.
const LOOKUP_ROOM: Duration = Duration::from_secs(2);

impl Ticketing {
    /// Builds the use case over a client.
    pub fn new(client: GorgiasClient, settings: TicketingSettings) -> Self {
        Self {
            client,
            customers: Cache::builder()
                .max_capacity(settings.customer_cache_capacity)
                .time_to_live(settings.customer_cache_ttl)
                .build(),
            channel: Cache::builder()
                .max_capacity(1)
                .time_to_live(settings.settings_ttl)
                .build(),
            channel_override: settings.channel_override,
            message_channel: settings.message_channel,
            settle: settings.settle,
            shared: settings.shared,
        }
    }

    /// The Gorgias client, for health checks.
    pub fn client(&self) -> &GorgiasClient {
        &self.client
    }

    /// Fetches the account's channel ahead of the first ticket, so that ticket stays within
    /// its call budget. Failure is only logged: the first ticket will try again.
    pub async fn warm_up(&self, deadline: Instant) {
        if let Err(e) = self.ticket_channel(deadline).await {
            tracing::warn!(error = %e, "could not read the Gorgias account settings at start-up");
        }
    }

    /// Opens the ticket: customer, channel, then the ticket itself, created at most once per
    /// `external_id` even when Gorgias fails after saving it or its lists lag its writes.
    ///
    /// # Errors
    /// A [`TicketingError`] when Gorgias refuses, fails past our retries, or answers garbage.
    pub async fn create_ticket(
        &self,
        t: &NewTicket,
        attempt: &Attempt<'_>,
    ) -> Result<Ticket, TicketingError> {
        let deadline = attempt.deadline;
        let customer = self.customer(t, deadline).await?;
        let channel = self.ticket_channel(deadline).await?;
        let body = ticket_request(
            t,
            &customer,
            &channel,
            self.message_channel,
            attempt.external_id,
        );
        if attempt.reconcile_first {
            self.settle_then_look(attempt, attempt.settle_remaining, None)
                .await?;
            if let Some(found) = self
                .find_ticket(attempt.external_id, deadline)
                .await
                .map_err(|e| self.unknown(attempt, Duration::ZERO, e.into()))?
            {
                crate::metrics::reconciled();
                return Ok(Ticket::try_from(found)?);
            }
        }
        let created = self.create_once(&body, attempt).await?;
        // Created, but not readable as a ticket: it exists, so this is no refusal to report.
        Ticket::try_from(created)
            .map_err(|e| self.unknown(attempt, Duration::ZERO, Unknown::Unreadable(e)))
    }

    fn unknown(
        &self,
        attempt: &Attempt<'_>,
        retry_after: Duration,
        why: Unknown,
    ) -> TicketingError {
        TicketingError::OutcomeUnknown {
            external_id: attempt.external_id.to_owned(),
            retry_after,
            why,
        }
    }

    /// Waits out what is left of a settle window when the attempt may and it fits before the
    /// deadline (with room for the lookup); otherwise hands it back as an unknown outcome
    /// whose `retry_after` covers the window.
    async fn settle_then_look(
        &self,
        attempt: &Attempt<'_>,
        remaining: Duration,
        cause: Option<GorgiasError>,
    ) -> Result<(), TicketingError> {
        if remaining.is_zero() {
            return Ok(());
        }
        let fits = Instant::now() + remaining + LOOKUP_ROOM < attempt.deadline;
        if !attempt.wait_in_attempt || !fits {
            let why = cause.map_or(Unknown::Settling, Unknown::Gorgias);
            return Err(self.unknown(attempt, remaining, why));
        }
        tokio::time::sleep(remaining).await;
        Ok(())
    }

    /// Creates the ticket. After an ambiguous failure (timeout, lost connection, 5xx, an
    /// unreadable 2xx) the create may still land, and Gorgias's list by `external_id` may
    /// lag its writes: wait the settle window from the end of that attempt, then look the
    /// ticket up, and create again only if that lookup finds nothing. Once a create's outcome
    /// is unknown, any failure to settle it is [`TicketingError::OutcomeUnknown`]: the caller
    /// must not be told the ticket failed.
    async fn create_once(
        &self,
        body: &CreateTicket<'_>,
        attempt: &Attempt<'_>,
    ) -> Result<gorgias::Ticket, TicketingError> {
        let deadline = attempt.deadline;
        let mut tries = 0;
        let mut ambiguous = false;
        loop {
            tries += 1;
            if !attempt.fence.may_create().await {
                tracing::warn!("the claim on this ticket was lost; not creating");
                tracing::info!(target: TRACE_TARGET, "idempotency lease lost");
                return Err(self.unknown(attempt, Duration::from_secs(1), Unknown::ClaimLost));
            }
            let err = match self.client.create_ticket(body, deadline).await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_ambiguous() => e,
                Err(e) if ambiguous => return Err(self.unknown(attempt, Duration::ZERO, e.into())),
                Err(e) => return Err(e.into()),
            };
            ambiguous = true;
            tracing::warn!(
                error = %err,
                settle_secs = self.settle.as_secs_f64(),
                "ticket create outcome unknown; looking it up by external_id after the settle window"
            );
            if tries >= MAX_CREATE_TRIES {
                return Err(self.unknown(attempt, self.settle, err.into()));
            }
            self.settle_then_look(attempt, self.settle, Some(err))
                .await?;
            match self.find_ticket(body.external_id, deadline).await {
                Ok(Some(found)) => {
                    crate::metrics::reconciled();
                    return Ok(found);
                }
                // Not there after the window: the create did not land. Send it again.
                Ok(None) => {}
                Err(e) => return Err(self.unknown(attempt, Duration::ZERO, e.into())),
            }
        }
    }

    /// Looks for the ticket a create of unknown outcome may have left; its Gorgias calls are
    /// marked as a reconcile in their trace spans.
    async fn find_ticket(
        &self,
        external_id: &str,
        deadline: Instant,
    ) -> Result<Option<gorgias::Ticket>, GorgiasError> {
        gorgias::reconciling(self.find_ticket_now(external_id, deadline)).await
    }

    async fn find_ticket_now(
        &self,
        external_id: &str,
        deadline: Instant,
    ) -> Result<Option<gorgias::Ticket>, GorgiasError> {
        let found = self
            .client
            .tickets_by_external_id(external_id, deadline)
            .await?;
        let Some(first) = found
            .into_iter()
            .find(|t| t.external_id.as_deref() == Some(external_id))
        else {
            return Ok(None);
        };
        // List items are abridged (no messages, live): fetch the full ticket then.
        match (
            &first.messages,
            first.id.as_ref().and_then(gorgias::TicketId::as_u64),
        ) {
            (None, Some(id)) => self.client.ticket(id, deadline).await.map(Some),
            _ => Ok(Some(first)),
        }
    }

    /// The channel every ticket is opened on: `TICKET_CHANNEL`, else `phone` when the account
    /// auto-assigns SMS tickets, else `email` (the reference flow's rule).
    async fn ticket_channel(&self, deadline: Instant) -> Result<String, GorgiasError> {
        if let Some(c) = &self.channel_override {
            return Ok(c.clone());
        }
        let client = &self.client;
        self.channel
            .try_get_with((), async move {
                let channels = client.assignment_channels(deadline).await?;
                Ok::<_, GorgiasError>(channel_for(&channels).to_owned())
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The Gorgias customer for this caller, from the cache or resolved once even when many
    /// requests for the same new customer arrive together (single-flight).
    async fn customer(&self, t: &NewTicket, deadline: Instant) -> Result<Customer, GorgiasError> {
        let key = format!(
            "{}\u{1f}{}",
            t.email
                .as_ref()
                .map(|e| e.as_str().to_ascii_lowercase())
                .unwrap_or_default(),
            t.phone.normalized()
        );
        let entry = self
            .customers
            .entry(key.clone())
            .or_try_insert_with(self.resolve_shared(&key, t, deadline))
            .await
            .map_err(|e| (*e).clone())?;
        let hit = !entry.is_fresh();
        crate::metrics::customer_cache(hit);
        if hit {
            tracing::info!(target: TRACE_TARGET, "customer cache hit");
        }
        Ok(entry.into_value())
    }

    /// With Redis: another replica's result first, then Gorgias; a new customer is created
    /// under a lock so racing replicas create it once. Redis trouble degrades to local-only.
    async fn resolve_shared(
        &self,
        key: &str,
        t: &NewTicket,
        deadline: Instant,
    ) -> Result<Customer, GorgiasError> {
        let Some(shared) = &self.shared else {
            return self.resolve_customer(t, deadline).await;
        };
        match shared.get(key).await {
            Ok(Some(c)) => {
                tracing::info!(target: TRACE_TARGET, "customer shared cache hit");
                return Ok(c);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "shared customer cache unavailable");
                return self.resolve_customer(t, deadline).await;
            }
        }
        if let Some(found) = self.lookup_customer(t, deadline).await? {
            let _ = shared.put(key, &found).await;
            return Ok(found);
        }
        let lock = match shared.lock(key, deadline).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(GorgiasError::DeadlineExhausted {
                    endpoint: "customer creation lock",
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "customer creation lock unavailable");
                return self.resolve_customer(t, deadline).await;
            }
        };
        // The lock is a lease renewed while this section runs, however long pacing and
        // retries make it; gone with us if we die.
        let result = tokio::select! {
            r = self.create_under_lock(key, t, deadline, shared, &lock) => r,
            () = shared.keep_alive(&lock) => unreachable!("keep_alive never completes"),
        };
        if let Ok(c) = &result {
            let _ = shared.put(key, c).await;
        }
        let _ = shared.unlock(lock).await;
        result
    }

    /// The section under the creation lock: whoever held it before us recorded what it
    /// resolved before releasing it; otherwise we create, fenced by the lock.
    async fn create_under_lock(
        &self,
        key: &str,
        t: &NewTicket,
        deadline: Instant,
        shared: &SharedCustomers,
        lock: &LockToken,
    ) -> Result<Customer, GorgiasError> {
        if let Ok(Some(c)) = shared.get(key).await {
            return Ok(c);
        }
        self.create_customer(t, deadline, Some((shared, lock)))
            .await
    }

    async fn resolve_customer(
        &self,
        t: &NewTicket,
        deadline: Instant,
    ) -> Result<Customer, GorgiasError> {
        if let Some(found) = self.lookup_customer(t, deadline).await? {
            return Ok(found);
        }
        self.create_customer(t, deadline, None).await
    }

    /// Creates the customer; on 409 or an ambiguous failure looks it up before trying again.
    /// With a `fence` (the shared creation lock), each create is sent only while the lock is
    /// still ours; once it is not, another replica may be creating, so we look instead.
    async fn create_customer(
        &self,
        t: &NewTicket,
        deadline: Instant,
        fence: Option<(&SharedCustomers, &LockToken)>,
    ) -> Result<Customer, GorgiasError> {
        let email = t.email.as_ref().map(|e| e.as_str());
        // Masked: enough to correlate an incident, not to contact the customer.
        tracing::info!(
            phone = %mask_phone(t.phone.as_str()),
            email = %email.map(mask_email).unwrap_or_default(),
            "creating a Gorgias customer"
        );
        tracing::info!(target: TRACE_TARGET, "customer create");
        let mut tries = 0;
        loop {
            tries += 1;
            if let Some((shared, lock)) = fence
                && matches!(shared.holds(lock).await, Ok(false))
            {
                tracing::warn!("the customer creation lock was lost; looking up instead");
                return match self.lookup_customer(t, deadline).await? {
                    Some(found) => Ok(found),
                    None => Err(GorgiasError::DeadlineExhausted {
                        endpoint: "customer creation lock",
                        retry_after: Some(Duration::from_secs(1)),
                    }),
                };
            }
            let request = CreateCustomer {
                name: t.name.as_deref(),
                ..CreateCustomer::with_phone(t.phone.as_str(), email)
            };
            match self.client.create_customer(&request, deadline).await {
                Ok(c) => return Ok(c),
                // Someone created it meanwhile (409), or our create may have landed (ambiguous):
                // look again before anything else.
                Err(e)
                    if matches!(e, GorgiasError::Rejected { status: 409, .. })
                        || e.is_ambiguous() =>
                {
                    let found = gorgias::reconciling(self.lookup_customer(t, deadline)).await?;
                    if let Some(found) = found {
                        return Ok(found);
                    }
                    if !e.is_ambiguous() || tries >= MAX_CREATE_TRIES {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// By email when given (one call), else or when not found by phone search (one call).
    async fn lookup_customer(
        &self,
        t: &NewTicket,
        deadline: Instant,
    ) -> Result<Option<Customer>, GorgiasError> {
        tracing::info!(target: TRACE_TARGET, "customer search");
        if let Some(email) = &t.email {
            let found = self
                .client
                .customers_by_email(email.as_str(), deadline)
                .await?;
            if let Some(c) = found.into_iter().next() {
                return Ok(Some(c));
            }
        }
        self.find_by_phone(&t.phone, deadline).await
    }

    async fn find_by_phone(
        &self,
        phone: &PhoneNumber,
        deadline: Instant,
    ) -> Result<Option<Customer>, GorgiasError> {
        let hits = self.client.search_phone(phone.as_str(), deadline).await?;
        // Search is a prefix/fuzzy match; only the exact number (after normalising both) counts.
        Ok(hits
            .into_iter()
            .filter(|h| normalize_phone(&h.address) == phone.normalized())
            .map(|h| h.customer_id)
            .min()
            .map(|id| Customer { id, email: None }))
    }
}

/// The one mapping from our validated ticket to Gorgias's create request. Every message is an
/// incoming API message from the customer, sent on `message_channel` (never `email`, see
/// [`MessageChannel`]); the ticket carries `external_id` so a create of unknown outcome can be
/// found again.
fn ticket_request<'a>(
    t: &'a NewTicket,
    customer: &'a Customer,
    channel: &'a str,
    message_channel: MessageChannel,
    external_id: &'a str,
) -> CreateTicket<'a> {
    let person = PersonRef {
        id: customer.id,
        email: customer
            .email
            .as_deref()
            .or(t.email.as_ref().map(|e| e.as_str())),
    };
    let o = &t.options;
    CreateTicket {
        customer: person,
        channel,
        via: "api",
        from_agent: false,
        external_id,
        subject: o.subject.as_deref(),
        tags: o.tags.iter().map(|name| TagRef { name }).collect(),
        priority: o.priority.as_deref(),
        custom_fields: o
            .custom_fields
            .iter()
            .map(|f| NewCustomField {
                id: f.id,
                value: &f.value,
            })
            .collect(),
        meta: o.meta.as_ref(),
        messages: t
            .messages
            .iter()
            .map(|m| NewMessage {
                channel: message_channel.as_str(),
                via: "api",
                from_agent: false,
                sender: person,
                external_id: Some(m.id.as_str()),
                body_text: &m.body_text,
                body_html: &m.body_html,
                attachments: m
                    .attachments
                    .iter()
                    .map(|a| NewAttachment {
                        url: a.url.as_str(),
                        name: &a.name,
                        size: a.size,
                        content_type: a.content_type.as_str(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
