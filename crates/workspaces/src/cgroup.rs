//! Resource limits of the process runtime in a delegated cgroup v2 subtree: one child
//! cgroup per workspace (`coditect-<scope>-<workspace>`) with `memory.max` (and no swap),
//! `pids.max` and `cpu.max` from the spec. The sandbox's outer process puts itself in it
//! before it becomes bubblewrap (a `sh` that writes its own pid to `cgroup.procs`, then
//! `exec`s), so nothing it starts is ever outside.
//!
//! "Delegated": the hub may make directories in the subtree and its
//! `cgroup.subtree_control` enables `cpu`, `memory` and `pids` for them (systemd's
//! `Delegate=yes` gives a service such a subtree; an administrator can make one with
//! `mkdir` and `echo "+cpu +memory +pids" > cgroup.subtree_control` in the parent). Without
//! one the runtime falls back to rlimits and says so.

use crate::{RuntimeError, Scope, Spec};
use std::path::{Path, PathBuf};

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// `cpu.max`'s period, in microseconds.
const PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// The subtree at `root`, if it is delegated: the controllers enabled for its
    /// children (enabling them when they are available but off) and a child can be made.
    pub fn delegated(root: &Path) -> Result<Cgroups, String> {
        let control = root.join("cgroup.subtree_control");
        let enabled = |path: &Path| {
            std::fs::read_to_string(path)
                .map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .map_err(|e| format!("{} is not a cgroup v2 directory: {e}", root.display()))
        };
        let mut on = enabled(&control)?;
        let missing: Vec<_> = CONTROLLERS
            .iter()
            .filter(|c| !on.iter().any(|o| o == *c))
            .collect();
        if !missing.is_empty() {
            let ask: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
            let _ = std::fs::write(&control, ask.join(" "));
            on = enabled(&control)?;
        }
        if let Some(c) = CONTROLLERS.iter().find(|c| !on.iter().any(|o| o == *c)) {
            return Err(format!(
                "{}: the {c} controller is not enabled for its children (cgroup.subtree_control)",
                root.display()
            ));
        }
        let probe = root.join(format!("coditect-probe-{}", std::process::id()));
        std::fs::create_dir(&probe)
            .map_err(|e| format!("cannot make a cgroup in {}: {e}", root.display()))?;
        let _ = std::fs::remove_dir(&probe);
        Ok(Cgroups {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup of one workspace.
    pub fn dir(&self, scope: &Scope, spec_workspace: &str) -> PathBuf {
        self.root
            .join(format!("coditect-{}-{spec_workspace}", scope.as_str()))
    }

    /// Makes (or reuses) the workspace's cgroup and writes its limits; its path.
    pub fn prepare(&self, scope: &Scope, spec: &Spec) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(scope, &spec.instance.workspace.to_string());
        let io = |what: &str, e: std::io::Error| {
            RuntimeError::Failed(format!("cannot {what} in {}: {e}", dir.display()))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("make the workspace's cgroup", e)),
        }
        let r = &spec.resources;
        let memory = r.memory_mb.map_or("max".to_string(), |mb| {
            mb.saturating_mul(1 << 20).to_string()
        });
        let pids = r.pids.map_or("max".to_string(), |p| p.to_string());
        let cpu = r.cpu_millis.map_or(format!("max {PERIOD_US}"), |m| {
            format!("{} {PERIOD_US}", u64::from(m) * PERIOD_US / 1000)
        });
        for (file, value) in [
            ("memory.max", memory.as_str()),
            ("pids.max", pids.as_str()),
            ("cpu.max", cpu.as_str()),
        ] {
            std::fs::write(dir.join(file), value).map_err(|e| io(&format!("write {file}"), e))?;
        }
        // No swapping past the memory limit, where the kernel has swap accounting.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            let _ = std::fs::write(swap, "0");
        }
        Ok(dir)
    }

    /// Removes a workspace's cgroup once nothing is in it (an error is left for the next
    /// destroy or sweep: a cgroup with processes cannot go).
    pub fn remove(&self, scope: &Scope, workspace: &str) {
        let _ = std::fs::remove_dir(self.dir(scope, workspace));
    }

    /// The words for `limits()`.
    pub fn describe(&self) -> String {
        format!(
            "cgroup v2 at {} (memory without swap, pids, cpu)",
            self.root.display()
        )
    }
}

/// The argv prefix that enters `cgroup` and then runs the rest.
pub fn enter_argv(cgroup: &Path) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.into(),
        cgroup.display().to_string(),
    ]
}
