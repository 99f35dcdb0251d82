//! Log entries shaped like ADR-029's `LogEntry` (timestamp, level, component, message,
//! metadata) with the keys every stored row carries (tenant, workspace, id).

use uuid::Uuid;

pub struct Row {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub ts_micros: i64,
    pub level: i16,
    pub component: &'static str,
    pub message: String,
    pub metadata: String,
    pub metadata_json: serde_json::Value,
}

/// The components generated entries cycle through.
pub const COMPONENTS: [&str; 8] = [
    "api",
    "auth",
    "file-monitor",
    "agent",
    "orchestrator",
    "proxy",
    "cli",
    "sync",
];

/// `n` rows, deterministic apart from their ids, ~250 bytes each.
pub fn generate(n: usize) -> Vec<Row> {
    let tenant_id = Uuid::now_v7();
    let workspace_id = Uuid::now_v7();
    let start = chrono::Utc::now().timestamp_micros();
    (0..n)
        .map(|i| {
            let metadata = format!(
                "{{\"file\":\"src/module_{}.rs\",\"line\":{},\"user\":\"dev{}\"}}",
                i % 40,
                i % 900,
                i % 12
            );
            Row {
            tenant_id,
            id: Uuid::now_v7(),
            workspace_id,
            ts_micros: start + i as i64,
            level: (i % 5) as i16 + 1,
            component: COMPONENTS[i % COMPONENTS.len()],
            message: format!(
                "request {i} handled for workspace session, status=200, latency_ms={}, bytes={}",
                i % 97,
                (i * 31) % 65536
            ),
            metadata_json: serde_json::from_str(&metadata).unwrap_or_default(),
            metadata,
        }})
        .collect()
}
