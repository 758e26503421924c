//! Servers: create, get, list, delete, and the power, rescue and snapshot actions.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::labels::check_labels;
use super::retry::Replay;
use super::types::{Action, IdOrName, Image, Labels, Server, ServerId, ServerStatus, SshKeyId};
use super::{Client, Error, LabelSelector, SecretString};

/// The API's limit on `user_data`.
pub const MAX_USER_DATA_BYTES: usize = 32 * 1024;

/// `POST /servers`. `datacenter` is deliberately absent: the API removed it in 2026-07.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateServerRequest {
    /// Unique name, an RFC 1123 hostname.
    pub name: String,
    /// Server type by id or name, e.g. `cx23`.
    pub server_type: IdOrName,
    /// Image by id or name, e.g. `debian-12` or a snapshot id.
    pub image: IdOrName,
    /// Location by id or name, e.g. `fsn1`; the API picks one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<IdOrName>,
    /// SSH keys (ids or names) for root.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<IdOrName>,
    /// Cloud-init user data (at most 32 KiB). It may hold a host private key, so it is a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretString>,
    /// Labels, checked against the label rules before sending.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Whether to start the server after creating it (the API's default is true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_after_create: Option<bool>,
    /// Which public addresses to give it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_net: Option<PublicNetRequest>,
}

impl CreateServerRequest {
    /// A request with only the required fields.
    pub fn new(
        name: impl Into<String>,
        server_type: impl Into<IdOrName>,
        image: impl Into<IdOrName>,
    ) -> Self {
        CreateServerRequest {
            name: name.into(),
            server_type: server_type.into(),
            image: image.into(),
            location: None,
            ssh_keys: Vec::new(),
            user_data: None,
            labels: Labels::new(),
            start_after_create: None,
            public_net: None,
        }
    }
}

/// `public_net` of `POST /servers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PublicNetRequest {
    /// Give it a public IPv4 address.
    pub enable_ipv4: bool,
    /// Give it a public IPv6 network.
    pub enable_ipv6: bool,
}

/// The answer to `POST /servers`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateServerResponse {
    /// The new server (status `initializing`).
    pub server: Server,
    /// The `create_server` action.
    pub action: Action,
    /// Actions that follow, e.g. `start_server`.
    #[serde(default)]
    pub next_actions: Vec<Action>,
    /// The root password; null when SSH keys were given.
    #[serde(default)]
    pub root_password: Option<SecretString>,
}

impl CreateServerResponse {
    /// The create action and the actions that follow it, to wait for together.
    pub fn all_actions(&self) -> Vec<Action> {
        let mut actions = vec![self.action.clone()];
        actions.extend(self.next_actions.iter().cloned());
        actions
    }
}

/// The answer to `POST /servers/{id}/actions/enable_rescue`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EnableRescueResponse {
    /// The `enable_rescue` action.
    pub action: Action,
    /// The rescue system's root password.
    #[serde(default)]
    pub root_password: Option<SecretString>,
}

/// `POST /servers/{id}/actions/create_image` (always a snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateImageRequest {
    /// The snapshot's description.
    pub description: Option<String>,
    /// The snapshot's labels, checked against the label rules before sending.
    pub labels: Labels,
}

/// The answer to `POST /servers/{id}/actions/create_image`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CreateImageResponse {
    /// The new image (status `creating`, `image_size` null).
    pub image: Image,
    /// The `create_image` action.
    pub action: Action,
}

/// Filters of `GET /servers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListServersParams {
    /// Exact name.
    pub name: Option<String>,
    /// Label selector.
    pub label_selector: Option<LabelSelector>,
    /// Any of these statuses.
    pub status: Vec<ServerStatus>,
    /// Sort keys, e.g. `created:desc`.
    pub sort: Vec<String>,
}

#[derive(Deserialize)]
struct ServerEnvelope {
    server: Server,
}

#[derive(Deserialize)]
struct ActionEnvelope {
    action: Action,
}

