//! Routes and handlers of the Robot simulator: wrapped objects, form parameters and Robot's error bodies.

use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::form::Form;
use super::keys::parse_public_key;
use super::{Activation, Event, EventKind, Inner, KeyRec, Power, ServerRec};

/// Every route the simulator answers, as `(method, template)`.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/server"),
    ("GET", "/server/{server-number}"),
    ("POST", "/server/{server-number}"),
    ("GET", "/boot/{server-number}/rescue"),
    ("POST", "/boot/{server-number}/rescue"),
    ("DELETE", "/boot/{server-number}/rescue"),
    ("GET", "/boot/{server-number}/rescue/last"),
    ("GET", "/reset/{server-number}"),
    ("POST", "/reset/{server-number}"),
    ("GET", "/key"),
    ("POST", "/key"),
    ("GET", "/key/{fingerprint}"),
    ("POST", "/key/{fingerprint}"),
    ("DELETE", "/key/{fingerprint}"),
];

/// The route templates the simulator answers, as `METHOD /template` (for fault scripts and limits).
pub fn routes() -> impl Iterator<Item = String> {
    ROUTES
        .iter()
        .map(|(method, template)| format!("{method} {template}"))
}

/// An error answer: `{"error":{"status","code","message",...}}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    code: String,
    message: String,
    /// Extra members of the error object (`missing`/`invalid`, `max_requests`/`interval`).
    extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: &str) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            extra: Vec::new(),
        }
    }

    fn invalid_input(missing: &[&str], invalid: &[&str]) -> ApiError {
        let list = |names: &[&str]| {
            if names.is_empty() {
                Value::Null
            } else {
                json!(names)
            }
        };
        ApiError {
            status: 400,
            code: "INVALID_INPUT".into(),
            message: "invalid input".into(),
            extra: vec![("missing", list(missing)), ("invalid", list(invalid))],
        }
    }

    pub(crate) fn rate_limited(max_requests: u32, interval_seconds: u64) -> ApiError {
        ApiError {
            status: 403,
            code: "RATE_LIMIT_EXCEEDED".into(),
            message: "rate limit exceeded".into(),
            extra: vec![
                ("max_requests", json!(max_requests)),
                ("interval", json!(interval_seconds)),
            ],
        }
    }

    fn server_not_found() -> ApiError {
        ApiError::new(404, "SERVER_NOT_FOUND", "server not found")
    }

    pub(crate) fn body(&self) -> Value {
        let mut error = serde_json::Map::new();
        error.insert("status".into(), json!(self.status));
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        for (name, value) in &self.extra {
            error.insert((*name).into(), value.clone());
        }
        json!({ "error": error })
    }
}

