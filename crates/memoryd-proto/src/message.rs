//! JSON-RPC 2.0 messages and their NDJSON encoding.

use crate::error::{ErrorKind, RpcError};
use crate::methods;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub method: String,
    /// `{}` when the request carried no params.
    pub params: Value,
}

/// A request that could not be decoded: the id, when one could be read,
/// and the error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Value,
    pub error: RpcError,
}

impl Request {
    pub fn new(id: impl Into<Value>, method: &str, params: Value) -> Self {
        Request { id: id.into(), method: method.to_owned(), params }
    }

    /// Decodes one line. Every failure names what was wrong.
    pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
        let fail = |id: Value, error| Err(DecodeError { id, error });
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return fail(Value::Null, RpcError::parse_error(format!("the line is not JSON: {e}")));
            }
        };
        let Value::Object(mut obj) = value else {
            return fail(Value::Null, RpcError::invalid_request("a request must be a JSON object"));
        };
        let id = match obj.remove("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id,
            Some(_) => {
                return fail(Value::Null, RpcError::invalid_request("`id` must be a string or a number"));
            }
            None => {
                return fail(
                    Value::Null,
                    RpcError::invalid_request("the request has no `id`; every request needs one"),
                );
            }
        };
        match obj.get("jsonrpc") {
            Some(Value::String(v)) if v == "2.0" => {}
            _ => return fail(id, RpcError::invalid_request("`jsonrpc` must be \"2.0\"")),
        }
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            Some(_) => return fail(id, RpcError::invalid_request("`method` must be a string")),
            None => return fail(id, RpcError::invalid_request("the request has no `method`")),
        };
        let params = match obj.remove("params") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p,
            Some(_) => return fail(id, RpcError::invalid_request("`params` must be an object")),
        };
        Ok(Request { id, method, params })
    }

    /// Deserialises the params; an error names the offending field.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        parse_params(&self.method, self.params.clone())
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_line(&json!({"jsonrpc": "2.0", "id": self.id, "method": self.method, "params": self.params}))
    }
}

/// Deserialises `params` of `method`, naming the field on failure.
pub fn parse_params<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, RpcError> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("bad params for {method}: {inner}")
        } else {
            format!("bad params for {method}: field `{path}`: {inner}")
        };
        RpcError::new(ErrorKind::RequestInvalid, message)
    })
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Value,
    pub outcome: Result<Value, RpcError>,
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let value = match &self.outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": self.id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": self.id, "error": error}),
        };
        encode_line(&value)
    }
}

/// A message without an id, sent by the daemon while a request runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

impl Notification {
    pub fn encode(&self) -> Vec<u8> {
        encode_line(&json!({"jsonrpc": "2.0", "method": self.method, "params": self.params}))
    }
}

/// The daemon's answer as a client reads it: the result kept as the JSON
/// text it came as, for the caller to decode once, straight into its type
/// (a `Value` first cost a `memoryctl status` a fifth of its instructions).
#[derive(Debug)]
pub struct Answer {
    pub id: Value,
    pub outcome: Result<Box<RawValue>, RpcError>,
}

/// What a client reads from the daemon.
#[derive(Debug)]
pub enum Incoming {
    Response(Answer),
    Notification(Notification),
}

impl Incoming {
    pub fn decode(line: &[u8]) -> Result<Incoming, String> {
        /// The members a line from the daemon may have.
        #[derive(Deserialize)]
        struct Members {
            #[serde(default)]
            id: Value,
            method: Option<Value>,
            #[serde(default)]
            params: Value,
            /// Present (even as `null`) or absent.
            #[serde(default, deserialize_with = "present")]
            result: Option<Box<RawValue>>,
            error: Option<Value>,
        }
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
            Box::<RawValue>::deserialize(d).map(Some)
        }
        // Serde would also read a struct from an array, which no answer is.
        if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => "memoryd sent a line that is not a JSON object".to_owned(),
                Err(e) => format!("memoryd sent a line that is not JSON: {e}"),
            });
        }
        let members: Members = serde_json::from_slice(line).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("memoryd sent a malformed line: {e}"),
            _ => format!("memoryd sent a line that is not JSON: {e}"),
        })?;
        if let Some(Value::String(method)) = members.method {
            return Ok(Incoming::Notification(Notification { method, params: members.params }));
        }
        let outcome = match (members.result, members.error) {
            (_, Some(error)) => {
                Err(serde_json::from_value(error).map_err(|e| format!("memoryd sent a malformed error object: {e}"))?)
            }
            (Some(result), None) => Ok(result),
            (None, None) => {
                return Err("memoryd sent a response with neither `result` nor `error`".to_owned());
            }
        };
        Ok(Incoming::Response(Answer { id: members.id, outcome }))
    }
}

fn encode_line(value: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its keys are strings.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// `session.hello` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Who is calling, for the logs (`memoryctl 0.1.0`).
    pub client: String,
}

/// `session.hello` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloResult {
    pub protocol: u32,
    pub version: String,
    pub pid: u32,
    pub root: String,
    /// `systemd`, `launchd`, or null when no supervisor runs the daemon.
    pub supervisor: Option<String>,
}

