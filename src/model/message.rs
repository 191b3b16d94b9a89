//! What the gateway sends, as validated values: if one of these exists, it
//! obeys Instagram's documented limits. Free of protobuf and HTTP types.

/// Instagram's documented limits.
pub mod limits {
    /// Message text, in UTF-8 bytes (not characters).
    pub const TEXT_BYTES: usize = 1000;
    pub const QUICK_REPLIES: usize = 13;
    pub const QUICK_REPLY_TITLE_CHARS: usize = 20;
    pub const TEMPLATE_ELEMENTS: usize = 10;
    pub const ATTACHMENTS: usize = 10;
    pub const TITLE_CHARS: usize = 80;
    pub const BUTTONS: usize = 3;
    /// Not an Instagram limit: ids are far shorter; this keeps junk out.
    pub const ID_CHARS: usize = 64;
    /// Generous bound on payloads and ids echoed back by Instagram.
    pub const PAYLOAD_BYTES: usize = 1000;
    pub const URL_BYTES: usize = 2048;
}

/// Why a value was refused: a sentence for the caller.
pub type Invalid = String;

/// An Instagram-scoped user id (IGSID): the numeric `sender.id` of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Igsid(String);

impl Igsid {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        parse_numeric_id(s, "an IGSID").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of a comment on one of the account's posts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommentId(String);

impl CommentId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        parse_numeric_id(s, "a comment id").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_numeric_id(s: &str, what: &str) -> Result<String, Invalid> {
    if s.is_empty() {
        return Err(format!("must be {what}: required"));
    }
    if s.len() > limits::ID_CHARS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "must be {what}: ASCII digits only (the numeric id from a webhook, not a username)"
        ));
    }
    Ok(s.to_owned())
}

/// A caller's idempotency key (AIP-155): 1 to 36 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_CHARS: usize = 36;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > Self::MAX_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "must be 1 to {} printable ASCII characters (a UUID is recommended)",
                Self::MAX_CHARS
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An opaque id Graph gave us (message, attachment, post). Checked only for
/// being present, short and free of control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GraphId(String);

impl GraphId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err("required".into());
        }
        if s.len() > limits::PAYLOAD_BYTES || s.chars().any(char::is_control) {
            return Err("must be an id Instagram gave you (printable, at most 1000 bytes)".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Text shown to a person may hold tabs and line breaks, but no other
/// control characters (they render as garbage or hide content).
fn no_control_characters(s: &str) -> Result<(), Invalid> {
    match s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(format!(
            "must not contain control characters (found U+{:04X}); \\t, \\n and \\r are allowed",
            c as u32
        )),
        None => Ok(()),
    }
}

/// The reactions Instagram documents for `sender_action: react`.
pub const REACTIONS: [&str; 1] = ["love"];

/// Message text: 1 to 1000 UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > limits::TEXT_BYTES {
            return Err(format!(
                "is {} UTF-8 bytes; Instagram allows at most {} bytes",
                s.len(),
                limits::TEXT_BYTES
            ));
        }
        no_control_characters(s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute http or https URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() > limits::URL_BYTES {
            return Err(format!("must be at most {} bytes", limits::URL_BYTES));
        }
        // The URL parser forgives tabs and newlines (it drops them) and
        // trims spaces, but the string is what goes to Graph: refused here.
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must be a URL without spaces or control characters (encode them)".into());
        }
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Ok(Self(s.to_owned()))
            }
            _ => Err("must be an absolute http:// or https:// URL".into()),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short label (titles, subtitles), measured in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(String);

impl Label {
    pub fn parse(s: &str, max_chars: usize) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err("required".into());
        }
        let chars = s.chars().count();
        if chars > max_chars {
            return Err(format!(
                "is {chars} characters; at most {max_chars} allowed"
            ));
        }
        no_control_characters(s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Opaque data returned to us in a later webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err("required".into());
        }
        if s.len() > limits::PAYLOAD_BYTES {
            return Err(format!("must be at most {} bytes", limits::PAYLOAD_BYTES));
        }
        no_control_characters(s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    User(Igsid),
    /// A private reply to a comment.
    Comment(CommentId),
}

