//! The id of the request a task is serving, readable anywhere below the handler (error bodies
//! are built far from it). Set by the HTTP layer's outermost middleware.

tokio::task_local! {
    /// The id of the request this task is serving.
    pub(crate) static REQUEST_ID: String;
}

/// The current request's id, or `""` outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}
