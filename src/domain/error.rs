//! What went wrong with a caller's body, field by field.

use serde::Serialize;

/// Whether a problem is about the body's shape (JSON types, unknown or missing fields: 400)
/// or about a value that has the right type but breaks a rule (422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Wrong JSON type, unknown field, missing required field.
    Shape,
    /// The value is of the right type but not acceptable.
    Rule,
}

/// One problem with one field. Messages are safe to show to callers: they never echo the
/// value, which may be a customer's phone number or email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `ticket.messages[1].attachments[0].url`.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
    /// Shape or rule; decides 400 versus 422.
    #[serde(skip)]
    #[schema(ignore)]
    pub problem: Problem,
}

/// Every problem found in one body, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("the request body has {} problem(s)", .errors.len())]
pub struct ValidationErrors {
    /// The problems, never empty when returned as an error.
    pub errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// True when any problem is about the body's shape rather than a value's rules.
    pub fn is_shape(&self) -> bool {
        self.errors.iter().any(|e| e.problem == Problem::Shape)
    }

    pub(crate) fn shape(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
            problem: Problem::Shape,
        });
    }
}