impl Recipient {
    /// For logs: the id, whichever kind it is.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::User(id) => id.as_str(),
            Recipient::Comment(id) => id.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    Url(HttpUrl),
    /// An attachment uploaded earlier.
    Id(GraphId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub kind: AttachmentKind,
    pub source: MediaSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickReply {
    pub title: Label,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Button {
    WebUrl { title: Label, url: HttpUrl },
    Postback { title: Label, payload: Payload },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateElement {
    pub title: Label,
    pub subtitle: Option<Label>,
    pub image_url: Option<HttpUrl>,
    pub default_action_url: Option<HttpUrl>,
    pub buttons: Vec<Button>,
}

/// Exactly one kind of content per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text {
        text: Text,
        quick_replies: Vec<QuickReply>,
    },
    /// One attachment of any kind, or several images.
    Attachments(Vec<Attachment>),
    LikeHeartSticker,
    /// One of the account's own posts.
    MediaShare {
        post_id: GraphId,
    },
    GenericTemplate(Vec<TemplateElement>),
}

/// A message ready to be sent: every limit has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub recipient: Recipient,
    pub content: Content,
    pub reply_to: Option<GraphId>,
    /// Sent with the HUMAN_AGENT tag (7-day window).
    pub human_agent: bool,
}

/// What a message and its echo have in common, so that a send whose Graph
/// answer was lost can be matched with the echo Instagram sends of it: its
/// text, else the kinds of its attachments. `None` for content an echo is
/// not known to repeat (stickers, shares, templates): never matched.
pub fn content_key<'a>(
    text: &str,
    attachment_kinds: impl Iterator<Item = &'a str>,
) -> Option<String> {
    if !text.is_empty() {
        return Some(format!("text:{text}"));
    }
    let kinds: Vec<&str> = attachment_kinds.collect();
    (!kinds.is_empty()).then(|| format!("attachments:{}", kinds.join(",")))
}

impl OutgoingMessage {
    /// What its echo will repeat (see [`content_key`]).
    pub fn content_key(&self) -> Option<String> {
        match &self.content {
            Content::Text { text, .. } => content_key(text.as_str(), std::iter::empty()),
            Content::Attachments(list) => content_key(
                "",
                list.iter().map(|a| match a.kind {
                    AttachmentKind::Image => "image",
                    AttachmentKind::Video => "video",
                    AttachmentKind::Audio => "audio",
                    AttachmentKind::File => "file",
                }),
            ),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderAction {
    TypingOn,
    TypingOff,
    MarkSeen,
    React {
        message_id: GraphId,
        reaction: String,
    },
    Unreact {
        message_id: GraphId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAction {
    pub recipient: Igsid,
    pub action: SenderAction,
}

/// What Graph answered to a successful send.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// Absent for sender actions, which Graph answers with the recipient only.
    pub message_id: Option<String>,
    pub recipient_id: String,
    pub graph_calls: u32,
    /// How long the send waited for the account's pace.
    #[serde(default)]
    pub queued_ms: u64,
}

/// Who waits for a send. Stored as `interactive` or `bulk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A person is waiting: takes budget first.
    #[default]
    Interactive,
    /// A broadcast: uses only the budget interactive sends leave free.
    Bulk,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Bulk => "bulk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_raw_newline_tab_or_space_is_refused_not_forwarded() {
        for bad in [
            "https://example.com/a\nb",
            "https://example.com/a\r\nX-Injected: 1",
            "https://exam\tple.com/",
            " https://example.com/",
            "https://example.com/a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?}");
        }
        assert!(HttpUrl::parse("https://example.com/a%20b?q=1#f").is_ok());
    }

    #[test]
    fn text_is_limited_in_bytes_not_characters() {
        assert!(Text::parse(&"a".repeat(1000)).is_ok());
        assert!(Text::parse(&"a".repeat(1001)).is_err());
        // 333 euro signs are 999 bytes; 334 are 1002.
        assert!(Text::parse(&"€".repeat(333)).is_ok());
        let err = Text::parse(&"€".repeat(334)).unwrap_err();
        assert!(err.contains("1002"), "{err}");
        assert!(Text::parse("").is_err());
    }

    #[test]
    fn igsids_are_ascii_digits() {
        assert!(Igsid::parse("17841400000000000").is_ok());
        assert!(Igsid::parse("").is_err());
        assert!(Igsid::parse("john.doe").is_err());
        assert!(Igsid::parse("1784 1400").is_err());
        assert!(Igsid::parse("١٢٣").is_err(), "non-ASCII digits");
        assert!(Igsid::parse(&"1".repeat(65)).is_err());
    }

    #[test]
    fn urls_must_be_http_or_https() {
        assert!(HttpUrl::parse("https://example.com/a.png").is_ok());
        assert!(HttpUrl::parse("http://example.com").is_ok());
        assert!(HttpUrl::parse("ftp://example.com/a.png").is_err());
        assert!(HttpUrl::parse("javascript:alert(1)").is_err());
        assert!(HttpUrl::parse("/relative.png").is_err());
        assert!(HttpUrl::parse("").is_err());
    }

    #[test]
    fn labels_count_characters() {
        assert!(Label::parse(&"é".repeat(20), 20).is_ok());
        assert!(Label::parse(&"é".repeat(21), 20).is_err());
        assert!(Label::parse("", 20).is_err());
    }
}
