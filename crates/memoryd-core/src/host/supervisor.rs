//! Which supervisor, if any, runs this process.

/// `systemd` when `NOTIFY_SOCKET` or `INVOCATION_ID` is set, `launchd` when
/// `XPC_SERVICE_NAME` names a service, else none.
pub fn detect(var: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    if var("NOTIFY_SOCKET").is_some() || var("INVOCATION_ID").is_some() {
        Some("systemd")
    } else if var("XPC_SERVICE_NAME").is_some_and(|v| !v.is_empty() && v != "0") {
        Some("launchd")
    } else {
        None
    }
}

/// The command that keeps a supervised daemon down.
pub fn stop_command(supervisor: &str) -> &'static str {
    match supervisor {
        "launchd" => "launchctl bootout gui/$(id -u)/com.memoryd.memoryd",
        _ => "systemctl --user stop memoryd",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    #[test]
    fn detects() {
        assert_eq!(detect(|_| None), None);
        assert_eq!(detect(|v| (v == "INVOCATION_ID").then(|| "x".into())), Some("systemd"));
        assert_eq!(detect(|v| (v == "XPC_SERVICE_NAME").then(|| "0".into())), None);
        assert_eq!(detect(|v| (v == "XPC_SERVICE_NAME").then(|| "com.memoryd.memoryd".into())), Some("launchd"));
    }
}
