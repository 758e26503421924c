//! Hetzner dedicated servers: the Robot API client, installimage's autosetup files, and the
//! rescue + installimage driver behind `RobotBackend`.

#![deny(missing_docs)]

pub mod autosetup;
pub mod backend;
pub mod client;
pub mod drives;
