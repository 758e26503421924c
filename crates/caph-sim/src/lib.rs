//! Simulators of the Hetzner Cloud API, the Robot API, SSH-reachable servers, the rescue system and installimage.
