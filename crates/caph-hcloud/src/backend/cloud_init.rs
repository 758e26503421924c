//! Cloud-init user data that installs the host key this tool generated, so the first SSH
//! connection can already be pinned.

use caph_ssh::KeyPair;

/// `#cloud-config` with the host key as `ssh_keys.ed25519_private`/`ed25519_public`. Other key
/// types are not generated, so the server presents exactly the pinned key.
pub fn host_key_user_data(host_key: &KeyPair) -> Result<String, caph_ssh::KeyError> {
    Ok(format!("#cloud-config\n{}", host_key_config(host_key)?))
}

/// The top-level cloud-config keys of [`host_key_user_data`], without its header, for user data
/// that carries more (`verify`'s probe).
pub fn host_key_config(host_key: &KeyPair) -> Result<String, caph_ssh::KeyError> {
    let private = host_key.private_key_openssh()?;
    let mut text = String::from("# Written by caph-image: this run pins this host key.\n");
    text.push_str("ssh_deletekeys: true\n");
    text.push_str("ssh_genkeytypes: []\n");
    text.push_str("ssh_keys:\n");
    text.push_str("  ed25519_private: |\n");
    for line in private.expose().lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("  ed25519_public: ");
    text.push_str(&host_key.public_key().to_openssh());
    text.push('\n');
    Ok(text)
}
