//! Hetzner Cloud API client and the hcloud backend.
