//! Images: list with filters, get, update description and labels, delete.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::labels::check_labels;
use super::retry::Replay;
use super::types::{Architecture, Image, ImageId, ImageStatus, ImageType, Labels};
use super::{Client, Error, LabelSelector};

/// Filters of `GET /images`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListImagesParams {
    /// Any of these kinds.
    pub kind: Vec<ImageType>,
    /// Any of these statuses.
    pub status: Vec<ImageStatus>,
    /// Only this architecture.
    pub architecture: Option<Architecture>,
    /// Exact name (snapshots have none).
    pub name: Option<String>,
    /// Label selector.
    pub label_selector: Option<LabelSelector>,
    /// Include deprecated images (the API leaves them out by default).
    pub include_deprecated: Option<bool>,
    /// Sort keys, e.g. `created:desc`.
    pub sort: Vec<String>,
}

/// `PUT /images/{id}`: only what is given changes; labels are replaced as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateImageRequest {
    /// New description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// New labels (replacing all of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

#[derive(Deserialize)]
struct ImageEnvelope {
    image: Image,
}

impl Client {
    /// `GET /images`, every page.
    pub async fn list_images(&self, params: &ListImagesParams) -> Result<Vec<Image>, Error> {
        let mut query = Vec::new();
        for kind in &params.kind {
            query.push(("type", kind.to_string()));
        }
        for status in &params.status {
            query.push(("status", status.to_string()));
        }
        if let Some(architecture) = &params.architecture {
            query.push(("architecture", architecture.to_string()));
        }
        if let Some(name) = &params.name {
            query.push(("name", name.clone()));
        }
        if let Some(selector) = params.label_selector.as_ref().filter(|s| !s.is_empty()) {
            query.push(("label_selector", selector.to_string()));
        }
        if let Some(include) = params.include_deprecated {
            query.push(("include_deprecated", include.to_string()));
        }
        for sort in &params.sort {
            query.push(("sort", sort.clone()));
        }
        self.list_all("/images", "images", &query).await
    }

    /// `GET /images/{id}`.
    pub async fn get_image(&self, id: ImageId) -> Result<Image, Error> {
        let envelope: ImageEnvelope = self.get(&format!("/images/{id}"), &[]).await?;
        Ok(envelope.image)
    }

    /// `PUT /images/{id}` (snapshots and backups only).
    pub async fn update_image(
        &self,
        id: ImageId,
        request: &UpdateImageRequest,
    ) -> Result<Image, Error> {
        if let Some(labels) = &request.labels {
            check_labels(labels)?;
        }
        let path = format!("/images/{id}");
        let envelope: ImageEnvelope = self
            .send_json(Method::PUT, &path, request, Replay::Idempotent)
            .await?;
        Ok(envelope.image)
    }

    /// `DELETE /images/{id}`; `protected` when delete-protected.
    pub async fn delete_image(&self, id: ImageId) -> Result<(), Error> {
        self.delete_raw(&format!("/images/{id}")).await?;
        Ok(())
    }
}
