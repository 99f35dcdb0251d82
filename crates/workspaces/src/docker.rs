//! The Docker runtime, through the Docker Engine API (bollard): one container per
//! workspace, a named volume for its home (it survives stop, start, a crash and the
//! container's re-creation), a network per tenant (containers of two tenants share no
//! network), labels on all of them.
//!
//! Containers run as uid 1000 with every capability dropped and `no-new-privileges`,
//! under Docker's init (so zombies are reaped), with the CPU, memory and pids limits of
//! the spec. The agent reaches the hub through the hub's socket directory, bind-mounted
//! read-only (containers cannot reach the host's network here, nor need to).

use crate::{
    HubAddress, InstanceRef, Observed, Phase, Runtime, RuntimeError, RuntimeKind, Scope, Spec,
    agent_env, inside, labels,
};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The engine's socket (`/var/run/docker.sock`).
    pub socket: PathBuf,
    pub scope: Scope,
    /// The image when a spec names none.
    pub default_image: String,
    /// Where the hub keeps per-workspace secrets on this host (`data_dir/workspaces`).
    pub root: PathBuf,
    /// How long one Engine API call may take.
    pub timeout: Duration,
}

pub struct DockerRuntime {
    config: DockerConfig,
    /// Connected and version-negotiated on first use, so a daemon that is down when the
    /// hub starts is picked up once it is back.
    client: OnceCell<Docker>,
    /// Told when a container of this scope dies (the engine's event stream, followed by a
    /// task started on the first [`Runtime::exits`]).
    exited: std::sync::Arc<tokio::sync::Notify>,
    events: std::sync::Once,
}

impl DockerRuntime {
    pub fn new(config: DockerConfig) -> DockerRuntime {
        DockerRuntime {
            config,
            client: OnceCell::new(),
            exited: Default::default(),
            events: std::sync::Once::new(),
        }
    }

