//! The memory MCP endpoint (spec 60): Streamable HTTP on
//! `127.0.0.1:<mcp_port>/mcp`, through the official SDK (`rmcp`) in
//! stateless mode, so a restart of the daemon is invisible to clients.
//! A client that stalls cannot hold the endpoint: headers are due within
//! [`HEADER_READ_TIMEOUT`] and at most [`MAX_CONNECTIONS`] are open at once.
//!
//! Before MCP, at the HTTP level, a guard refuses with 403 and a
//! one-sentence JSON body: another uid (Linux, by the connection's owner as
//! `sock_diag` names it; a connection whose owner cannot be learned is
//! refused too), a `Host` that is not loopback with our port, a
//! non-loopback `Origin` (DNS rebinding), and a missing or unknown
//! `X-IAPeer-Identity`. OAuth discovery probes get a plain 404. Every
//! answer carries this daemon's pid (`X-Memoryd-Pid`), so `verify` can tell
//! this endpoint from another program on the port.

use crate::daemon::Daemon;
use crate::server::Slot;
use axum::Extension;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use memoryd_core::fleet::names::split_node_id;
use memoryd_core::peers::{self, Draft, Importance};
use memoryd_core::presence::Refusal;
use memoryd_core::vault::embed::Semantic;
use memoryd_core::vault::memory::{self, Caller};
use memoryd_proto::RpcError;
use memoryd_proto::peers::{AcknowledgeParams, HistoryParams, ReplyParams};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;

pub const IDENTITY: &str = "x-iapeer-identity";

/// Whether the guard can refuse other users' connections (spec 60).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UidCheck {
    /// The kernel named the owner of a loopback connection made at start-up.
    Active,
    /// This system cannot name a connection's owner: other users are not refused.
    #[cfg_attr(target_os = "linux", allow(dead_code))] // made off Linux only
    Unavailable,
    /// The lookup failed at start-up (why): every connection is refused.
    Broken(String),
}

impl UidCheck {
    /// Why the check is not active, for `status`; None when it is.
    pub fn reason(&self) -> Option<String> {
        match self {
            UidCheck::Active => None,
            UidCheck::Unavailable => Some(
                "only on Linux can memoryd tell which user opened a loopback connection; other local users can reach the MCP endpoint"
                    .to_owned(),
            ),
            UidCheck::Broken(why) => Some(format!(
                "the kernel did not name the owner of a test loopback connection at start-up ({why}), so the MCP endpoint refuses every connection; load the tcp_diag kernel module (modprobe tcp_diag) and restart memoryd"
            )),
        }
    }
}

/// The MCP endpoint's state, for `status` and the guard.
pub struct McpState {
    /// Whether the endpoint serves now.
    pub listening: AtomicBool,
    /// Why the endpoint could not be bound (naming the port's holder when
    /// it can be known).
    pub error: Mutex<Option<String>>,
    /// The guard's uid step, proven at start-up.
    pub uid_guard: UidGuard,
}

impl McpState {
    pub fn new() -> McpState {
        McpState { listening: AtomicBool::new(false), error: Mutex::new(None), uid_guard: UidGuard::probe() }
    }
}

/// The guard's uid step: the check proven at start-up, and the lookup
/// failures already logged (each distinct reason once).
#[derive(Debug)]
pub struct UidGuard {
    pub check: UidCheck,
    warned: Mutex<BTreeSet<String>>,
}

/// Why the uid step refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UidRefusal {
    /// The check did not work at start-up.
    Broken,
    /// The kernel did not name this connection's owner (why).
    Unknown(String),
    OtherUser(u32),
}

impl UidGuard {
    /// Proves at start-up that connections' owners can be learned here.
    pub fn probe() -> UidGuard {
        #[cfg(target_os = "linux")]
        let check = match crate::sockdiag::probe() {
            Ok(()) => UidCheck::Active,
            Err(why) => {
                tracing::error!(
                    error = why,
                    "cannot tell which user opens an MCP connection; the MCP endpoint refuses every connection"
                );
                UidCheck::Broken(why)
            }
        };
        #[cfg(not(target_os = "linux"))]
        let check = UidCheck::Unavailable;
        UidGuard { check, warned: Mutex::default() }
    }

