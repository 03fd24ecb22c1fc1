//! A minimal Varlink client: one JSON call per connection, messages ended
//! by a NUL byte. Enough for systemd's io.systemd.Machine.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// How long a call may take and how long its reply may be, in all:
/// machined answers within milliseconds with a few hundred bytes, and a
/// service that hangs, trickles or talks without end must not hold the
/// launcher (or its janitor) with it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub max_reply: usize,
}

pub const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(25),
    max_reply: 1024 * 1024,
};

pub fn call(socket: &Path, method: &str, parameters: Value) -> Result<Value, CallError> {
    call_with(socket, method, parameters, LIMITS)
}

pub fn call_with(
    socket: &Path,
    method: &str,
    parameters: Value,
    limits: Limits,
) -> Result<Value, CallError> {
    let deadline = Instant::now() + limits.timeout;
    let stream = UnixStream::connect(socket).map_err(CallError::Unreachable)?;
    let protocol = |e: std::io::Error| CallError::Protocol(format!("{}: {e}", socket.display()));
    let timed_out = || {
        CallError::Protocol(format!(
            "{}: no complete reply within {} s",
            socket.display(),
            limits.timeout.as_secs_f32()
        ))
    };
    // The time left, or the error once there is none.
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)
    };
    let mut request = json!({ "method": method, "parameters": parameters })
        .to_string()
        .into_bytes();
    request.push(0);
    stream.set_write_timeout(Some(left()?)).map_err(protocol)?;
    (&stream).write_all(&request).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
        _ => protocol(e),
    })?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(protocol)?;
        let n = match (&stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(e) => return Err(protocol(e)),
        };
        if n == 0 {
            return Err(CallError::Protocol(format!(
                "{}: connection closed before the reply ended",
                socket.display()
            )));
        }
        // One call, one reply: anything after its NUL is not ours to read.
        let end = chunk[..n].iter().position(|&b| b == 0);
        reply.extend_from_slice(&chunk[..end.unwrap_or(n)]);
        if reply.len() > limits.max_reply {
            return Err(CallError::Protocol(format!(
                "{}: reply longer than {} bytes",
                socket.display(),
                limits.max_reply
            )));
        }
        if end.is_some() {
            break;
        }
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

    const SHORT: Limits = Limits {
        timeout: Duration::from_millis(500),
        max_reply: 64 * 1024,
    };

    /// A server that accepts and then does `behave` with the connection.
    fn misbehaving(
        behave: fn(std::os::unix::net::UnixStream),
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                behave(s);
            }
        });
        (dir, path)
    }

    fn protocol_error(result: Result<Value, CallError>) -> String {
        match result {
            Err(CallError::Protocol(what)) => what,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let (_d, path) = misbehaving(|s| {
            std::thread::sleep(Duration::from_secs(5));
            drop(s);
        });
        let t = Instant::now();
        let what = protocol_error(call_with(&path, "x.Y.Z", json!({}), SHORT));
        assert!(what.contains("no complete reply within"), "{what}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }

    #[test]
    fn a_trickling_server_times_out_in_all() {
        // A byte every 100 ms: each read is quick, the whole reply never is.
        let (_d, path) = misbehaving(|mut s| {
            for _ in 0..50 {
                if s.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Instant::now();
        let what = protocol_error(call_with(&path, "x.Y.Z", json!({}), SHORT));
        assert!(what.contains("no complete reply within"), "{what}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }

    #[test]
    fn an_endless_reply_is_cut_off() {
        let (_d, path) = misbehaving(|mut s| {
            let junk = [b'x'; 8192];
            while s.write_all(&junk).is_ok() {}
        });
        let what = protocol_error(call_with(
            &path,
            "x.Y.Z",
            json!({}),
            Limits {
                timeout: Duration::from_secs(20),
                max_reply: 64 * 1024,
            },
        ));
        assert!(what.contains("reply longer than 65536 bytes"), "{what}");
    }
}
