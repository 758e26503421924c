//! A temporary server that never boots its own system, for the flows that write its disk
//! directly (`upload`: a disk image; `build hcloud --from-tarball`: an installimage tarball):
//! created powered off along the preferred (type, location) pairs, its rescue system enabled
//! through the API and booted, reached over SSH with the rescue system's host key trusted on
//! first use; and, once the disk is written, powered off hard (the rescue system holds nothing
//! that a clean shutdown would save).

use caph_core::backend::Phase;
use caph_ssh::{ConnectConfig, ConnectEvent, HostKeyPolicy, KeyPair, Session, TofuPin};

use super::naming::{BuiltOn, temporary_name};
use super::placement::Candidate;
use super::run::{ArchFailure, Job, api, ssh};
use crate::client::{IdOrName, ServerId, ServerStatus};

/// The disk of a Hetzner Cloud server as its rescue system sees it.
pub const DISK_DEVICE: &str = "/dev/sda";

/// A server booted into its rescue system, with an SSH session to it.
pub(crate) struct RescueServer {
    pub(crate) id: ServerId,
    pub(crate) session: Session,
    pub(crate) built_on: BuiltOn,
    /// Preferred pairs passed over, with the reason: `cx23 in fsn1: sold out`.
    pub(crate) passed_over: Vec<String>,
}

impl Job<'_> {
    /// Creates the key and the server (off, from `base_image`, which it never boots) on the
    /// first pair with capacity, enables the rescue system, powers the server on into it and
    /// connects. `passed_over` starts with the pairs preflight already left out.
    pub(crate) async fn boot_rescue(
        &self,
        base_image: &str,
        candidates: &[Candidate],
        passed_over: Vec<String>,
    ) -> Result<RescueServer, ArchFailure> {
        let (client, config, context, tracker) =
            (self.client, self.config, self.context, self.tracker);
        let name = temporary_name(&context.build_id, tracker.arch());
        tracker.enter(context, Phase::Create, format!("server {name}"));
        let client_key =
            KeyPair::generate_ed25519(&format!("caph-image rescue {}", context.build_id))?;
        let ssh_key = self.create_temporary_key(&name, &client_key).await?;
        let created = self
            .create_on_candidates(candidates, ServerStatus::Off, passed_over, |candidate| {
                let mut create = self.server_request(
                    &name,
                    IdOrName::Name(base_image.to_string()),
                    candidate,
                    ssh_key,
                );
                create.start_after_create = Some(false);
                create
            })
            .await?;
        let (server_id, address, candidate) = (created.id, created.address, created.candidate);

        tracker.enter(context, Phase::Connect, "the rescue system");
        let rescue = client
            .enable_rescue(server_id, &[ssh_key])
            .await
            .map_err(api("enabling the rescue system"))?;
        client
            .wait_for_action(&rescue.action, &config.wait, &mut |_| {})
            .await
            .map_err(api("waiting for the rescue system to be enabled"))?;
        let power_on = client
            .poweron_server(server_id)
            .await
            .map_err(api("powering on into the rescue system"))?;
        let mut wait = config.wait.clone();
        wait.timeout = config.server_ready_timeout;
        client
            .wait_for_action(&power_on, &wait, &mut |_| {})
            .await
            .map_err(api("waiting for the rescue system to boot"))?;
        let mut connect = ConnectConfig::new(
            address,
            "root",
            client_key,
            HostKeyPolicy::TrustOnFirstUse(TofuPin::default()),
        );
        connect.deadline = config.connect_deadline;
        let session =
            caph_ssh::connect_when_ready(&connect, &mut |event: ConnectEvent<'_>| match event {
                ConnectEvent::Retrying { attempt, error, .. } if attempt % 5 == 1 => {
                    tracker.say(
                        context,
                        format!("waiting for the rescue system's SSH ({error})"),
                    );
                }
                ConnectEvent::HostKeyTrusted { fingerprint, .. } => {
                    tracker.say(
                        context,
                        format!("rescue system host key {fingerprint} trusted on first use"),
                    );
                }
                _ => {}
            })
            .await
            .map_err(ssh(format!("connecting to the rescue system at {address}")))?;
        Ok(RescueServer {
            id: server_id,
            session,
            built_on: BuiltOn {
                server_type: candidate.server_type.clone(),
                location: candidate.location.clone(),
            },
            passed_over: created.passed_over,
        })
    }

    /// The shutdown phase of a rescue flow: a hard power off (the rescue system holds nothing a
    /// clean shutdown would save).
    pub(crate) async fn power_off(&self, server_id: ServerId) -> Result<(), ArchFailure> {
        self.tracker
            .enter(self.context, Phase::Shutdown, "power off");
        self.hard_power_off(server_id).await
    }
}
