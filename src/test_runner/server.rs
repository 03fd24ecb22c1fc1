//! The runner's side of the driver's socket: one JSON request and one JSON
//! answer per connection (a thread each, so nodes are driven in parallel).
//! Errors go back as `{"error": "..."}`, which the driver raises as
//! `MachineError`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::node::Node;

/// How long one boot may take before `wait_booted` gives up (the global
/// timeout still bounds the run).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Server {
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub script_path: PathBuf,
    pub progress: bool,
}

impl Server {
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let me = Arc::clone(&self);
                std::thread::spawn(move || me.connection(stream));
            }
        });
    }

    fn connection(&self, stream: UnixStream) {
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => self
                .handle(&req)
                .unwrap_or_else(|e| json!({ "error": format!("{e:#}") })),
            Err(e) => json!({ "error": format!("bad request: {e}") }),
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        let _ = (&stream).write_all(&out);
    }

    fn node(&self, req: &Value) -> Result<&Arc<Node>> {
        let name = req["node"].as_str().context("no node named")?;
        self.nodes
            .get(name)
            .ok_or_else(|| anyhow!("there is no node {name:?}"))
    }

    fn say(&self, node: &Node, what: &str) {
        if self.progress {
            eprintln!("{}: {what}", node.name);
        }
    }

    fn handle(&self, req: &Value) -> Result<Value> {
        let op = req["op"].as_str().context("no op")?;
        let timeout = req["timeout"].as_f64().map(Duration::from_secs_f64);
        match op {
            "nodes" => Ok(json!({
                "nodes": self.nodes.values().map(|n| json!({
                    "name": n.name,
                    "machine": n.machine,
                    "console_log": n.console_log,
                })).collect::<Vec<_>>(),
                "script_path": self.script_path,
            })),
            "start" => {
                let n = self.node(req)?;
                n.start()?;
                self.say(n, &format!("launched as {}", n.machine));
                Ok(json!({}))
            }
            "wait_booted" => {
                let n = self.node(req)?;
                n.wait_booted(timeout.unwrap_or(BOOT_TIMEOUT))?;
                let marks = n.marks();
                if let (Some(a), Some(b)) = (marks.first(), marks.last()) {
                    self.say(
                        n,
                        &format!(
                            "booted ({} after {:.3}s)",
                            b.label,
                            b.at.saturating_sub(a.at) as f64 / 1e6
                        ),
                    );
                }
                Ok(json!({}))
            }
            "exec" => {
                let n = self.node(req)?;
                let command = req["command"].as_str().context("no command")?;
                if req["detach"].as_bool() == Some(true) {
                    n.exec_detached(command)?;
                    return Ok(json!({ "rc": -2, "stdout": "" }));
                }
                let stdin = req["stdin"].as_str().map(PathBuf::from);
                let stdout_file = req["stdout_file"].as_str().map(PathBuf::from);
                let o = n.exec(command, timeout, stdin.as_deref(), stdout_file.as_deref())?;
                Ok(json!({
                    "rc": o.rc,
                    "stdout": String::from_utf8_lossy(&o.stdout),
                    "timed_out": o.timed_out,
                }))
            }
            "shutdown" => {
                let n = self.node(req)?;
                n.shutdown(timeout.unwrap_or(STOP_TIMEOUT))?;
                Ok(json!({}))
            }
            "crash" => {
                self.node(req)?.crash()?;
                Ok(json!({}))
            }
            "reboot" => {
                self.node(req)?.reboot()?;
                Ok(json!({}))
            }
            "wait_for_shutdown" => {
                let n = self.node(req)?;
                let status = n.wait_exit(timeout)?;
                Ok(json!({ "status": status.and_then(|s| s.code()) }))
            }
            "mark" => {
                let n = self.node(req)?;
                let label = req["label"].as_str().unwrap_or("?");
                let at = req["monotonic_usec"]
                    .as_u64()
                    .filter(|t| *t > 0)
                    .unwrap_or_else(super::node::monotonic_usec);
                n.mark(label, at);
                Ok(json!({}))
            }
            "progress" => {
                let n = self.node(req)?;
                if let Some(t) = req["text"].as_str() {
                    self.say(n, t);
                }
                Ok(json!({}))
            }
            other => Err(anyhow!("unknown request {other:?}")),
        }
    }
}