    /// Follows the engine's `die` events of this scope's containers, reconnecting after a
    /// second whenever the stream ends (an engine restart, the client's timeout).
    async fn follow_exits(config: DockerConfig, exited: std::sync::Arc<tokio::sync::Notify>) {
        use futures_util::StreamExt;
        let socket = config.socket.display().to_string();
        loop {
            if let Ok(docker) =
                Docker::connect_with_unix(&socket, 3600, bollard::API_DEFAULT_VERSION)
            {
                let filters = HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    ("event".to_string(), vec!["die".to_string()]),
                    (
                        "label".to_string(),
                        vec![format!("{}={}", labels::SCOPE, config.scope.as_str())],
                    ),
                ]);
                let mut stream = docker.events(Some(bollard::query_parameters::EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                }));
                while let Some(Ok(_)) = stream.next().await {
                    exited.notify_one();
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn docker(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let socket = self.config.socket.display().to_string();
                let docker = Docker::connect_with_unix(
                    &socket,
                    self.config.timeout.as_secs().max(1),
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unavailable(&self.config, e))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unavailable(&self.config, e))
            })
            .await
    }

    fn container_name(&self, instance: InstanceRef) -> String {
        format!(
            "coditect-{}-{}",
            self.config.scope.as_str(),
            instance.workspace
        )
    }

    /// The named volume holding a workspace's home.
    pub fn volume_name(&self, instance: InstanceRef) -> String {
        format!(
            "coditect-{}-{}-home",
            self.config.scope.as_str(),
            instance.workspace
        )
    }

    /// The network of one tenant's workspaces.
    pub fn network_name(&self, instance: InstanceRef) -> String {
        format!(
            "coditect-{}-{}",
            self.config.scope.as_str(),
            instance.tenant
        )
    }

    fn labels(&self, instance: InstanceRef, generation: Option<u64>) -> HashMap<String, String> {
        crate::object_labels(&self.config.scope, instance, generation)
            .into_iter()
            .collect()
    }

    fn key_dir(&self, instance: InstanceRef) -> PathBuf {
        self.config
            .root
            .join(instance.workspace.to_string())
            .join("secrets")
    }

    fn write_key(&self, spec: &Spec) -> Result<PathBuf, RuntimeError> {
        crate::write_agent_key(&self.key_dir(spec.instance), &spec.agent.key)
    }

    /// The networks called exactly `name`, oldest first.
    async fn networks_named(
        &self,
        docker: &Docker,
        name: &str,
    ) -> Result<Vec<bollard::models::Network>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let mut found: Vec<_> = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.error(e, "list the tenant networks"))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect();
        found.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(found)
    }

    /// The tenant's network, by id. Docker allows two networks of one name, and two hubs
    /// (or replicas) starting a tenant's first workspaces at once can each create one:
    /// every start takes the oldest and removes the others.
    async fn ensure_network(&self, docker: &Docker, spec: &Spec) -> Result<String, RuntimeError> {
        let name = self.network_name(spec.instance);
        let mut found = self.networks_named(docker, &name).await?;
        if found.is_empty() {
            let mut labels = self.labels(spec.instance, None);
            labels.remove(labels::WORKSPACE);
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(409) => {}
                Err(e) => return Err(self.error(e, "create the tenant network")),
            }
            found = self.networks_named(docker, &name).await?;
        }
        // The oldest, so racing starts agree. The engine refuses to start a container while
        // its network's name is ambiguous, so the others go (the engine keeps one a
        // container uses; a racer whose start fails that way is relaunched by the
        // reconciler and then finds the one network).
        let mut found = found.into_iter();
        let kept = found
            .next()
            .and_then(|n| n.id)
            .ok_or_else(|| RuntimeError::Failed(format!("the network {name} vanished")))?;
        for extra in found.filter_map(|n| n.id) {
            let _ = docker.remove_network(&extra).await;
        }
        Ok(kept)
    }

    async fn ensure_volume(&self, docker: &Docker, spec: &Spec) -> Result<String, RuntimeError> {
        let name = self.volume_name(spec.instance);
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(self.labels(spec.instance, None)),
            ..Default::default()
        };
        // Creating an existing volume returns it.
        docker
            .create_volume(request)
            .await
            .map_err(|e| self.error(e, "create the home volume"))?;
        Ok(name)
    }

    fn error(&self, e: DockerError, what: &str) -> RuntimeError {
        match &e {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } if *status_code < 500 => RuntimeError::Failed(format!("cannot {what}: {message}")),
            DockerError::DockerResponseServerError { message, .. } => {
                RuntimeError::Failed(format!("cannot {what}: the engine says {message}"))
            }
            _ => unavailable(&self.config, e),
        }
    }

    async fn inspect_named(
        &self,
        docker: &Docker,
        instance: InstanceRef,
    ) -> Result<Option<Observed>, RuntimeError> {
        let name = self.container_name(instance);
        let found = match docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.error(e, "inspect the container")),
        };
        let labels = found
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let generation = generation_of(&labels);
        let state = found.state.unwrap_or_default();
        let phase = if state.running == Some(true) {
            Phase::Running
        } else if state
            .started_at
            .as_deref()
            .is_none_or(|s| s.starts_with("0001-"))
        {
            Phase::Created
        } else {
            Phase::Exited {
                code: state.exit_code,
                oom: state.oom_killed == Some(true),
            }
        };
        Ok(Some(Observed {
            instance,
            generation,
            phase,
            runtime_id: found.id.unwrap_or_default(),
        }))
    }

    async fn create_container(&self, docker: &Docker, spec: &Spec) -> Result<(), RuntimeError> {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.config.default_image.clone());
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {
                return Err(RuntimeError::ImageMissing {
                    image,
                    hint: "no registry is used: build it on this host with deploy/workspace/build (or docker build/import it under that name)".into(),
                });
            }
            Err(e) => return Err(self.error(e, "inspect the image")),
        }
        let network = if spec.network {
            self.ensure_network(docker, spec).await?
        } else {
            "none".to_string()
        };
        let volume = self.ensure_volume(docker, spec).await?;
        let key = self.write_key(spec)?;
        let socket = format!("{}/{}", inside::HUB_DIR, spec.agent.hub_socket_name);
        let env = agent_env(
            spec,
            HubAddress::Socket(&socket),
            inside::KEY_FILE,
            inside::HOME,
        )
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
        let r = &spec.resources;
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{volume}:{}", inside::HOME),
                format!(
                    "{}:{}:ro",
                    spec.agent.hub_socket_dir.display(),
                    inside::HUB_DIR
                ),
                // The directory, not the file: a key rotated by an atomic rename (a pool
                // claim) is seen inside.
                format!(
                    "{}:{}:ro",
                    key.parent().unwrap_or(&key).display(),
                    inside::SECRETS_DIR
                ),
            ]),
            network_mode: Some(network),
            nano_cpus: r.cpu_millis.map(|m| i64::from(m) * 1_000_000),
            memory: r.memory_mb.map(|mb| (mb as i64).saturating_mul(1 << 20)),
            pids_limit: r.pids.map(i64::from),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            init: Some(true),
            ..Default::default()
        };
        let short = spec.instance.workspace.to_string();
        let body = ContainerCreateBody {
            image: Some(image),
            hostname: Some(format!("ws-{}", &short[short.len().saturating_sub(8)..])),
            user: Some(format!("{0}:{0}", inside::UID)),
            env: Some(env),
            working_dir: Some(inside::HOME.into()),
            cmd: Some(vec!["codi-monitor".into(), "agent".into()]),
            labels: Some(self.labels(spec.instance, Some(spec.generation))),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(self.container_name(spec.instance)),
            ..Default::default()
        };
        match docker.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            // Created meanwhile (a retry after a crash): the caller inspects it.
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.error(e, "create the container")),
        }
    }

    async fn remove_container(
        &self,
        docker: &Docker,
        instance: InstanceRef,
    ) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker
            .remove_container(&self.container_name(instance), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(404)) => Ok(()),
            Err(e) => Err(self.error(e, "remove the container")),
        }
    }
}

