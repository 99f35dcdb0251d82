//! The process runtime with real bubblewrap sandboxes. The "agent" here is a shell script
//! standing in for codi-monitor (the hub's tests run the real one): it writes what it
//! sees of the sandbox into the home, then waits.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use coditect_proto::{Secret, TenantId, WorkspaceId};
use coditect_workspaces::process::{ProcessConfig, ProcessRuntime, Sandbox};
use coditect_workspaces::{AgentSetup, InstanceRef, Phase, Resources, Runtime, Scope, Spec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROBE: &str = r#"#!/bin/sh
# What a workspace sees, written into its home for the test to read.
cd "$HOME"
id -u > uid
hostname > hostname
cat /etc/shadow > shadow 2>&1
ls /proc | grep -c '^[0-9]' > procs
if touch /usr/probe 2>/dev/null; then echo writable; else echo read-only; fi > usr_write
cat "$CODITECT_AGENT_KEY_FILE" > key
ls "$(dirname "$HOME")" > homes
ls / > root
cat /proc/self/limits > limits
ls /sys/class/net 2>/dev/null > net || cat /proc/net/dev > net
echo "$CODITECT_WORKSPACE_ID $CODITECT_GENERATION $CODITECT_INSTANCE" > identity
test -S "$CODITECT_HUB_SOCKET" && echo yes > socket_seen || echo no > socket_seen
echo "$$" > started
exec sleep 600
"#;

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket_dir: PathBuf,
    agent: PathBuf,
    scope: Scope,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("workspaces");
    let socket_dir = dir.path().join("agent");
    std::fs::create_dir_all(&socket_dir).unwrap();
    // A socket the workspace should see through its mount.
    let listener = std::os::unix::net::UnixListener::bind(socket_dir.join("hub.sock")).unwrap();
    std::mem::forget(listener);
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, PROBE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let scope = Scope::parse(&format!("t{}", std::process::id())).unwrap();
    Rig {
        _dir: dir,
        root,
        socket_dir,
        agent,
        scope,
    }
}

impl Rig {
    fn runtime(&self) -> ProcessRuntime {
        ProcessRuntime::new(ProcessConfig {
            root: self.root.clone(),
            scope: self.scope.clone(),
            sandbox: Sandbox::Bubblewrap(Sandbox::find_bubblewrap().expect("bwrap installed")),
            agent_binary: self.agent.clone(),
            cgroups: None,
        })
        .unwrap()
    }

    fn spec(&self, workspace: WorkspaceId, generation: u64) -> Spec {
        Spec {
            instance: InstanceRef {
                tenant: TenantId::new(),
                workspace,
            },
            generation,
            image: None,
            command: None,
            env: Default::default(),
            resources: Resources {
                cpu_millis: None,
                memory_mb: Some(2048),
                pids: Some(512),
            },
            network: false,
            agent: AgentSetup {
                key: Secret::new(format!("cdk_test_{workspace}")),
                hub_socket_dir: self.socket_dir.clone(),
                hub_socket_name: "hub.sock".into(),
                instance_token: format!("tok-{generation}"),
            },
        }
    }
}

fn wait_for(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn a_sandbox_sees_its_home_and_little_else() {
    let rig = rig();
    let rt = rig.runtime();
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    let (spec_a, spec_b) = (rig.spec(a, 1), rig.spec(b, 1));
    rt.start(&spec_a).await.unwrap();
    rt.start(&spec_b).await.unwrap();
    let home = rt.home(a);
    wait_for(&home.join("started"));
    let read = |name: &str| std::fs::read_to_string(home.join(name)).unwrap();
    assert_eq!(read("uid").trim(), "1000");
    assert!(read("hostname").starts_with("ws-"));
    assert!(
        !read("shadow").contains("root:"),
        "masked: {}",
        read("shadow")
    );
    let procs: u32 = read("procs").trim().parse().unwrap();
    assert!(procs <= 6, "its own PID namespace: {procs} processes");
    assert_eq!(read("usr_write").trim(), "read-only");
    assert_eq!(read("key"), format!("cdk_test_{a}"));
    assert_eq!(read("homes").trim(), "coder", "no other home is visible");
    assert!(
        !read("root").contains("root\n"),
        "no /root: {}",
        read("root")
    );
    assert!(read("identity").starts_with(&format!("{a} 1 tok-1")));
    assert_eq!(read("socket_seen").trim(), "yes");
    let limits = read("limits");
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("Max address space").contains(&(2048u64 << 20).to_string()),
        "{limits}"
    );
    assert!(line("Max processes").contains("512"), "{limits}");
    let net = read("net");
    assert!(
        !net.contains("eth") && net.contains("lo"),
        "no network: {net}"
    );
    // The other workspace's home holds its own files only.
    wait_for(&rt.home(b).join("started"));
    assert_eq!(
        std::fs::read_to_string(rt.home(b).join("key")).unwrap(),
        format!("cdk_test_{b}")
    );
    for w in [a, b] {
        rt.destroy(InstanceRef {
            tenant: TenantId::new(),
            workspace: w,
        })
        .await
        .unwrap();
    }
    assert!(!home.exists(), "destroy removes the home");
}

