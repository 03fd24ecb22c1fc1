//! The runner's side of the driver's socket: one JSON request and one JSON
//! answer per connection (a thread each, so nodes are driven in parallel).
//! Errors go back as `{"error": "..."}`, which the driver raises as
//! `MachineError`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// What each node is doing now, for the status line.
    pub status: Arc<Status>,
}

/// Per node what it is busy with (booting, which command for what), shown
/// on a terminal as one line under the log.
#[derive(Default)]
pub struct Status {
    doing: Mutex<BTreeMap<String, Vec<(u64, String)>>>,
    next: Mutex<u64>,
}

/// Removes its activity from the status when dropped.
pub struct Doing<'a> {
    status: &'a Status,
    node: String,
    id: u64,
}

impl Drop for Doing<'_> {
    fn drop(&mut self) {
        let mut d = self.status.doing.lock().unwrap();
        if let Some(v) = d.get_mut(&self.node) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                d.remove(&self.node);
            }
        }
    }
}

impl Status {
    pub fn begin(&self, node: &str, what: String) -> Doing<'_> {
        let id = {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            *n
        };
        self.doing
            .lock()
            .unwrap()
            .entry(node.to_owned())
            .or_default()
            .push((id, what));
        Doing {
            status: self,
            node: node.to_owned(),
            id,
        }
    }

    /// The line: `node: what | node: what`, the latest activity per node.
    pub fn line(&self) -> String {
        self.doing
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(n, v)| v.last().map(|(_, w)| format!("{n}: {w}")))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Redraw the line on the terminal (stderr) every 200 ms until `stop`.
    pub fn show(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut shown = false;
            while !stop.load(Ordering::Relaxed) {
                let line = crate::terminal_safe(&self.line());
                let width = nixspawn_runtime::os::terminal_columns(std::io::stderr())
                    .map_or(80, usize::from)
                    .saturating_sub(1);
                let line: String = line.chars().take(width).collect();
                if !line.is_empty() {
                    // Back to the line's start afterwards: the next log
                    // line (which clears to the end) overwrites it.
                    eprint!("\r\x1b[K\x1b[7m{line}\x1b[0m\r");
                    shown = true;
                } else if shown {
                    eprint!("\r\x1b[K");
                    shown = false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if shown {
                eprint!("\r\x1b[K");
            }
        })
    }
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
            eprintln!("{}{}: {what}", super::clear_line(), node.name);
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
                    "vlans": n.vlans,
                })).collect::<Vec<_>>(),
                "script_path": self.script_path,
            })),
            "start" => {
                let n = self.node(req)?;
                let _doing = self.status.begin(&n.name, "starting".into());
                n.start()?;
                self.say(n, &format!("launched as {}", n.machine));
                Ok(json!({}))
            }
            "wait_booted" => {
                let n = self.node(req)?;
                let doing = self.status.begin(&n.name, "booting".into());
                n.wait_booted(timeout.unwrap_or(BOOT_TIMEOUT))?;
                drop(doing);
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
                let what = match req["context"].as_str() {
                    Some(c) if !c.is_empty() => format!("{c}: `{command}`"),
                    _ => format!("`{command}`"),
                };
                let _doing = self.status.begin(&n.name, what);
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
                let _doing = self.status.begin(&n.name, "shutting down".into());
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
                let _doing = self
                    .status
                    .begin(&n.name, "waiting for it to power off".into());
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