    /// Lets a connection from `client` to our `port` on, or refuses it.
    fn admit(&self, client: SocketAddr, port: u16) -> Result<(), Response> {
        #[cfg(target_os = "linux")]
        let lookup = || {
            crate::sockdiag::client_uid(client, SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)))
                .map_err(|e| e.to_string())
        };
        #[cfg(not(target_os = "linux"))]
        let lookup = || -> Result<u32, String> { Err(format!("no owner lookup for {client} on port {port}")) };
        let Some(refusal) = uid_refusal(&self.check, nix::unistd::getuid().as_raw(), lookup) else { return Ok(()) };
        Err(forbidden(match refusal {
            UidRefusal::OtherUser(_) => {
                "connections from another user are refused; memoryd serves only its own user".to_owned()
            }
            UidRefusal::Unknown(why) => {
                if self.warned.lock().is_ok_and(|mut w| w.insert(why.clone())) {
                    tracing::warn!(%client, error = why, "refused an MCP connection whose user the kernel did not name (logged once per reason)");
                }
                "memoryd refuses this connection because it cannot tell which user opened it; see memoryd's log"
                    .to_owned()
            }
            UidRefusal::Broken => {
                "memoryd refuses every MCP connection because it cannot tell which user opens one; see memoryctl status"
                    .to_owned()
            }
        }))
    }
}

/// The uid step's decision: a connection whose owner is not proven to be
/// `me` is refused (fail closed).
fn uid_refusal(check: &UidCheck, me: u32, lookup: impl FnOnce() -> Result<u32, String>) -> Option<UidRefusal> {
    match check {
        UidCheck::Unavailable => None,
        UidCheck::Broken(_) => Some(UidRefusal::Broken),
        UidCheck::Active => match lookup() {
            Ok(uid) if uid == me => None,
            Ok(uid) => Some(UidRefusal::OtherUser(uid)),
            Err(why) => Some(UidRefusal::Unknown(why)),
        },
    }
}

/// Binds `127.0.0.1:<port>` (step 6 of start-up, before any slow work).
pub fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Why `port` could not be bound, in words for `status`: a taken port
/// names its holder when that can be known.
pub fn bind_error(port: u16, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        let holder = memoryd_core::host::egress::Egress::refusing(Vec::new()).who_holds(port);
        format!(
            "port {port} is taken by {holder}; stop it, or set mcp_port to a free port, run memoryctl update and restart memoryd"
        )
    } else {
        format!("cannot listen on 127.0.0.1:{port}: {error}")
    }
}

/// How long a client may take to send a request's headers; a keep-alive
/// connection idle as long is closed too. A loopback client sends its
/// headers at once, and HTTP clients expect an idle connection to close
/// after about this long (Node's HTTP server keeps one 5 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; past it a new one gets a 503 and is
/// closed at once. An agent keeps one or two, so this is room for a large
/// fleet while a misbehaving local client cannot take the daemon's file
/// descriptors and memory. A constant: no fleet comes near it.
const MAX_CONNECTIONS: usize = 256;

/// Serves MCP on `listener` until the daemon stops.
pub async fn serve(listener: std::net::TcpListener, daemon: Arc<Daemon>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(task = "mcp", error = %e, "cannot serve the MCP endpoint");
            return;
        }
    };
    let port = listener.local_addr().map_or(0, |a| a.port());
    let config = daemon.config();
    let mut http = StreamableHttpServerConfig::default();
    http.legacy_session_mode = false;
    http.json_response = true;
    http.sse_keep_alive = None;
    http.max_request_body_bytes = config.max_request_bytes;
    http.cancellation_token = daemon.host.shutdown.begun.child_token();
    // Our guard validates Host and Origin first; the SDK's own checks agree.
    http.allowed_hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
    let server = daemon.clone();
    let service = StreamableHttpService::new(
        move || Ok(MemoryServer { daemon: server.clone() }),
        Arc::new(LocalSessionManager::default()),
        http,
    );
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(config.max_request_bytes, arguments_object))
        .layer(middleware::from_fn_with_state((daemon.clone(), port), guard));
    daemon.mcp.listening.store(true, Ordering::Relaxed);
    let stop = daemon.host.shutdown.begun.clone();
    let open = Arc::new(AtomicUsize::new(0));
    let connections = TaskTracker::new();
    let mut full = false;
    loop {
        let (stream, client) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends pass; the endpoint goes on.
                    tracing::warn!(task = "mcp", error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Slot::take(&open, MAX_CONNECTIONS) else {
            if !std::mem::replace(&mut full, true) {
                tracing::warn!(
                    task = "mcp",
                    max = MAX_CONNECTIONS,
                    "MCP connections at their limit; refusing new ones"
                );
            }
            refuse(&stream);
            continue;
        };
        full = false;
        connections.spawn(connection(stream, client, router.clone(), stop.clone(), slot));
    }
    drop(listener);
    connections.close();
    // Each connection finishes its request and closes (a stalled one at the
    // header deadline); the drain in main bounds this wait as well.
    if tokio::time::timeout(config.shutdown_grace, connections.wait()).await.is_err() {
        tracing::warn!(task = "mcp", open = open.load(Ordering::Relaxed), "MCP connections still open at shutdown");
    }
    daemon.mcp.listening.store(false, Ordering::Relaxed);
}