#[tokio::test]
async fn start_is_idempotent_a_new_hub_adopts_and_the_home_survives_a_kill() {
    let rig = rig();
    let rt = rig.runtime();
    let ws = WorkspaceId::new();
    let spec = rig.spec(ws, 3);
    let first = rt.start(&spec).await.unwrap();
    assert_eq!(first.phase, Phase::Running);
    let home = rt.home(ws);
    wait_for(&home.join("started"));
    std::fs::write(home.join("work.txt"), "kept").unwrap();

    // Starting again, or from a second runtime (a restarted hub), finds the same one.
    let again = rt.start(&spec).await.unwrap();
    assert_eq!(again.runtime_id, first.runtime_id, "never a second copy");
    let other_hub = rig.runtime();
    let listed = other_hub.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].instance.workspace, ws);
    assert_eq!(listed[0].instance.tenant, spec.instance.tenant);
    assert_eq!(listed[0].generation, 3);
    let adopted = other_hub.start(&spec).await.unwrap();
    assert_eq!(adopted.runtime_id, first.runtime_id);

    // SIGKILL to the whole sandboxed tree: nothing of it is left, the home is.
    let pid: i32 = first.runtime_id.parse().unwrap();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", child])
            .status();
    }
    // This runtime started it, so it sees it exit (another only sees it gone).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = rt.inspect(spec.instance).await.unwrap().map(|o| o.phase);
        if matches!(seen, Some(Phase::Exited { .. })) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox outlived SIGKILL: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(other_hub.list().await.unwrap().is_empty());

    // A relaunch (next generation) on the same home.
    std::fs::remove_file(home.join("started")).unwrap();
    let relaunched = rt.start(&rig.spec(ws, 4)).await.unwrap();
    assert_ne!(relaunched.runtime_id, first.runtime_id);
    wait_for(&home.join("started"));
    assert_eq!(
        std::fs::read_to_string(home.join("work.txt")).unwrap(),
        "kept"
    );
    assert!(
        std::fs::read_to_string(home.join("identity"))
            .unwrap()
            .contains(" 4 tok-4")
    );

    // Stop: gone, home kept; stop again is fine.
    rt.stop(spec.instance, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(rt.list().await.unwrap().is_empty());
    rt.stop(spec.instance, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(home.join("work.txt").exists());
    rt.destroy(spec.instance).await.unwrap();
    rt.destroy(spec.instance).await.unwrap();
}

#[tokio::test]
async fn without_bubblewrap_the_runtime_refuses_to_start() {
    let rig = rig();
    let err = ProcessRuntime::new(ProcessConfig {
        root: rig.root.clone(),
        scope: rig.scope.clone(),
        sandbox: Sandbox::Bubblewrap(PathBuf::from("/nonexistent/bwrap")),
        agent_binary: rig.agent.clone(),
        cgroups: None,
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("--workspace-sandbox none"), "{err}");
}

/// With a cgroup v2 subtree the sandbox's outer process enters its workspace's cgroup
/// before it becomes bubblewrap, and the cgroup carries the spec's limits. This machine's
/// cgroup v2 hierarchy has no controllers (cgroup v1 holds them), so the subtree here is
/// a directory of plain files standing in for cgroupfs: what is tested is what the runtime
/// writes and that the sandbox still starts through the wrapper, not the kernel's
/// enforcement.
#[tokio::test]
async fn limits_go_to_a_delegated_cgroup_when_there_is_one() {
    use coditect_workspaces::cgroup::Cgroups;
    let rig = rig();
    let fake = tempfile::tempdir().unwrap();
    assert!(
        Cgroups::delegated(fake.path()).is_err(),
        "not a cgroup directory"
    );
    std::fs::write(fake.path().join("cgroup.subtree_control"), "cpu io").unwrap();
    let err = Cgroups::delegated(fake.path()).unwrap_err();
    assert!(err.contains("controller is not enabled"), "{err}");
    std::fs::write(
        fake.path().join("cgroup.subtree_control"),
        "cpu io memory pids",
    )
    .unwrap();
    let cgroups = Cgroups::delegated(fake.path()).unwrap();
    let rt = ProcessRuntime::new(ProcessConfig {
        root: rig.root.clone(),
        scope: rig.scope.clone(),
        sandbox: Sandbox::Bubblewrap(Sandbox::find_bubblewrap().expect("bwrap installed")),
        agent_binary: rig.agent.clone(),
        cgroups: Some(cgroups),
    })
    .unwrap();
    assert!(rt.limits().starts_with("cgroup v2 at"), "{}", rt.limits());
    let ws = WorkspaceId::new();
    let mut spec = rig.spec(ws, 1);
    spec.resources.cpu_millis = Some(1500);
    let started = rt.start(&spec).await.unwrap();
    wait_for(&rt.home(ws).join("started"));
    let dir = fake
        .path()
        .join(format!("coditect-{}-{ws}", rig.scope.as_str()));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("memory.max"), (2048u64 << 20).to_string());
    assert_eq!(read("pids.max"), "512");
    assert_eq!(read("cpu.max"), "150000 100000");
    assert_eq!(
        read("cgroup.procs").trim(),
        started.runtime_id,
        "the sandbox's outer process entered it (and exec'd bubblewrap in place)"
    );
    let limits = std::fs::read_to_string(rt.home(ws).join("limits")).unwrap();
    assert!(
        limits.contains("Max address space         unlimited"),
        "no rlimit when a cgroup holds the limits: {limits}"
    );
    rt.destroy(spec.instance).await.unwrap();
}
