//! SSH client on russh: connect when ready, host-key pinning, streamed exec and upload.
