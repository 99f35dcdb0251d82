//! The Docker runtime against the machine's Docker engine, with the workspace image built
//! by `deploy/workspace/build` around a probe script standing in for codi-monitor (the
//! hub's tests put the real agent in).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use coditect_proto::{Secret, TenantId, WorkspaceId};
use coditect_workspaces::docker::{DockerConfig, DockerRuntime};
use coditect_workspaces::{
    AgentSetup, InstanceRef, Phase, Resources, Runtime, RuntimeError, Scope, Spec,
};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PROBE: &str = r#"#!/bin/sh
cd "$HOME"
id -u > uid
grep CapEff /proc/self/status > caps
cat "$CODITECT_AGENT_KEY_FILE" > key
echo "$CODITECT_WORKSPACE_ID $CODITECT_GENERATION" > identity
test -S "$CODITECT_HUB_SOCKET" && echo yes > socket_seen || echo no > socket_seen
if [ -n "$PROBE_EAT_MEMORY" ]; then exec python3 -c 'x = bytearray(1 << 30); import time; time.sleep(60)'; fi
if [ -n "$PROBE_LISTEN" ]; then python3 -m http.server 8080 >/dev/null 2>&1 & fi
touch started
exec sleep 600
"#;

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// The probe image, built once per run (and by content hash across runs).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("probe");
        std::fs::write(&agent, PROBE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/workspace/build");
        let out = Command::new(script)
            .arg("--agent")
            .arg(&agent)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/workspace/build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

struct Rig {
    dir: tempfile::TempDir,
    scope: Scope,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("agent")).unwrap();
    let listener =
        std::os::unix::net::UnixListener::bind(dir.path().join("agent/hub.sock")).unwrap();
    std::mem::forget(listener);
    let scope = Scope::parse(&format!("t{}-{}", std::process::id(), fastrand_suffix())).unwrap();
    Rig { dir, scope }
}

fn fastrand_suffix() -> String {
    WorkspaceId::new().to_string()[30..].to_string()
}

impl Rig {
    fn runtime_at(&self, socket: &str) -> DockerRuntime {
        DockerRuntime::new(DockerConfig {
            socket: PathBuf::from(socket),
            scope: self.scope.clone(),
            default_image: image().to_string(),
            root: self.dir.path().join("workspaces"),
            timeout: Duration::from_secs(60),
        })
    }

    fn runtime(&self) -> DockerRuntime {
        self.runtime_at("/var/run/docker.sock")
    }

    fn spec(&self, tenant: TenantId, workspace: WorkspaceId, generation: u64) -> Spec {
        Spec {
            instance: InstanceRef { tenant, workspace },
            generation,
            image: None,
            command: None,
            env: Default::default(),
            resources: Resources {
                cpu_millis: Some(500),
                memory_mb: Some(256),
                pids: Some(256),
            },
            network: true,
            agent: AgentSetup {
                key: Secret::new(format!("cdk_test_{workspace}")),
                hub_socket_dir: self.dir.path().join("agent"),
                hub_socket_name: "hub.sock".into(),
                instance_token: format!("tok-{generation}"),
            },
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Whatever a failed test left behind.
        let filter = format!("label=dev.coditect.scope={}", self.scope.as_str());
        let (_, ids) = docker(&["ps", "-aq", "--filter", &filter]);
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", id]);
        }
        let (_, vols) = docker(&["volume", "ls", "-q", "--filter", &filter]);
        for v in vols.split_whitespace() {
            docker(&["volume", "rm", "-f", v]);
        }
        let (_, nets) = docker(&["network", "ls", "-q", "--filter", &filter]);
        for n in nets.split_whitespace() {
            docker(&["network", "rm", n]);
        }
    }
}

async fn wait_started(container: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker(&["exec", container, "test", "-e", "/home/coder/started"]).0 {
        assert!(Instant::now() < deadline, "{container} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(container: &str, file: &str) -> String {
    docker(&["exec", container, "cat", &format!("/home/coder/{file}")]).1
}

#[tokio::test]
async fn a_container_is_unprivileged_limited_labelled_and_keeps_its_home() {
    let rig = rig();
    let rt = rig.runtime();
    let (tenant, ws) = (TenantId::new(), WorkspaceId::new());
    let spec = rig.spec(tenant, ws, 1);
    let first = rt.start(&spec).await.unwrap();
    assert_eq!(first.phase, Phase::Running);
    let c = first.runtime_id.clone();
    wait_started(&c).await;
    assert_eq!(read(&c, "uid"), "1000");
    assert_eq!(
        read(&c, "caps"),
        "CapEff:\t0000000000000000",
        "no capabilities"
    );
    assert_eq!(read(&c, "key"), format!("cdk_test_{ws}"));
    assert_eq!(read(&c, "socket_seen"), "yes");
    let (_, inspect) = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.Privileged}} {{index .Config.Labels \"dev.coditect.workspace\"}} {{index .Config.Labels \"dev.coditect.generation\"}}",
        &c,
    ]);
    assert_eq!(inspect, format!("500000000 268435456 256 false {ws} 1"));

    // Idempotent; a second runtime (a restarted hub) adopts it.
    assert_eq!(rt.start(&spec).await.unwrap().runtime_id, c);
    let listed = rig.runtime().list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].instance, listed[0].generation),
        (spec.instance, 1)
    );

    // Killed: exited; relaunched as the next generation with the same home.
    docker(&["exec", &c, "sh", "-c", "echo kept > /home/coder/work.txt"]);
    docker(&["kill", &c]);
    let seen = rt.inspect(spec.instance).await.unwrap().unwrap();
    assert!(
        matches!(seen.phase, Phase::Exited { oom: false, .. }),
        "{seen:?}"
    );
    let second = rt.start(&rig.spec(tenant, ws, 2)).await.unwrap();
    assert_ne!(second.runtime_id, c, "a new container for a new generation");
    wait_started(&second.runtime_id).await;
    assert_eq!(read(&second.runtime_id, "work.txt"), "kept");
    assert!(read(&second.runtime_id, "identity").ends_with(" 2"));

    // Stop keeps the volume; destroy removes container and volume.
    rt.stop(spec.instance, Duration::from_secs(1))
        .await
        .unwrap();
    let stopped = rt.inspect(spec.instance).await.unwrap().unwrap();
    assert!(matches!(stopped.phase, Phase::Exited { .. }));
    rt.stop(spec.instance, Duration::from_secs(1))
        .await
        .unwrap();
    let volume = rt.volume_name(spec.instance);
    assert!(docker(&["volume", "inspect", &volume]).0);
    rt.destroy(spec.instance).await.unwrap();
    assert!(rt.inspect(spec.instance).await.unwrap().is_none());
    assert!(!docker(&["volume", "inspect", &volume]).0, "volume removed");
    rt.destroy(spec.instance).await.unwrap();
}

