//! Server types and locations: what can be ordered where.

use super::types::{Location, ServerType};
use super::{Client, Error};

impl Client {
    /// `GET /server_types`, every page; `name` filters to one type.
    pub async fn list_server_types(&self, name: Option<&str>) -> Result<Vec<ServerType>, Error> {
        let query: Vec<(&str, String)> = name
            .map(|name| ("name", name.to_string()))
            .into_iter()
            .collect();
        self.list_all("/server_types", "server_types", &query).await
    }

    /// `GET /locations`, every page; `name` filters to one location.
    pub async fn list_locations(&self, name: Option<&str>) -> Result<Vec<Location>, Error> {
        let query: Vec<(&str, String)> = name
            .map(|name| ("name", name.to_string()))
            .into_iter()
            .collect();
        self.list_all("/locations", "locations", &query).await
    }
}
