//! Webhooks on delivery: `ticket.delivered` and `ticket.failed` events POSTed to
//! `WEBHOOK_URL`, signed per the Standard Webhooks spec (headers `webhook-id`,
//! `webhook-timestamp`, `webhook-signature`: `v1,` + base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` with the secret), by the `standardwebhooks` crate.
//!
//! Each event has one stable `webhook-id` (`msg_` + the delivery's id), sent again on every
//! retry, so a receiver that saw it already can drop the repeat. Events are recorded in the
//! outbox with their delivery, so a pending one survives a restart.

use std::time::Duration;

use serde::Serialize;

/// Where events go and how they are signed.
#[derive(Clone)]
pub struct Webhooks {
    url: url::Url,
    signer: std::sync::Arc<standardwebhooks::Webhook>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret; the URL's host only (its path or query may carry a token).
        write!(f, "Webhooks({})", self.url.host_str().unwrap_or("?"))
    }
}

/// An event's body, in the Standard Webhooks shape.
#[derive(Debug, Serialize)]
pub struct Event<T: Serialize> {
    /// `ticket.delivered` or `ticket.failed`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the event was made (RFC 3339).
    pub timestamp: String,
    /// The delivery's status, as `GET /tickets/{id}` answers it.
    pub data: T,
}

/// Why a webhook could not be sent this time.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The receiver answered something other than 2xx.
    #[error("the receiver answered {0}")]
    Status(u16),
    /// It could not be reached or did not answer in time.
    #[error("the receiver could not be reached: {0}")]
    Transport(String),
    /// The body could not be signed (never for our JSON).
    #[error("the event could not be signed")]
    Sign,
}

impl Webhooks {
    /// Events to `url`, signed with `secret` (`whsec_` + base64, or bare base64).
    ///
    /// # Errors
    /// When the secret is not base64, or the HTTP client cannot be built.
    pub fn new(url: url::Url, secret: &str) -> Result<Self, String> {
        let signer = standardwebhooks::Webhook::new(secret.trim())
            .map_err(|_| "WEBHOOK_SECRET must be whsec_ followed by base64".to_owned())?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            // A redirect would turn the POST into a GET to wherever it points: a 3xx is a
            // failed attempt, retried like any other.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the webhook client cannot be built: {e}"))?;
        Ok(Self {
            url,
            signer: std::sync::Arc::new(signer),
            http,
        })
    }

    /// Signs and POSTs one event, with the `traceparent` of the delivery attempt it reports
    /// (traces on), so the receiver's work joins that attempt's trace.
    ///
    /// # Errors
    /// A [`WebhookError`] when the receiver did not take it.
    pub async fn send(
        &self,
        msg_id: &str,
        body: Vec<u8>,
        traceparent: Option<&str>,
    ) -> Result<(), WebhookError> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signature = self
            .signer
            .sign(msg_id, timestamp, &body)
            .map_err(|_| WebhookError::Sign)?;
        let mut req = self.http.post(self.url.clone());
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        let resp = req
            .header(standardwebhooks::HEADER_WEBHOOK_ID, msg_id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| WebhookError::Transport(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(resp.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let followed = Arc::new(AtomicUsize::new(0));
        let hits = followed.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::any(move || {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async { axum::http::StatusCode::NO_CONTENT }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hooks = Webhooks::new(
            format!("http://{addr}/hook").parse().unwrap(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        let sent = hooks.send("msg_1", b"{}".to_vec(), None).await;
        assert!(matches!(sent, Err(WebhookError::Status(307))), "{sent:?}");
        assert_eq!(
            followed.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }
}
