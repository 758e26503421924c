//! Robot API client, autosetup rendering and validation, and the robot backend.