/// Serves one connection (HTTP/1.1, headers due within
/// [`HEADER_READ_TIMEOUT`]) until it closes or the daemon stops.
async fn connection(stream: TcpStream, client: SocketAddr, router: axum::Router, stop: CancellationToken, _slot: Slot) {
    // Small JSON answers must not wait for delayed ACKs (Nagle).
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(Extension(ConnectInfo(client)).layer(router));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(task = "mcp", %client, error = %e, "MCP connection closed");
    }
}

/// Answers a connection over [`MAX_CONNECTIONS`] with a 503, if the socket
/// takes it at once, and closes it: nothing waits on that client.
fn refuse(stream: &TcpStream) {
    let body = json!({"error": format!(
        "memoryd's MCP endpoint is serving its maximum of {MAX_CONNECTIONS} connections; retry shortly"
    )})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

fn forbidden(sentence: String) -> Response {
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/json")], json!({"error": sentence}).to_string())
        .into_response()
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// `Host` must name the loopback address or `localhost` with our port.
fn host_ok(headers: &HeaderMap, port: u16) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    host.rsplit_once(':').is_some_and(|(h, p)| is_loopback_host(h) && p.parse() == Ok(port))
}

/// An `Origin`, when present, must be a loopback origin.
fn origin_ok(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else { return false };
    let host = match rest.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => rest,
    };
    is_loopback_host(host)
}

async fn guard(
    State((daemon, port)): State<(Arc<Daemon>, u16)>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match admit(&daemon, port, client, &request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    };
    response.headers_mut().insert(memoryd_core::ops::verify::PID_HEADER, HeaderValue::from(std::process::id()));
    response
}

/// Whether a request may reach MCP; the answer that refuses it if not.
fn admit(daemon: &Daemon, port: u16, client: SocketAddr, request: &Request) -> Result<(), Response> {
    if request.uri().path().starts_with("/.well-known/") {
        // Codex probes OAuth discovery for servers without a bearer token.
        return Err((StatusCode::NOT_FOUND, "not found").into_response());
    }
    daemon.mcp.uid_guard.admit(client, port)?;
    let headers = request.headers();
    if !host_ok(headers, port) {
        return Err(forbidden(format!("the Host header must be 127.0.0.1:{port} or localhost:{port}")));
    }
    if !origin_ok(headers) {
        return Err(forbidden("only loopback origins may call memoryd".to_owned()));
    }
    let identity = headers.get(IDENTITY).and_then(|v| v.to_str().ok()).unwrap_or("");
    if identity.is_empty() {
        return Err(forbidden(
            "set the X-IAPeer-Identity header to <runtime>-<personality> of a fleet peer (memoryd's surfaces do)"
                .to_owned(),
        ));
    }
    if !daemon.knows(identity) {
        return Err(forbidden(format!("X-IAPeer-Identity {identity:?} is not a peer-runtime of the fleet map")));
    }
    Ok(())
}

/// A `tools/call` whose `arguments` is not an object fails the SDK's
/// parsing with a bare JSON-RPC error; spec 60 makes bad input a tool
/// error. So the call goes on with no arguments and this mark (what was
/// given instead), and `call_tool` answers it naming `arguments`.
#[derive(Clone)]
struct ArgumentsNotAnObject(String);

