//! What a tail subscriber wants: the search filters, with text as a simple contains.

use coditect_proto::{SessionId, WorkspaceId};
use coditect_store::LogRecord;
use coditect_store::logs::search::LevelFilter;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub workspace: Option<WorkspaceId>,
    pub level: LevelFilter,
    pub component: Option<String>,
    pub session: Option<SessionId>,
    /// Lower-cased; matched against the lower-cased message.
    pub contains: Option<String>,
}

impl Filter {
    pub fn matches(&self, workspace: WorkspaceId, r: &LogRecord) -> bool {
        self.workspace.is_none_or(|w| w == workspace)
            && self.level.matches(r.level)
            && self.component.as_deref().is_none_or(|c| c == r.component)
            && self.session.is_none_or(|s| Some(s) == r.session_id)
            && self
                .contains
                .as_deref()
                .is_none_or(|t| r.message.to_lowercase().contains(t))
    }
}