/// The launch a container belongs to, from its label (0 when unlabelled).
fn generation_of(labels: &HashMap<String, String>) -> u64 {
    labels
        .get(labels::GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn unavailable(config: &DockerConfig, e: DockerError) -> RuntimeError {
    RuntimeError::Unavailable(format!(
        "the docker engine at {} does not answer: {e}",
        config.socket.display()
    ))
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn create(&self, spec: &Spec) -> Result<(), RuntimeError> {
        let docker = self.docker().await?;
        match self.inspect_named(docker, spec.instance).await? {
            Some(o) if o.generation == spec.generation => Ok(()),
            // A container of an earlier start: the home is in the volume, so it is
            // replaced rather than restarted (a new start gets a new key and token).
            Some(_) => {
                self.remove_container(docker, spec.instance).await?;
                self.create_container(docker, spec).await
            }
            None => self.create_container(docker, spec).await,
        }
    }

    async fn start(&self, spec: &Spec) -> Result<Observed, RuntimeError> {
        let docker = self.docker().await?;
        if let Some(o) = self.inspect_named(docker, spec.instance).await?
            && o.phase == Phase::Running
        {
            return Ok(o);
        }
        self.create(spec).await?;
        match docker
            .start_container(&self.container_name(spec.instance), None)
            .await
        {
            Ok(()) => {}
            // 304: already started.
            Err(e) if status(&e) == Some(304) => {}
            Err(e) => return Err(self.error(e, "start the container")),
        }
        self.inspect_named(docker, spec.instance)
            .await?
            .ok_or_else(|| RuntimeError::Failed("the container vanished as it started".into()))
    }

    async fn stop(&self, instance: InstanceRef, grace: Duration) -> Result<(), RuntimeError> {
        let docker = self.docker().await?;
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        match docker
            .stop_container(&self.container_name(instance), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(self.error(e, "stop the container")),
        }
    }

    async fn rekey(
        &self,
        instance: InstanceRef,
        key: &coditect_proto::Secret,
    ) -> Result<(), RuntimeError> {
        crate::write_agent_key(&self.key_dir(instance), key).map(|_| ())
    }

    async fn seed_home(
        &self,
        instance: InstanceRef,
        from: &std::path::Path,
    ) -> Result<(), RuntimeError> {
        let docker = self.docker().await?;
        // A tar of the clone, owned by the workspace's user, unpacked by the engine into
        // the (created, not yet started) container's home: the volume.
        let uid = inside::UID.to_string();
        let out = tokio::process::Command::new("tar")
            .arg("-C")
            .arg(from)
            .args([
                "--owner",
                &uid,
                "--group",
                &uid,
                "--numeric-owner",
                "-cf",
                "-",
                ".",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| RuntimeError::Failed(format!("cannot run tar: {e}")))?;
        if !out.status.success() {
            return Err(RuntimeError::Failed(format!(
                "cannot pack the home: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let options = bollard::query_parameters::UploadToContainerOptions {
            path: inside::HOME.into(),
            ..Default::default()
        };
        docker
            .upload_to_container(
                &self.container_name(instance),
                Some(options),
                bollard::body_full(out.stdout.into()),
            )
            .await
            .map_err(|e| self.error(e, "fill the home"))
    }

    async fn destroy(&self, instance: InstanceRef) -> Result<(), RuntimeError> {
        let docker = self.docker().await?;
        self.remove_container(docker, instance).await?;
        match docker
            .remove_volume(&self.volume_name(instance), None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(self.error(e, "remove the home volume")),
        }
        // The tenant's network goes with its last workspace: the engine refuses to remove
        // one that other containers still use, which is the answer wanted.
        if let Ok(nets) = self
            .networks_named(docker, &self.network_name(instance))
            .await
        {
            for id in nets.into_iter().filter_map(|n| n.id) {
                let _ = docker.remove_network(&id).await;
            }
        }
        let dir = self.config.root.join(instance.workspace.to_string());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Failed(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }

    async fn inspect(&self, instance: InstanceRef) -> Result<Option<Observed>, RuntimeError> {
        let docker = self.docker().await?;
        self.inspect_named(docker, instance).await
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", labels::SCOPE, self.config.scope.as_str())],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(e, "list containers"))?;
        let mut out = Vec::new();
        for c in found {
            let labels = c.labels.unwrap_or_default();
            let parsed = (|| {
                Some(InstanceRef {
                    tenant: labels.get(labels::TENANT)?.parse().ok()?,
                    workspace: labels.get(labels::WORKSPACE)?.parse().ok()?,
                })
            })();
            let Some(instance) = parsed else { continue };
            let generation = generation_of(&labels);
            let running = c
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            out.push(Observed {
                instance,
                generation,
                phase: if running {
                    Phase::Running
                } else {
                    Phase::Exited {
                        code: None,
                        oom: false,
                    }
                },
                runtime_id: c.id.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    fn exits(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        let (config, exited) = (self.config.clone(), self.exited.clone());
        // Only inside a runtime (the hub's health checker asks from one).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.events.call_once(|| {
                handle.spawn(Self::follow_exits(config, exited));
            });
        }
        Some(self.exited.clone())
    }

    async fn probe(&self) -> Result<(), RuntimeError> {
        let docker = self.docker().await?;
        docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(&self.config, e))
    }

    fn limits(&self) -> String {
        "cgroup (docker: cpu, memory, pids)".into()
    }
}