impl Client {
    /// `POST /servers`. Not retried after a failure that may have created the server (see
    /// [`Error::may_have_been_processed`]): look it up by name or label first.
    pub async fn create_server(
        &self,
        request: &CreateServerRequest,
    ) -> Result<CreateServerResponse, Error> {
        check_labels(&request.labels)?;
        if let Some(user_data) = &request.user_data
            && user_data.expose_secret().len() > MAX_USER_DATA_BYTES
        {
            return Err(Error::InvalidRequest {
                field: "user_data",
                reason: format!(
                    "{} bytes, the API accepts at most {MAX_USER_DATA_BYTES}",
                    user_data.expose_secret().len()
                ),
            });
        }
        self.send_json(Method::POST, "/servers", request, Replay::OnlyIfUnprocessed)
            .await
    }

    /// `GET /servers/{id}`; a gone server is an error with `is_not_found()`.
    pub async fn get_server(&self, id: ServerId) -> Result<Server, Error> {
        let envelope: ServerEnvelope = self.get(&format!("/servers/{id}"), &[]).await?;
        Ok(envelope.server)
    }

    /// `GET /servers`, every page.
    pub async fn list_servers(&self, params: &ListServersParams) -> Result<Vec<Server>, Error> {
        let mut query = Vec::new();
        if let Some(name) = &params.name {
            query.push(("name", name.clone()));
        }
        if let Some(selector) = params.label_selector.as_ref().filter(|s| !s.is_empty()) {
            query.push(("label_selector", selector.to_string()));
        }
        for status in &params.status {
            query.push(("status", status.to_string()));
        }
        for sort in &params.sort {
            query.push(("sort", sort.clone()));
        }
        self.list_all("/servers", "servers", &query).await
    }

    /// `DELETE /servers/{id}`: answers with the `delete_server` action.
    pub async fn delete_server(&self, id: ServerId) -> Result<Action, Error> {
        let path = format!("/servers/{id}");
        let answer = self.delete_raw(&path).await?;
        let envelope: ActionEnvelope = super::decode(&Method::DELETE, &path, &answer)?;
        Ok(envelope.action)
    }

    /// `POST /servers/{id}/actions/shutdown`: success only means the ACPI signal went out; wait
    /// for `status == off` and fall back to [`Client::poweroff_server`] after a timeout.
    pub async fn shutdown_server(&self, id: ServerId) -> Result<Action, Error> {
        self.server_action(id, "shutdown").await
    }

    /// `POST /servers/{id}/actions/poweroff`: cuts power.
    pub async fn poweroff_server(&self, id: ServerId) -> Result<Action, Error> {
        self.server_action(id, "poweroff").await
    }

    /// `POST /servers/{id}/actions/poweron`.
    pub async fn poweron_server(&self, id: ServerId) -> Result<Action, Error> {
        self.server_action(id, "poweron").await
    }

    /// `POST /servers/{id}/actions/reset`: a hard reset.
    pub async fn reset_server(&self, id: ServerId) -> Result<Action, Error> {
        self.server_action(id, "reset").await
    }

    /// `POST /servers/{id}/actions/enable_rescue` with `linux64` and these keys. It does not
    /// reboot: follow with a reset or poweron.
    pub async fn enable_rescue(
        &self,
        id: ServerId,
        ssh_keys: &[SshKeyId],
    ) -> Result<EnableRescueResponse, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            ssh_keys: &'a [SshKeyId],
        }
        let path = format!("/servers/{id}/actions/enable_rescue");
        let body = Body {
            kind: "linux64",
            ssh_keys,
        };
        self.send_json(Method::POST, &path, &body, Replay::OnlyIfUnprocessed)
            .await
    }

    /// `POST /servers/{id}/actions/create_image` with type `snapshot`. Not retried after a
    /// failure that may have made the snapshot: a second one would be billed.
    pub async fn create_image(
        &self,
        id: ServerId,
        request: &CreateImageRequest,
    ) -> Result<CreateImageResponse, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            description: Option<&'a str>,
            #[serde(skip_serializing_if = "Labels::is_empty")]
            labels: &'a Labels,
        }
        check_labels(&request.labels)?;
        let path = format!("/servers/{id}/actions/create_image");
        let body = Body {
            kind: "snapshot",
            description: request.description.as_deref(),
            labels: &request.labels,
        };
        self.send_json(Method::POST, &path, &body, Replay::OnlyIfUnprocessed)
            .await
    }

    async fn server_action(&self, id: ServerId, action: &str) -> Result<Action, Error> {
        let envelope: ActionEnvelope = self
            .post_empty(&format!("/servers/{id}/actions/{action}"))
            .await?;
        Ok(envelope.action)
    }
}