#[tokio::test]
async fn tenants_share_no_network() {
    let rig = rig();
    let rt = rig.runtime();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let mut listening = rig.spec(t1, WorkspaceId::new(), 1);
    listening.env.insert("PROBE_LISTEN".into(), "1".into());
    let server = rt.start(&listening).await.unwrap();
    let neighbour = rt
        .start(&rig.spec(t1, WorkspaceId::new(), 1))
        .await
        .unwrap();
    let stranger = rt
        .start(&rig.spec(t2, WorkspaceId::new(), 1))
        .await
        .unwrap();
    for c in [&server, &neighbour, &stranger] {
        wait_started(&c.runtime_id).await;
    }
    let (_, ip) = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &server.runtime_id,
    ]);
    let fetch = format!(
        "import socket; s = socket.create_connection(('{ip}', 8080), timeout=3); print('reached')"
    );
    let reach = |from: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, out) = docker(&["exec", from, "python3", "-c", &fetch]);
            if ok || Instant::now() > deadline {
                return ok && out == "reached";
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(reach(&neighbour.runtime_id), "same tenant, same network");
    let (ok, _) = docker(&["exec", &stranger.runtime_id, "python3", "-c", &fetch]);
    assert!(!ok, "another tenant cannot reach it");
}

#[tokio::test]
async fn faults_have_clear_reasons() {
    let rig = rig();
    // The image is not there: says how to build it.
    let mut spec = rig.spec(TenantId::new(), WorkspaceId::new(), 1);
    spec.image = Some("coditect-workspace:no-such-tag".into());
    let err = rig.runtime().start(&spec).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImageMissing { .. }), "{err}");
    assert!(err.to_string().contains("deploy/workspace/build"), "{err}");

    // The engine does not answer: transient, names the socket.
    let down = rig.runtime_at("/nonexistent/docker.sock");
    let err = down
        .start(&rig.spec(TenantId::new(), WorkspaceId::new(), 1))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/docker.sock"),
        "{err}"
    );
    assert!(down.probe().await.is_err());

    // Over its memory: killed by the kernel, and said so.
    let mut hungry = rig.spec(TenantId::new(), WorkspaceId::new(), 1);
    hungry.resources.memory_mb = Some(64);
    hungry.env.insert("PROBE_EAT_MEMORY".into(), "1".into());
    let rt = rig.runtime();
    rt.start(&hungry).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = rt.inspect(hungry.instance).await.unwrap().unwrap();
        if let Phase::Exited { oom, .. } = seen.phase {
            assert!(oom, "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never killed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A clone the hub made lands in the created container's home volume, owned by the
/// workspace's user, before its first start.
#[tokio::test]
async fn a_home_is_seeded_before_the_first_start() {
    let rig = rig();
    let rt = rig.runtime();
    let (tenant, ws) = (TenantId::new(), WorkspaceId::new());
    let spec = rig.spec(tenant, ws, 1);
    let clone = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(clone.path().join(".git")).unwrap();
    std::fs::write(clone.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(clone.path().join("README.md"), "seeded").unwrap();
    rt.create(&spec).await.unwrap();
    rt.seed_home(spec.instance, clone.path()).await.unwrap();
    let started = rt.start(&spec).await.unwrap();
    wait_started(&started.runtime_id).await;
    assert_eq!(read(&started.runtime_id, "README.md"), "seeded");
    assert_eq!(
        read(&started.runtime_id, ".git/HEAD"),
        "ref: refs/heads/main"
    );
    let (_, owners) = docker(&[
        "exec",
        &started.runtime_id,
        "stat",
        "-c",
        "%u:%g",
        "/home/coder/README.md",
        "/home/coder/.git",
    ]);
    assert_eq!(owners, "1000:1000\n1000:1000");
    rt.destroy(spec.instance).await.unwrap();
}
