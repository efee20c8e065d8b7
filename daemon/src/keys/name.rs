//! Key labels: the protocol's naming rules, used by the daemon on every request.

pub use harpocrates_protocol::label::{MAX_LABEL_LEN, validate_label};