/// Finds the template for a path, with the placeholder values (percent-decoded) in order.
pub(crate) fn match_route(method: &str, path: &str) -> Option<(&'static str, Vec<String>)> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    'routes: for (route_method, template) in ROUTES {
        if *route_method != method {
            continue;
        }
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        for (part, segment) in parts.iter().zip(&segments) {
            if part.starts_with('{') {
                if segment.is_empty() {
                    continue 'routes;
                }
                let decoded = url::form_urlencoded::parse(format!("v={segment}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default();
                params.push(decoded);
            } else if part != segment {
                continue 'routes;
            }
        }
        return Some((template, params));
    }
    None
}

type Reply = Result<(u16, Option<Value>), ApiError>;

fn ok(body: Value) -> Reply {
    Ok((200, Some(body)))
}

pub(crate) fn dispatch(
    inner: &Inner,
    method: &str,
    template: &str,
    params: &[String],
    form: &Form,
) -> Reply {
    let param = params.first().map(String::as_str).unwrap_or_default();
    match (method, template) {
        ("GET", "/server") => list_servers(inner),
        ("GET", "/server/{server-number}") => {
            with_server(inner, param, |_, server| ok(server_json(server, true)))
        }
        ("POST", "/server/{server-number}") => rename_server(inner, param, form),
        ("GET", "/boot/{server-number}/rescue") => {
            with_server(inner, param, |_, server| ok(rescue_json(server)))
        }
        ("POST", "/boot/{server-number}/rescue") => activate_rescue(inner, param, form),
        ("DELETE", "/boot/{server-number}/rescue") => with_server(inner, param, |_, server| {
            server.rescue = None;
            ok(rescue_json(server))
        }),
        ("GET", "/boot/{server-number}/rescue/last") => {
            with_server(inner, param, |_, server| match &server.last_rescue {
                Some(last) => ok(active_rescue_json(server, last, false)),
                None => Err(ApiError::new(
                    404,
                    "NOT_FOUND",
                    "no rescue system was activated yet",
                )),
            })
        }
        ("GET", "/reset/{server-number}") => with_server(inner, param, |_, server| {
            ok(json!({"reset": {
                "server_ip": server.ip.to_string(),
                "server_ipv6_net": ipv6_net(server),
                "server_number": server.spec.number,
                "type": ["sw", "hw", "man"],
                "operating_status": "not supported",
            }}))
        }),
        ("POST", "/reset/{server-number}") => reset(inner, param, form),
        ("GET", "/key") => {
            let world = inner.world();
            if world.keys.is_empty() {
                return Err(ApiError::new(404, "NOT_FOUND", "No keys found"));
            }
            ok(Value::Array(world.keys.iter().map(key_json).collect()))
        }
        ("POST", "/key") => create_key(inner, form),
        ("GET", "/key/{fingerprint}") => {
            let world = inner.world();
            match world.keys.iter().find(|key| key.fingerprint == param) {
                Some(key) => ok(key_json(key)),
                None => Err(key_not_found()),
            }
        }
        ("POST", "/key/{fingerprint}") => {
            let Some(name) = form.get("name").filter(|name| !name.is_empty()) else {
                return Err(ApiError::invalid_input(&["name"], &[]));
            };
            let mut world = inner.world();
            match world.keys.iter_mut().find(|key| key.fingerprint == param) {
                Some(key) => {
                    key.name = name.to_owned();
                    ok(key_json(key))
                }
                None => Err(key_not_found()),
            }
        }
        ("DELETE", "/key/{fingerprint}") => {
            let mut world = inner.world();
            let before = world.keys.len();
            world.keys.retain(|key| key.fingerprint != param);
            if world.keys.len() == before {
                return Err(key_not_found());
            }
            Ok((200, None))
        }
        _ => Err(ApiError::new(404, "NOT_FOUND", "Not Found")),
    }
}

fn key_not_found() -> ApiError {
    ApiError::new(404, "NOT_FOUND", "Key not found")
}

fn with_server(
    inner: &Inner,
    param: &str,
    action: impl FnOnce(&Inner, &mut ServerRec) -> Reply,
) -> Reply {
    let Ok(number) = param.parse::<u64>() else {
        return Err(ApiError::server_not_found());
    };
    let mut world = inner.world();
    match world.servers.get_mut(&number) {
        Some(server) => action(inner, server),
        None => Err(ApiError::server_not_found()),
    }
}

fn ipv6_net(server: &ServerRec) -> String {
    // A documentation-style /64 per server, derived from its number so it stays put.
    format!(
        "2a01:4f8:{:x}:{:x}::",
        server.spec.number >> 16,
        server.spec.number & 0xffff
    )
}

fn server_json(server: &ServerRec, details: bool) -> Value {
    let mut object = json!({
        "server_ip": server.ip.to_string(),
        "server_ipv6_net": ipv6_net(server),
        "server_number": server.spec.number,
        "server_name": server.name,
        "product": server.spec.product,
        "dc": server.spec.dc,
        "traffic": "unlimited",
        "status": "ready",
        "cancelled": false,
        "paid_until": server.paid_until,
        "ip": [server.ip.to_string()],
        "subnet": [{"ip": ipv6_net(server), "mask": "64"}],
        "linked_storagebox": null,
    });
    if details && let Some(fields) = object.as_object_mut() {
        for (name, value) in [
            ("reset", true),
            ("rescue", true),
            ("vnc", true),
            ("windows", false),
            ("plesk", false),
            ("cpanel", false),
            ("wol", true),
            ("hot_swap", false),
        ] {
            fields.insert(name.into(), json!(value));
        }
    }
    json!({ "server": object })
}

fn list_servers(inner: &Inner) -> Reply {
    let world = inner.world();
    if world.servers.is_empty() {
        return Err(ApiError::new(404, "NOT_FOUND", "No servers found"));
    }
    ok(Value::Array(
        world
            .servers
            .values()
            .map(|server| server_json(server, false))
            .collect(),
    ))
}

fn rename_server(inner: &Inner, param: &str, form: &Form) -> Reply {
    with_server(inner, param, |_, server| {
        let Some(name) = form.get("server_name") else {
            return Err(ApiError::invalid_input(&["server_name"], &[]));
        };
        if name.len() > 100 {
            return Err(ApiError::invalid_input(&[], &["server_name"]));
        }
        server.name = name.to_owned();
        ok(server_json(server, true))
    })
}

fn key_summary(key: &KeyRec) -> Value {
    json!({"key": {
        "name": key.name,
        "fingerprint": key.fingerprint,
        "type": key.kind,
        "size": key.size,
        "created_at": key.created_at,
    }})
}

fn key_json(key: &KeyRec) -> Value {
    json!({"key": {
        "name": key.name,
        "fingerprint": key.fingerprint,
        "type": key.kind,
        "size": key.size,
        "data": key.data,
        "created_at": key.created_at,
    }})
}

fn rescue_json(server: &ServerRec) -> Value {
    match &server.rescue {
        Some(activation) => active_rescue_json(server, activation, true),
        None => json!({"rescue": {
            "server_ip": server.ip.to_string(),
            "server_ipv6_net": ipv6_net(server),
            "server_number": server.spec.number,
            "os": ["linux", "vkvm"],
            "arch": [64],
            "active": false,
            "password": null,
            "authorized_key": [],
            "host_key": [],
            "boot_time": null,
        }}),
    }
}

fn active_rescue_json(server: &ServerRec, activation: &Activation, with_password: bool) -> Value {
    json!({"rescue": {
        "server_ip": server.ip.to_string(),
        "server_ipv6_net": ipv6_net(server),
        "server_number": server.spec.number,
        "os": activation.os,
        "arch": activation.arch,
        "active": server.rescue.is_some(),
        "password": if with_password { json!(activation.password) } else { Value::Null },
        "authorized_key": activation.keys.iter().map(key_summary).collect::<Vec<_>>(),
        "host_key": [],
        "boot_time": null,
        "keyboard": activation.keyboard,
    }})
}

fn activate_rescue(inner: &Inner, param: &str, form: &Form) -> Reply {
    const KEYBOARDS: &[&str] = &["de", "us", "uk", "ch", "fr", "fi", "jp", "it", "es"];
    let Ok(number) = param.parse::<u64>() else {
        return Err(ApiError::server_not_found());
    };
    let mut world = inner.world();
    let keys = world.keys.clone();
    let Some(server) = world.servers.get_mut(&number) else {
        return Err(ApiError::server_not_found());
    };
    let Some(os) = form.get("os") else {
        return Err(ApiError::invalid_input(&["os"], &[]));
    };
    let mut invalid = Vec::new();
    if !matches!(os, "linux" | "vkvm") {
        invalid.push("os");
    }
    let arch = match form.get("arch") {
        None => 64,
        Some("64") => 64,
        Some("32") => 32,
        Some(_) => {
            invalid.push("arch");
            64
        }
    };
    let keyboard = form.get("keyboard").unwrap_or("us");
    if !KEYBOARDS.contains(&keyboard) {
        invalid.push("keyboard");
    }
    let mut chosen = Vec::new();
    for fingerprint in form.all("authorized_key") {
        match keys.iter().find(|key| key.fingerprint == fingerprint) {
            Some(key) => chosen.push(key.clone()),
            None => {
                if !invalid.contains(&"authorized_key") {
                    invalid.push("authorized_key");
                }
            }
        }
    }
    if !invalid.is_empty() {
        return Err(ApiError::invalid_input(&[], &invalid));
    }
    if server.rescue.is_some() {
        return Err(ApiError::new(
            409,
            "BOOT_ALREADY_ENABLED",
            "A boot option is already active",
        ));
    }
    let password: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(char::from)
        .collect();
    let activation = Activation {
        os: os.to_owned(),
        arch,
        keyboard: keyboard.to_owned(),
        password,
        keys: chosen,
    };
    server.rescue = Some(activation);
    ok(rescue_json(server))
}

fn reset(inner: &Inner, param: &str, form: &Form) -> Reply {
    let Ok(number) = param.parse::<u64>() else {
        return Err(ApiError::server_not_found());
    };
    let Some(kind) = form.get("type") else {
        return Err(ApiError::invalid_input(&["type"], &[]));
    };
    let duration = match kind {
        "sw" => inner.durations.reset_sw,
        "hw" | "power" | "power_long" => inner.durations.reset_hw,
        "man" => inner.durations.reset_man,
        _ => return Err(ApiError::invalid_input(&[], &["type"])),
    };
    let now = inner.clock.now();
    let mut world = inner.world();
    let Some(server) = world.servers.get_mut(&number) else {
        return Err(ApiError::server_not_found());
    };
    server.resets.push(kind.to_owned());
    let reply = json!({"reset": {
        "server_ip": server.ip.to_string(),
        "server_ipv6_net": ipv6_net(server),
        "server_number": server.spec.number,
        "type": kind,
    }});
    if kind == "sw" && server.spec.ignore_sw_reset {
        // A hung OS never acts on CTRL+ALT+DEL; the API still accepts the request.
        return ok(reply);
    }
    server.generation += 1;
    let generation = server.generation;
    if server.power != Power::Down {
        inner.schedule(
            &mut world,
            Event {
                due: now,
                server: number,
                generation,
                kind: EventKind::PowerOff,
            },
        );
    }
    inner.schedule(
        &mut world,
        Event {
            due: now + duration,
            server: number,
            generation,
            kind: EventKind::Boot,
        },
    );
    ok(reply)
}

fn create_key(inner: &Inner, form: &Form) -> Reply {
    let name = form.get("name").filter(|name| !name.is_empty());
    let data = form.get("data").filter(|data| !data.is_empty());
    let mut missing = Vec::new();
    if name.is_none() {
        missing.push("name");
    }
    if data.is_none() {
        missing.push("data");
    }
    let (Some(name), Some(data)) = (name, data) else {
        return Err(ApiError::invalid_input(&missing, &[]));
    };
    let Some(facts) = parse_public_key(data) else {
        return Err(ApiError::invalid_input(&[], &["data"]));
    };
    let created_at = inner.clock.timestamp(inner.clock.now());
    let mut world = inner.world();
    if world
        .keys
        .iter()
        .any(|key| key.fingerprint == facts.fingerprint)
    {
        return Err(ApiError::new(
            409,
            "KEY_ALREADY_EXISTS",
            "The key already exists",
        ));
    }
    let key = KeyRec {
        name: name.to_owned(),
        fingerprint: facts.fingerprint,
        kind: facts.kind,
        size: facts.size,
        data: facts.data,
        created_at,
    };
    let body = key_json(&key);
    world.keys.push(key);
    Ok((201, Some(body)))
}
