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
    /// Checks length, alphabet and digit count on the value as sent, then keeps it trimmed of
    /// spaces. (Measured before trimming, so the rule is exactly the OpenAPI schema's
    /// `maxLength` and `pattern`; padding a number past 32 characters is refused.)
    ///
    /// # Errors
    /// A message naming the rule broken; it never repeats the number itself.
    pub fn parse(input: &str) -> Result<Self, String> {
        let chars = input.chars().count();
        if input.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if chars > limits::PHONE_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::PHONE_MAX_CHARS
            ));
        }
        let raw = input.trim_matches(' ');
        if input
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
        // The schema's pattern, by hand: `local@label(.label)+`, no whitespace or control
        // characters anywhere.
        let plausible = match input.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.split('.').count() >= 2
                    && domain.split('.').all(|label| !label.is_empty())
                    && !input.chars().any(|c| is_pattern_space(c) || c.is_control())
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
    /// The rule is the OpenAPI schema's pattern, written out: `http` or `https` (any case),
    /// `://`, a host of letters, digits, dots and hyphens, an optional port, then an optional
    /// path, query or fragment without whitespace. The caller's spelling is kept: Gorgias
    /// stores and echoes the URL verbatim.
    ///
    /// # Errors
    /// When not of that form, or too long.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.chars().count() > limits::URL_MAX_CHARS {
            return Err(format!(
                "must be at most {} characters",
                limits::URL_MAX_CHARS
            ));
        }
        if is_http_url(input) {
            Ok(Self(input.to_owned()))
        } else {
            Err("must be an absolute http or https URL".into())
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

/// `^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#]\S*)?$`, by hand.
fn is_http_url(s: &str) -> bool {
    let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return false;
    };
    let host_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    if host_end == 0 {
        return false;
    }
    let mut tail = &rest[host_end..];
    if let Some(after) = tail.strip_prefix(':') {
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        if !(1..=5).contains(&digits) {
            return false;
        }
        tail = &after[digits..];
    }
    tail.is_empty() || (tail.starts_with(['/', '?', '#']) && !tail.chars().any(is_pattern_space))
}

/// Whitespace as the OpenAPI schema's patterns mean it (`\s` in ECMA-262 regular
/// expressions), so a rule written by hand here and its pattern there accept the same strings.
/// Differs from `char::is_whitespace` on U+0085 (not space here) and U+FEFF (space here).
pub(crate) fn is_pattern_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
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
        assert!(
            PhoneNumber::parse("\t0612345678").is_err(),
            "only spaces pad a number"
        );
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
        assert!(HttpUrl::parse("HTTPS://example.com?q=1#f").is_ok());
        for bad in [
            "ftp://example.com/x",
            "/relative",
            "example.com/x",
            "https://",
            "",
            "http://exa mple.com",
            "http://host:/x",
            "http://host:123456",
            "http://host/a b",
            "http://[::1]/",
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
