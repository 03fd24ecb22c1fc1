//! A minimal Varlink client: one JSON call per connection, messages ended
//! by a NUL byte. Enough for systemd's io.systemd.Machine.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// Why a call did not return parameters.
#[derive(Debug)]
pub enum CallError {
    /// Nobody listens on the socket (older systemd): try another way.
    Unreachable(std::io::Error),
    /// The service answered with a Varlink error.
    Failed { error: String, parameters: Value },
    /// The connection broke or the reply was not Varlink.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "cannot connect: {e}"),
            CallError::Failed { error, parameters } => write!(f, "{error} {parameters}"),
            CallError::Protocol(what) => write!(f, "{what}"),
        }
    }
}

pub fn call(socket: &Path, method: &str, parameters: Value) -> Result<Value, CallError> {
    let stream = UnixStream::connect(socket).map_err(CallError::Unreachable)?;
    let protocol = |e: std::io::Error| CallError::Protocol(format!("{}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(25)))
        .map_err(protocol)?;
    let mut request = json!({ "method": method, "parameters": parameters })
        .to_string()
        .into_bytes();
    request.push(0);
    (&stream).write_all(&request).map_err(protocol)?;
    let mut reply = Vec::new();
    BufReader::new(&stream)
        .read_until(0, &mut reply)
        .map_err(protocol)?;
    if reply.pop() != Some(0) {
        return Err(CallError::Protocol(format!(
            "{}: connection closed before the reply ended",
            socket.display()
        )));
    }
    let mut reply: Value = serde_json::from_slice(&reply).map_err(|e| {
        CallError::Protocol(format!("{}: reply is not JSON: {e}", socket.display()))
    })?;
    let parameters = reply
        .get_mut("parameters")
        .map(Value::take)
        .unwrap_or(json!({}));
    match reply.get("error").and_then(Value::as_str) {
        Some(error) => Err(CallError::Failed {
            error: error.to_string(),
            parameters,
        }),
        None => Ok(parameters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A one-shot server that checks the request and sends `reply`.
    fn serve(
        reply: &'static str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<Value>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut byte = [0u8];
            while s.read(&mut byte).unwrap() == 1 && byte[0] != 0 {
                buf.push(byte[0]);
            }
            s.write_all(reply.as_bytes()).unwrap();
            s.write_all(&[0]).unwrap();
            serde_json::from_slice(&buf).unwrap()
        });
        (dir, path, handle)
    }

    #[test]
    fn call_and_reply() {
        let (_d, path, server) = serve(r#"{"parameters":{"ok":1}}"#);
        let out = call(&path, "x.Y.Z", json!({"a": 2})).unwrap();
        assert_eq!(out, json!({"ok": 1}));
        let request = server.join().unwrap();
        assert_eq!(request, json!({"method": "x.Y.Z", "parameters": {"a": 2}}));
    }

    #[test]
    fn error_reply_and_missing_socket() {
        let (_d, path, _server) =
            serve(r#"{"error":"io.systemd.Machine.MachineExists","parameters":{}}"#);
        match call(&path, "x.Y.Z", json!({})) {
            Err(CallError::Failed { error, .. }) => {
                assert_eq!(error, "io.systemd.Machine.MachineExists")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            call(Path::new("/nonexistent/sock"), "x", json!({})),
            Err(CallError::Unreachable(_))
        ));
    }
}
