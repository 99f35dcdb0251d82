//! How chunk summaries are kept in columns, the same on every engine.

use coditect_proto::SessionId;
use uuid::Uuid;

pub(crate) fn skip_to_blob(skip: &[u32]) -> Option<Vec<u8>> {
    (!skip.is_empty()).then(|| skip.iter().flat_map(|p| p.to_le_bytes()).collect())
}

pub(crate) fn skip_from_blob(bytes: Option<Vec<u8>>) -> Vec<u32> {
    bytes
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn sessions_to_blob(sessions: &Option<Vec<SessionId>>) -> Option<Vec<u8>> {
    sessions
        .as_ref()
        .map(|s| s.iter().flat_map(|id| *id.as_uuid().as_bytes()).collect())
}

pub(crate) fn sessions_from_blob(bytes: Option<Vec<u8>>) -> Option<Vec<SessionId>> {
    bytes.map(|b| {
        b.chunks_exact(16)
            .filter_map(|c| Uuid::from_slice(c).ok())
            .map(SessionId::from_uuid)
            .collect()
    })
}

pub(crate) fn components_to_text(c: &Option<Vec<String>>) -> Option<String> {
    c.as_ref().map(|c| c.join("\n"))
}

pub(crate) fn components_from_text(t: Option<String>) -> Option<Vec<String>> {
    t.map(|t| t.split('\n').map(str::to_string).collect())
}
