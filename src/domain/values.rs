//! One newtype per constrained input. Each `parse` returns a caller-safe message on failure;
//! the walker in `parse.rs` attaches the JSON path.

use super::limits;

/// A customer's phone number as the caller gave it (trimmed), plus its comparison form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber {
    raw: String,
    normalized: String,
}

impl PhoneNumber {
    /// Trims, then checks length, alphabet and digit count.
    ///
    /// # Errors
    /// A message naming the rule broken; it never repeats the number itself.
    pub fn parse(input: &str) -> Result<Self, String> {
        let raw = input.trim();
        let chars = raw.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > limits::PHONE_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::PHONE_MAX_CHARS
            ));
        }
        if raw
            .chars()
            .any(|c| !c.is_ascii_digit() && !limits::PHONE_PUNCTUATION.contains(c))
        {
            return Err("may hold only digits, spaces and + - ( ) .".into());
        }
        let digits = raw.chars().filter(char::is_ascii_digit).count();
        if digits < limits::PHONE_MIN_DIGITS {
            return Err(format!(
                "must hold at least {} digits",
                limits::PHONE_MIN_DIGITS
            ));
        }
        Ok(Self {
            raw: raw.to_owned(),
            normalized: normalize_phone(raw),
        })
    }

    /// The number as the caller wrote it, trimmed: what we store on a new Gorgias customer.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Digits only, a leading `+` kept: what two numbers are compared by.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

/// Digits only, with a leading `+` kept, so `+33 6 12-34` and `+336 1234` compare equal while
/// `+336…` and `0336…` (different numbers for Gorgias) do not.
pub fn normalize_phone(input: &str) -> String {
    let trimmed = input.trim_start();
    let mut out = String::with_capacity(trimmed.len());
    if trimmed.starts_with('+') {
        out.push('+');
    }
    out.extend(trimmed.chars().filter(char::is_ascii_digit));
    out
}

/// A plausible email address: one `@`, a non-empty local part, a domain with a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Checks the address is plausible; deliverability is Gorgias's concern, not ours.
    ///
    /// # Errors
    /// A message naming the rule broken, without the address.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.chars().count() > limits::EMAIL_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::EMAIL_MAX_CHARS
            ));
        }
        let plausible = match input.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
                    && !input.chars().any(|c| c.is_whitespace() || c.is_control())
            }
            None => false,
        };
        if !plausible {
            return Err("must be an email address such as name@example.com".into());
        }
        Ok(Self(input.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A caller's message id: non-empty, at most 255 characters, unique within its ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// # Errors
    /// When empty or too long.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() {
            return Err("must not be empty".into());
        }
        if input.chars().count() > limits::MESSAGE_ID_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::MESSAGE_ID_MAX_CHARS
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// # Errors
    /// When not an absolute http(s) URL with a host, or too long.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.chars().count() > limits::URL_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::URL_MAX_CHARS
            ));
        }
        match url::Url::parse(input) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                // Keep the caller's spelling: Gorgias stores and echoes the URL verbatim.
                Ok(Self(input.to_owned()))
            }
            _ => Err("must be an absolute http or https URL".into()),
        }
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A media type of the form `type/subtype`, optionally with parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType(String);

impl ContentType {
    /// # Errors
    /// When not of the form `type/subtype`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let fail = || Err("must be a media type of the form type/subtype".to_owned());
        if input.chars().count() > limits::CONTENT_TYPE_MAX_CHARS {
            return fail();
        }
        let essence = input.split(';').next().unwrap_or_default();
        let Some((kind, sub)) = essence.split_once('/') else {
            return fail();
        };
        if !is_token(kind) || !is_token(sub) {
            return fail();
        }
        Ok(Self(input.to_owned()))
    }

    /// The media type as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An RFC 9110 token: the characters allowed in a media type's type and subtype.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A file hosted elsewhere that the message refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Where Gorgias (and agents) fetch it.
    pub url: HttpUrl,
    /// File name shown to agents, 1..=255 characters.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its media type.
    pub content_type: ContentType,
}

/// One message of the new ticket, from the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The caller's id, sent to Gorgias as the message `external_id`.
    pub id: MessageId,
    /// Plain-text body (may be blank when `body_html` is not).
    pub body_text: String,
    /// HTML body (may be blank when `body_text` is not).
    pub body_html: String,
    /// Hosted files.
    pub attachments: Vec<Attachment>,
}

/// A ticket to open, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// The customer's phone number.
    pub phone: PhoneNumber,
    /// The customer's email, when the caller knows it.
    pub email: Option<Email>,
    /// 1..=500 messages with distinct ids.
    pub messages: Vec<NewMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_normalise_to_digits_with_a_leading_plus() {
        let p = PhoneNumber::parse("  +33 (6) 12-34.56 78 ").unwrap();
        assert_eq!(p.as_str(), "+33 (6) 12-34.56 78");
        assert_eq!(p.normalized(), "+3361234567 8".replace(' ', ""));
        assert_eq!(normalize_phone("0719908543"), "0719908543");
    }

    #[test]
    fn phone_numbers_need_five_digits_and_a_clean_alphabet() {
        assert!(PhoneNumber::parse("1234").is_err());
        assert!(PhoneNumber::parse("12345").is_ok());
        assert!(PhoneNumber::parse("12345x").is_err());
        assert!(PhoneNumber::parse("   ").is_err());
        assert!(PhoneNumber::parse(&"1".repeat(33)).is_err());
        assert!(PhoneNumber::parse(&"1".repeat(32)).is_ok());
    }

    #[test]
    fn emails_must_be_plausible() {
        for ok in ["a@b.co", "first.last+tag@sub.example.com"] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "@b.co", "a@b", "a@@b.co", "a@b@c.co", "a@.b.co", "a@b.co.", "a b@c.co",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(320));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(HttpUrl::parse("https://example.com/f.png").is_ok());
        assert!(HttpUrl::parse("http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "ftp://example.com/x",
            "/relative",
            "example.com/x",
            "https://",
            "",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_types_are_type_slash_subtype() {
        for ok in [
            "image/png",
            "application/vnd.ms-excel",
            "text/plain; charset=utf-8",
        ] {
            assert!(ContentType::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["image", "image/", "/png", "image/png/x", "ima ge/png", ""] {
            assert!(ContentType::parse(bad).is_err(), "{bad}");
        }
    }
}