/// Status of one progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressStatus {
    Ok,
    Fail,
    Skip,
    Repaired,
    Warn,
}

/// `host.progress` params: one step or check of a long request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The id of the request this line belongs to.
    pub id: Value,
    pub name: String,
    pub status: ProgressStatus,
    #[serde(default)]
    pub detail: String,
}

impl Progress {
    pub fn notification(&self) -> Notification {
        Notification {
            method: methods::HOST_PROGRESS.to_owned(),
            params: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

/// `host.working` params: how far a long request is (`done` of `total`
/// items of `what`), or a follower's beat (`total` null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Working {
    pub what: String,
    pub done: usize,
    pub total: Option<usize>,
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;

    fn decode_err(line: &str) -> DecodeError {
        Request::decode(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn decodes_a_request() {
        let r = Request::decode(br#"{"jsonrpc":"2.0","id":7,"method":"host.status"}"#).unwrap();
        assert_eq!(r.id, json!(7));
        assert_eq!(r.method, "host.status");
        assert_eq!(r.params, json!({}));
        let again = Request::decode(&r.encode()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn every_malformation_is_named() {
        let e = decode_err("{not json");
        assert_eq!(e.error.code, -32700);
        assert!(e.error.message.contains("not JSON"));
        assert_eq!(decode_err("[1]").error.code, -32600);
        assert!(decode_err(r#"{"jsonrpc":"2.0","method":"a.b"}"#).error.message.contains("`id`"));
        let e = decode_err(r#"{"jsonrpc":"1.0","id":"x","method":"a.b"}"#);
        assert_eq!(e.id, json!("x"));
        assert!(e.error.message.contains("jsonrpc"));
        assert!(decode_err(r#"{"jsonrpc":"2.0","id":1,"method":5}"#).error.message.contains("`method`"));
        assert!(
            decode_err(r#"{"jsonrpc":"2.0","id":1,"method":"a.b","params":[1]}"#).error.message.contains("`params`")
        );
        for line in ["{not json", "[1]", r#"{"jsonrpc":"2.0","id":1}"#] {
            assert_eq!(decode_err(line).error.kind(), Some(ErrorKind::RequestInvalid));
        }
    }

    #[test]
    fn bad_params_name_the_field() {
        let r = Request::new(1, "session.hello", json!({"protocol": "one", "client": "t"}));
        let e = r.params::<Hello>().unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("`protocol`"), "{}", e.message);
        let r = Request::new(1, "session.hello", json!({"protocol": 1}));
        let e = r.params::<Hello>().unwrap_err();
        assert!(e.message.contains("client"), "{}", e.message);
    }

    #[test]
    fn incoming_tells_responses_from_notifications() {
        let p = Progress { id: json!(3), name: "fleet".into(), status: ProgressStatus::Ok, detail: "12 peers".into() };
        match Incoming::decode(&p.notification().encode()).unwrap() {
            Incoming::Notification(n) => {
                assert_eq!(n.method, "host.progress");
                assert_eq!(serde_json::from_value::<Progress>(n.params).unwrap(), p);
            }
            other => panic!("{other:?}"),
        }
        let err = Response { id: json!(1), outcome: Err(RpcError::new(ErrorKind::ServerBusy, "busy")) };
        match Incoming::decode(&err.encode()).unwrap() {
            Incoming::Response(r) => {
                assert_eq!(r.outcome.unwrap_err().kind(), Some(ErrorKind::ServerBusy))
            }
            other => panic!("{other:?}"),
        }
        // A result is kept as its text, `null` included; an absent one is refused.
        for result in [json!({"a": [1, 2.5, "x"]}), Value::Null] {
            let ok = Response { id: json!(2), outcome: Ok(result.clone()) };
            match Incoming::decode(&ok.encode()).unwrap() {
                Incoming::Response(r) => {
                    assert_eq!(r.id, json!(2));
                    assert_eq!(serde_json::from_str::<Value>(r.outcome.unwrap().get()).unwrap(), result);
                }
                other => panic!("{other:?}"),
            }
        }
        for (line, why) in [
            (&b"{\"jsonrpc\":\"2.0\",\"id\":1}"[..], "neither `result` nor `error`"),
            (b"[1, 2]", "not a JSON object"),
            (b"{\"id\": 1, ", "not JSON"),
            (b"  ", "not JSON"),
            (b"{\"id\":1,\"error\":{\"code\":\"x\"}}", "malformed error object"),
        ] {
            let e = Incoming::decode(line).unwrap_err();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(line));
        }
    }
}

/// `peer.provision` / `peer.unprovision` params (spec 20/30).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProvision {
    pub cwd: std::path::PathBuf,
    pub runtime: String,
    pub personality: String,
    /// `birth`, `remove`, `sweep-on`, `off-peer`, `off-all`, or another
    /// (accepted and logged).
    pub occasion: String,
}

/// `host.update` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateParams {
    /// Step names to report `skip` instead of running.
    #[serde(default)]
    pub skip: Vec<String>,
}

/// `host.verify` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyParams {
    #[serde(default)]
    pub repair: bool,
}