async fn arguments_object(State(max_bytes): State<usize>, request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(mut bytes) = axum::body::to_bytes(body, max_bytes).await else {
        let sentence = format!("the request body is larger than max_request_bytes ({max_bytes} bytes) or was cut off");
        let answer = json!({"error": sentence}).to_string();
        return (StatusCode::PAYLOAD_TOO_LARGE, [(header::CONTENT_TYPE, "application/json")], answer).into_response();
    };
    if let Ok(mut call) = serde_json::from_slice::<Value>(&bytes)
        && call.get("method").and_then(Value::as_str) == Some("tools/call")
        && let Some(arguments) = call.get_mut("params").and_then(|p| p.get_mut("arguments"))
        && !(arguments.is_object() || arguments.is_null())
    {
        parts.extensions.insert(ArgumentsNotAnObject(describe(arguments)));
        *arguments = Value::Object(Map::new());
        bytes = call.to_string().into();
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// The MCP server of one request (stateless: built per request).
#[derive(Clone)]
struct MemoryServer {
    daemon: Arc<Daemon>,
}

/// A tool's input schema; an argument it does not list is refused.
fn object(schema: Value) -> Arc<Map<String, Value>> {
    let mut schema = schema.as_object().cloned().unwrap_or_default();
    schema.insert("additionalProperties".to_owned(), Value::Bool(false));
    Arc::new(schema)
}

/// Checks a call's arguments against the tool's input schema, so that a
/// wrong type, a value out of range, a missing required argument or an
/// unknown one is a tool error naming it, never a silent default. Our
/// schemas use `type` (string, integer, boolean, array), `items`,
/// `minimum`, `maximum`, `enum` and `required`; lengths are the tools' own
/// checks, with their own error kinds.
fn check_arguments(tool: &Tool, args: &Map<String, Value>) -> Result<(), String> {
    let names = |list: &[Value]| {
        list.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect::<Vec<_>>().join(", ")
    };
    let properties = tool.input_schema.get("properties").and_then(Value::as_object);
    for (key, value) in args {
        let Some(spec) = properties.and_then(|p| p.get(key)) else {
            let takes: Vec<Value> =
                properties.map(|p| p.keys().map(|k| Value::from(k.as_str())).collect()).unwrap_or_default();
            let takes = if takes.is_empty() { "no arguments".to_owned() } else { names(&takes) };
            return Err(format!("`{key}` is not an argument of {} (it takes {takes})", tool.name));
        };
        // A null optional argument is an absent one.
        if !value.is_null() {
            check_value(&format!("`{key}`"), spec, value)?;
        }
    }
    let required = tool.input_schema.get("required").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    match required.iter().filter_map(Value::as_str).find(|k| args.get(*k).is_none_or(Value::is_null)) {
        Some(missing) => Err(format!("`{missing}` is missing; {} needs {}", tool.name, names(required))),
        None => Ok(()),
    }
}

fn check_value(name: &str, spec: &Value, value: &Value) -> Result<(), String> {
    let wrong = |wanted: &str| Err(format!("{name} must be {wanted}, not {}", describe(value)));
    match spec.get("type").and_then(Value::as_str) {
        Some("string") => {
            let Some(text) = value.as_str() else { return wrong("a string") };
            if let Some(allowed) = spec.get("enum").and_then(Value::as_array)
                && !allowed.iter().any(|a| a == text)
            {
                let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                return wrong(&format!("one of {}", allowed.join(", ")));
            }
        }
        Some("integer") => {
            let (min, max) = (spec.get("minimum").and_then(Value::as_i64), spec.get("maximum").and_then(Value::as_i64));
            if !value.as_i64().is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)) {
                return wrong(&match (min, max) {
                    (Some(min), Some(max)) => format!("a whole number from {min} to {max}"),
                    _ => "a whole number".to_owned(),
                });
            }
        }
        Some("boolean") if !value.is_boolean() => return wrong("true or false"),
        Some("array") => {
            let Some(items) = value.as_array() else { return wrong("a list") };
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{name} item {}", i + 1), spec.get("items").unwrap_or(&Value::Null), item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A JSON value as an error sentence names it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("a string ({:?}…)", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// What a tool does to the world, for its annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Reads,
    /// Adds something, replacing nothing.
    Adds,
    /// May replace what is there.
    Replaces,
}

/// A tool: its input schema (an argument it does not list is refused),
/// the schema of its structured answer ([`Answer`]), and its effect.
fn tool(name: &'static str, description: &'static str, input: Value, output: Value, effect: Effect) -> Tool {
    let annotations = ToolAnnotations::new()
        .read_only(effect == Effect::Reads)
        .destructive(effect == Effect::Replaces)
        .open_world(false);
    Tool::new(name, description, object(input)).with_raw_output_schema(schema(output)).annotate(annotations)
}

/// An output schema: an object (MCP's structured content is one).
fn schema(properties: Value) -> Arc<Map<String, Value>> {
    let required: Vec<Value> = properties.as_object().map(|p| p.keys().map(|k| json!(k)).collect()).unwrap_or_default();
    let schema = json!({"type": "object", "properties": properties, "required": required});
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

fn tools() -> Vec<Tool> {
    let text = || json!({"type": "string"});
    let links = || json!({"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "title": {"type": "string"}}, "required": ["path", "title"]}});
    // What a send and a reply answer (proto `Sent`).
    let sent = || {
        json!({
            "to": text(), "queued": {"type": "boolean"}, "queueDepth": {"type": "integer"},
            "dropped": {"type": "integer"}, "ts": text(), "id": text(), "thread": text(),
            "recipients": {"type": "array", "items": {"type": "object"}},
        })
    };
    // A list of messages (proto `OutboxRow` or `HistoryRow`).
    let messages = || json!({"messages": {"type": "array", "items": {"type": "object"}}});
    vec![
        tool(
            "memory_search",
            "Search the notes you may read (your own, shared ones, linked peers'); ranked by relevance.",
            json!({"type": "object", "properties": {
                "query": {"type": "string", "description": "What to look for"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "At most this many (10)"},
                "scope": {"type": "string", "enum": ["all", "own", "shared", "peers"]},
            }, "required": ["query"]}),
            json!({
                "mode": {"type": "string", "enum": ["lexical", "hybrid"], "description": "What ranked the results"},
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "path": text(), "title": text(), "author": {"type": ["string", "null"]},
                    "score": {"type": "number"}, "snippet": text(),
                }, "required": ["path", "title", "author", "score", "snippet"]}},
            }),
            Effect::Reads,
        ),
        tool(
            "memory_read",
            "Read one note by its path relative to the vault (as memory_search returns it), with the notes it links to and those linking to it.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            json!({"path": text(), "text": text(), "links": links(), "backlinks": links()}),
            Effect::Reads,
        ),
        tool(
            "memory_write",
            "Save a note in your own zone (peers/<you>/<slug>.md); returns similar notes to link or merge by hand, and the note's links and backlinks.",
            json!({"type": "object", "properties": {
                "title": {"type": "string"},
                "body": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "replace": {"type": "boolean", "description": "Replace your existing note of that title"},
            }, "required": ["title", "body"]}),
            json!({
                "path": text(), "created": {"type": "boolean"},
                "similar": {"type": "array", "items": {"type": "object", "properties": {
                    "path": text(), "title": text(), "score": {"type": "number"},
                }, "required": ["path", "title", "score"]}},
                "links": links(), "backlinks": links(),
            }),
            Effect::Replaces,
        ),
        tool(
            "peers_list",
            "The peers you can see: yourself and your linked peers, with their presence \
             (`stale: true` when the fleet database cannot be reached and this is what was last known).",
            json!({"type": "object", "properties": {}}),
            json!({"peers": {"type": "array", "items": {"type": "object", "properties": {
                "personality": text(), "reason": text(), "state": text(), "health": {},
            }, "required": ["personality", "reason", "state", "health"]}}, "stale": {"type": "boolean"}}),
            Effect::Reads,
        ),
        tool(
            "peer_send",
            "Message one or more linked peers. It reaches them at their next turn; urgent ones at their next tool use. Returns the id and thread; peer_outbox shows whether it was delivered.",
            json!({"type": "object", "properties": {
                "to": {"description": "A linked peer, or a list of up to 16"},
                "message": {"type": "string", "maxLength": peers::MAX_MESSAGE_CHARS},
                "subject": {"type": "string", "maxLength": peers::MAX_SUBJECT_CHARS, "description": "One line"},
                "importance": {"type": "string", "enum": ["normal", "urgent"], "description": "urgent: interrupts their work (use rarely)"},
                "ackRequired": {"type": "boolean", "description": "Ask them to confirm with peer_ack; you get a receipt"},
            }, "required": ["to", "message"]}),
            sent(),
            Effect::Adds,
        ),
        tool(
            "peer_reply",
            "Reply to a message you received (by its id): to its sender, in its thread, with its subject.",
            json!({"type": "object", "properties": {
                "messageId": {"type": "string"},
                "body": {"type": "string", "maxLength": peers::MAX_MESSAGE_CHARS},
                "ackRequired": {"type": "boolean"},
            }, "required": ["messageId", "body"]}),
            sent(),
            Effect::Adds,
        ),
        tool(
            "peer_ack",
            "Confirm a received message that asks for it (ackRequired), once you have acted on it; its sender gets a receipt.",
            json!({"type": "object", "properties": {"messageId": {"type": "string"}}, "required": ["messageId"]}),
            json!({"messageId": text(), "acknowledged": {"type": "boolean"}, "receipt": {"type": "boolean"}}),
            Effect::Adds,
        ),
        tool(
            "peer_outbox",
            "Your recent sent messages, newest first, with each recipient's state: queued, delivered, acknowledged, dropped.",
            json!({"type": "object", "properties": {
                "limit": {"type": "integer", "minimum": 1, "maximum": peers::MAX_ROWS, "description": "At most this many (20)"},
            }}),
            messages(),
            Effect::Reads,
        ),
        tool(
            "peer_thread",
            "The messages of one thread that you sent or received, oldest first.",
            json!({"type": "object", "properties": {"thread": {"type": "string"}}, "required": ["thread"]}),
            messages(),
            Effect::Reads,
        ),
        tool(
            "peer_messages_search",
            "Search the peer messages you sent or received (delivered ones), ranked by relevance.",
            json!({"type": "object", "properties": {
                "query": {"type": "string"},
                "with": {"type": "string", "description": "Only those exchanged with this peer"},
                "thread": {"type": "string"},
            }, "required": ["query"]}),
            messages(),
            Effect::Reads,
        ),
    ]
}

/// A tool's answer: the typed value its output schema declares, sent as
/// `structuredContent` (MCP 2025-06-18), and the text content beside it
/// for clients that read only text. Every tool answers through this.
struct Answer {
    structured: Value,
    text: Vec<String>,
}

impl Answer {
    /// The value, and its JSON as the text (as MCP advises).
    fn of(value: &impl Serialize) -> Result<Answer, String> {
        let structured = serde_json::to_value(value).map_err(|e| e.to_string())?;
        Ok(Answer { text: vec![structured.to_string()], structured })
    }

    /// The value, with texts of the tool's own (a note to read is better
    /// read as itself than as a JSON string).
    fn with_text(value: &impl Serialize, text: Vec<String>) -> Result<Answer, String> {
        Ok(Answer { text, ..Answer::of(value)? })
    }

    /// The tool result of a call's outcome: an answer, or a one-sentence
    /// refusal as a tool error.
    fn result(outcome: Result<Answer, String>) -> CallToolResult {
        match outcome {
            Ok(answer) => {
                let mut result = CallToolResult::success(answer.text.into_iter().map(ContentBlock::text).collect());
                result.structured_content = Some(answer.structured);
                result
            }
            Err(sentence) => CallToolResult::error(vec![ContentBlock::text(sentence)]),
        }
    }
}

/// `peers_list`'s answer (structured content is an object).
#[derive(Serialize)]
struct PeersList {
    peers: Vec<memoryd_proto::peers::Visible>,
    /// From what this host last read of the fleet database, which cannot
    /// be reached now (always false with the file store).
    stale: bool,
}

/// A read note's links as a line of text for clients that read only text;
/// None when it has none.
fn links_text(read: &memory::ReadNote) -> Option<String> {
    let list = |l: &[memory::Linked]| l.iter().map(|l| format!("`{}`", l.path)).collect::<Vec<_>>().join(", ");
    let mut lines = Vec::new();
    if !read.links.is_empty() {
        lines.push(format!("Links to: {}", list(&read.links)));
    }
    if !read.backlinks.is_empty() {
        lines.push(format!("Linked from: {}", list(&read.backlinks)));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn refusal_text(r: &Refusal) -> String {
    format!("{} ({})", r.message, r.kind)
}

/// A tool's answer, or its refusal as the tool error: the sentence with
/// the error kind, which names the limit.
fn answer_of<T: Serialize>(outcome: Result<T, RpcError>) -> Result<Answer, String> {
    match outcome {
        Ok(value) => Answer::of(&value),
        Err(e) => Err(match e.kind() {
            Some(kind) => format!("{} ({kind})", e.message),
            None => e.message,
        }),
    }
}

/// A list of messages as a tool's answer (structured content is an
/// object).
#[derive(Serialize)]
struct Messages<T> {
    messages: Vec<T>,
}

impl<T> Messages<T> {
    fn of(messages: Vec<T>) -> Messages<T> {
        Messages { messages }
    }
}

impl MemoryServer {
    /// The caller's node, from the header the guard checked.
    fn node(context: &RequestContext<RoleServer>) -> Option<String> {
        let parts = context.extensions.get::<axum::http::request::Parts>()?;
        parts.headers.get(IDENTITY)?.to_str().ok().map(str::to_owned)
    }

    /// What a call gave as `arguments` when that was not an object.
    fn arguments_not_an_object(context: &RequestContext<RoleServer>) -> Option<String> {
        let parts = context.extensions.get::<axum::http::request::Parts>()?;
        parts.extensions.get::<ArgumentsNotAnObject>().map(|a| a.0.clone())
    }

    /// Refuses a write by a read-only node (no known version counts as
    /// read-only under a floor).
    fn check_write(&self, node: &str) -> Result<(), String> {
        let presence = self.daemon.store.presence().map_err(|e| e.to_string())?;
        presence.check_floor(node, self.daemon.rules().floor).map_err(|r| refusal_text(&r))
    }

    /// Runs one tool (on a blocking thread: it reads and writes files and
    /// may wait for the store lock).
    fn run(
        &self,
        node: &str,
        name: &str,
        args: &Map<String, Value>,
        query_vector: Option<Vec<f32>>,
    ) -> Result<Answer, String> {
        let personality = split_node_id(node).map(|(_, p)| p.to_owned()).ok_or("bad identity")?;
        // The schema check let only these types through; a required one
        // that is absent all the same is still an error, not "".
        let text = |key: &str| args.get(key).and_then(Value::as_str).ok_or_else(|| format!("`{key}` is missing"));
        let optional = |key: &str| args.get(key).and_then(Value::as_str);
        let flag = |key: &str| args.get(key).and_then(Value::as_bool).unwrap_or(false);
        let linked_names = self.daemon.linked_with(&personality);
        let linked: Vec<&str> = linked_names.iter().map(String::as_str).collect();
        let caller = Caller { personality: &personality, linked: &linked };
        let vault = self.daemon.vault.path.clone();
        let no_vault = || "no vault configured; set `vault` in memoryd.toml (memoryctl init --vault DIR)".to_owned();
        match name {
            "memory_search" => {
                vault.ok_or_else(no_vault)?;
                let index = self.daemon.vault.index();
                let limit = args.get("limit").and_then(Value::as_u64);
                let embedder = self.daemon.vault.embedder.as_ref();
                let vectors = embedder.map(|e| e.vectors());
                let semantic = match (embedder, &vectors, &query_vector) {
                    (Some(e), Some(vectors), Some(query)) => Some(Semantic { vectors, query, rrf_k: e.rrf_k() }),
                    _ => None,
                };
                Answer::of(&memory::search(
                    &index,
                    &caller,
                    text("query")?,
                    limit,
                    optional("scope"),
                    semantic.as_ref(),
                )?)
            }
            "memory_read" => {
                let vault = vault.ok_or_else(no_vault)?;
                let read = memory::read(&vault, &self.daemon.vault.index(), &caller, text("path")?)?;
                let texts = std::iter::once(read.text.clone()).chain(links_text(&read)).collect();
                Answer::with_text(&read, texts)
            }
            "memory_write" => {
                let vault = vault.ok_or_else(no_vault)?;
                self.check_write(node)?;
                let tags: Vec<String> = args
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|t| t.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                let replace = args.get("replace").and_then(Value::as_bool).unwrap_or(false);
                let index = self.daemon.vault.index();
                let result = memory::write(
                    &self.daemon.host.files,
                    &vault,
                    &index,
                    &caller,
                    text("title")?,
                    text("body")?,
                    &tags,
                    replace,
                    SystemTime::now(),
                )?;
                Answer::of(&result)
            }
            "peers_list" => {
                let (peers, stale) = self.daemon.visible_or_last_known(&personality).map_err(|e| e.message)?;
                Answer::of(&PeersList { peers, stale })
            }
            "peer_send" => {
                self.check_write(node)?;
                let to = match args.get("to") {
                    Some(Value::String(one)) => vec![one.clone()],
                    Some(Value::Array(many)) if many.iter().all(Value::is_string) => {
                        many.iter().filter_map(Value::as_str).map(str::to_owned).collect()
                    }
                    _ => return Err("`to` must be a peer's name or a list of names".to_owned()),
                };
                let draft = Draft {
                    from: personality.clone(),
                    to,
                    text: text("message")?.to_owned(),
                    subject: optional("subject").map(str::to_owned),
                    importance: if optional("importance") == Some("urgent") {
                        Importance::Urgent
                    } else {
                        Importance::Normal
                    },
                    ack_required: flag("ackRequired"),
                    operator: false,
                    thread: None,
                    in_reply_to: None,
                };
                answer_of(self.daemon.send_now(&draft, false))
            }
            "peer_reply" => {
                self.check_write(node)?;
                let params = ReplyParams {
                    from: personality.clone(),
                    message_id: text("messageId")?.to_owned(),
                    message: text("body")?.to_owned(),
                    ack_required: flag("ackRequired"),
                };
                answer_of(self.daemon.reply_now(&params))
            }
            "peer_ack" => {
                self.check_write(node)?;
                let params =
                    AcknowledgeParams { personality: personality.clone(), message_id: text("messageId")?.to_owned() };
                answer_of(self.daemon.acknowledge_now(&params))
            }
            "peer_outbox" => {
                let limit = args.get("limit").and_then(Value::as_u64).map(|l| l as usize);
                answer_of(
                    self.daemon.store.outbox(&personality, limit).map(Messages::of).map_err(crate::presence::rpc_error),
                )
            }
            "peer_thread" | "peer_messages_search" => {
                let params = HistoryParams {
                    personality: personality.clone(),
                    with: optional("with").map(str::to_owned),
                    thread: optional("thread").map(str::to_owned),
                    query: optional("query").map(str::to_owned),
                    limit: None,
                };
                answer_of(self.daemon.history_now(&params).map(Messages::of))
            }
            other => Err(format!("unknown tool `{other}`")),
        }
    }
}

impl ServerHandler for MemoryServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = Implementation::from_build_env();
        info.name = "memoryd".to_owned();
        info.version = memoryd_core::VERSION.to_owned();
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(info)
            .with_instructions(
                "Shared memory of this agent fleet: search and read notes, write your own, message linked peers.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(tool) = tools().into_iter().find(|t| t.name == request.name) else {
            return Err(ErrorData::invalid_params(format!("unknown tool `{}`", request.name), None));
        };
        let Some(node) = Self::node(&context) else {
            return Err(ErrorData::invalid_request("no X-IAPeer-Identity on this request", None));
        };
        let args = request.arguments.unwrap_or_default();
        let checked = match Self::arguments_not_an_object(&context) {
            Some(given) => Err(format!("`arguments` must be an object of named arguments, not {given}")),
            None => check_arguments(&tool, &args),
        };
        if let Err(sentence) = checked {
            return Ok(CallToolResult::error(vec![ContentBlock::text(sentence)]).into());
        }
        // The query's vector, within its deadline, before the blocking part.
        let query_vector = match (&*request.name, &self.daemon.vault.embedder, args.get("query")) {
            ("memory_search", Some(embedder), Some(Value::String(query))) if !query.trim().is_empty() => {
                embedder.embed_query(query).await
            }
            _ => None,
        };
        let (server, name) = (self.clone(), request.name.clone());
        let outcome = self.daemon.blocking(move |_| server.run(&node, &name, &args, query_vector)).await;
        // The writer's next search must find it.
        if request.name == "memory_write"
            && let (Ok(written), Some(vault)) = (&outcome, &self.daemon.vault.path)
            && let Some(rel) = written.structured.get("path").and_then(Value::as_str)
            && self.daemon.update_vault([vault.join(rel)].into(), "memory_write").await
        {
            self.daemon.refresh_fragments(None);
        }
        Ok(Answer::result(outcome).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_whose_owner_cannot_be_learned_is_refused() {
        let me = 1000;
        let lookup_failed = || Err("the kernel knows no such connection (ENOENT)".to_owned());
        assert_eq!(
            uid_refusal(&UidCheck::Active, me, lookup_failed),
            Some(UidRefusal::Unknown("the kernel knows no such connection (ENOENT)".to_owned()))
        );
        assert_eq!(uid_refusal(&UidCheck::Active, me, || Ok(1001)), Some(UidRefusal::OtherUser(1001)));
        assert_eq!(uid_refusal(&UidCheck::Active, me, || Ok(me)), None);
        // Not proven at start-up: refused without asking.
        let broken = UidCheck::Broken("no sock_diag".to_owned());
        assert_eq!(uid_refusal(&broken, me, || unreachable!("not asked")), Some(UidRefusal::Broken));
        assert!(broken.reason().is_some_and(|r| r.contains("refuses every connection")));
        assert_eq!(uid_refusal(&UidCheck::Unavailable, me, || unreachable!("not asked")), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_uid_check_is_active_here_and_refuses_with_one_logged_reason() {
        let guard = UidGuard::probe();
        assert_eq!(guard.check, UidCheck::Active, "{:?}", guard.check.reason());
        // A connection the kernel does not know (gone already).
        let gone = SocketAddr::from(([127, 0, 0, 1], 1));
        for _ in 0..2 {
            let refused = guard.admit(gone, 1).unwrap_err();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        }
        assert_eq!(guard.warned.lock().unwrap().len(), 1, "one reason, logged once");
    }
}
