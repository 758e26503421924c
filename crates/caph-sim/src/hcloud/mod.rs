//! The Hetzner Cloud API simulator: servers, actions, images, SSH keys, server types and locations over real HTTP.
