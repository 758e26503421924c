//! Image spec, provisioning plan and the Backend trait; no I/O of its own.
