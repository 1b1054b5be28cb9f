//! Harness for hearth's end-to-end tests: real `hearthd` processes, each with its own data
//! dir and socket, driven through the real `hearth` CLI with `--json`.
//!
//! The binaries are built (or found up to date) by the harness itself, with the same cargo,
//! profile and target directory as the test executable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod netns;

/// How long a daemon may take to come up, or a change to reach another daemon, before a
/// test gives up. Generous: CI machines are small and shared.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Path of a workspace binary, built fresh for this test run.
///
/// `cargo test` builds other packages' binaries only as test harnesses, and a binary left
/// in the target directory may be stale, so the first call builds `hearthd` and `hearth`
/// with the same cargo, profile and target directory as this test executable.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_binaries)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(name)
}

fn build_binaries() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("test executable path: {e}"))?;
    // target/<profile dir>/deps/<test>-<hash>, or target/<profile dir>/<binary> for a
    // program such as hearth-bench.
    let mut profile_dir = exe.parent().ok_or("executable has no directory")?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir
            .parent()
            .ok_or("executable is not in target/<profile>/deps")?;
    }
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err("unreadable profile directory".into()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args([
            "--profile",
            profile,
            "-p",
            "hearthd",
            "-p",
            "hearth",
            "--bins",
        ])
        .status()
        .map_err(|e| format!("running cargo build for the binaries under test: {e}"))?;
    if !status.success() {
        return Err(format!("building hearthd and hearth failed ({status})"));
    }
    Ok(profile_dir.to_owned())
}

/// Polls `f` until it returns `Some`, or panics after [`PATIENCE`] naming `what`.
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= PATIENCE {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How [`Daemon`] runs hearthd: an optional wrapper command it is run through (e.g.
/// `ip netns exec NS`, which must exec hearthd so the pid stays hearthd's), and the network
/// flags.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Program and arguments put before the hearthd path; empty to run hearthd directly.
    pub wrapper: Vec<OsString>,
    /// hearthd's network flags (`--listen`, `--no-mdns`).
    pub net_args: Vec<String>,
    /// What hearthd logs (`HEARTH_LOG`): debug for tests, quieter for measurements; empty
    /// to leave `HEARTH_LOG` unset, so hearthd logs what it does by default.
    pub log_filter: String,
}

/// The log filter tests run hearthd with: enough to explain a failure.
pub const TEST_LOG_FILTER: &str = "info,hearthd=debug";

impl Default for Launch {
    /// hearthd directly, on 127.0.0.1 (random port) with mDNS off.
    fn default() -> Self {
        Launch {
            wrapper: Vec::new(),
            net_args: ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]
                .map(str::to_owned)
                .to_vec(),
            log_filter: TEST_LOG_FILTER.to_owned(),
        }
    }
}

pub struct Daemon {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    launch: Launch,
    child: Option<Child>,
}

impl Daemon {
    /// Starts hearthd on 127.0.0.1 (random port, mDNS off) with `data_dir`, and waits until
    /// its API answers.
    pub fn start(name: &str, data_dir: &Path) -> Daemon {
        Daemon::start_with(name, data_dir, Launch::default())
    }

    /// Starts hearthd as `launch` says with `data_dir`, and waits until its API answers.
    /// [`Daemon::restart`] launches it the same way.
    pub fn start_with(name: &str, data_dir: &Path, launch: Launch) -> Daemon {
        let socket = data_dir.with_extension("sock");
        let mut d = Daemon {
            name: name.to_owned(),
            data_dir: data_dir.to_owned(),
            socket,
            launch,
            child: None,
        };
        d.restart();
        d
    }

    /// The pid of the running hearthd, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the (stopped) daemon again on the same data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::File::create(self.data_dir.with_extension("log"))
            .expect("create daemon log file");
        let mut command = match self.launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("hearthd"));
                c
            }
            None => Command::new(bin("hearthd")),
        };
        if self.launch.log_filter.is_empty() {
            command.env_remove("HEARTH_LOG");
        } else {
            command.env("HEARTH_LOG", &self.launch.log_filter);
        }
        let child = command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.launch.net_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hearthd");
        self.child = Some(child);
        wait_for(&format!("{} to answer on its socket", self.name), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited during start-up ({status}): {}",
                    self.name,
                    self.log()
                );
            }
            self.try_json(&["status"]).ok()
        });
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Runs `hearth --json ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("hearth"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run hearth")
    }

    /// Runs `hearth --json ARGS` against this daemon with `input` on its standard input
    /// (for `-` arguments and `--passphrase-stdin`).
    pub fn cli_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("hearth"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hearth");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write hearth's input");
        child.wait_with_output().expect("run hearth")
    }

    /// The JSON answer of a command that must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        match self.try_json(args) {
            Ok(v) => v,
            Err(e) => panic!(
                "`hearth {}` on {} failed: {e}\n{}",
                args.join(" "),
                self.name,
                self.log()
            ),
        }
    }

    pub fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        let out = self.cli(args);
        if !out.status.success() {
            return Err(format!(
                "exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("stdout is not JSON: {e}"))
    }

    /// The names of `group`'s current members as this daemon lists them, sorted.
    pub fn member_names(&self, group: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .json(&["member", "list", group])
            .as_array()
            .expect("a member list")
            .iter()
            .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }

    /// This daemon's member id in `group` (each membership has its own).
    pub fn member_id(&self, group: &str) -> String {
        let members = self.json(&["member", "list", group]);
        members
            .as_array()
            .expect("a member list")
            .iter()
            .find(|m| m["you"] == true)
            .and_then(|m| m["member_id"].as_str())
            .expect("this daemon in its own member list")
            .to_owned()
    }

    /// Creates a group and returns its id.
    pub fn create_group(&self, name: &str) -> String {
        self.json(&["group", "create", name])["group_id"]
            .as_str()
            .expect("group_id in the answer")
            .to_owned()
    }

    /// Invites `joiner` to `group` by token and has it join; returns the (used) token.
    pub fn invite(&self, joiner: &Daemon, group: &str) -> String {
        let token = self.json(&["invite", group])["token"]
            .as_str()
            .expect("token in the answer")
            .to_owned();
        let joined = joiner.json(&["join", &token]);
        assert_eq!(
            joined["group_id"], group,
            "{} joined another group",
            joiner.name
        );
        token
    }

    /// Has `joiner` join `group` of this (facilitator's) daemon with the spoken `code`,
    /// approving the join here once it waits for approval (as the facilitator would,
    /// after looking at the name); returns what `hearth join` answered, or its error.
    pub fn approve_code_join(
        &self,
        joiner: &Daemon,
        group: &str,
        code: &str,
        name: &str,
    ) -> Result<Value, String> {
        let channel = code
            .split('-')
            .next()
            .expect("a code starts with its number");
        std::thread::scope(|scope| {
            let joining = scope.spawn(|| joiner.try_json(&["join", code, "--name", name]));
            let path = format!("/v1/groups/{group}/codes/{channel}");
            loop {
                if joining.is_finished() {
                    break;
                }
                let status = self.api_get(&path);
                if status["state"] == "awaiting_approval" {
                    assert_eq!(status["name"], name, "{status}");
                    self.json(&["invite", "approve", group, channel]);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            joining.join().expect("the join thread")
        })
    }

    /// `GET path` on this daemon's API (through curl-like raw HTTP over its socket).
    pub fn api_get(&self, path: &str) -> Value {
        self.api("GET", path, None).1
    }

    /// `METHOD path` with an optional JSON body on this daemon's API: the HTTP status and
    /// the JSON answer (`Null` when there is none).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).expect("the API socket");
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // The daemon may answer (and close) before reading a body it refuses.
        let _ = s.write_all(request.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A loopback TCP multiaddr this daemon listens on.
    pub fn addr(&self) -> String {
        let status = self.json(&["status"]);
        status["listen_addrs"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            })
            .expect("a loopback listen address")
            .to_owned()
    }

    /// Texts of the agreements of `group` as this daemon shows them.
    pub fn agreement_texts(&self, group: &str) -> Vec<String> {
        let mut texts: Vec<String> = self
            .json(&["agreement", "list", group])
            .as_array()
            .expect("agreement list is an array")
            .iter()
            .filter_map(|a| a["text"].as_str().map(str::to_owned))
            .collect();
        texts.sort();
        texts
    }

    /// Waits until this daemon shows every text in `expected` among `group`'s agreements.
    pub fn wait_for_agreements(&self, group: &str, expected: &[&str]) {
        let shown = poll(|| {
            let have = self.try_json(&["agreement", "list", group]).ok()?;
            let texts: Vec<&str> = have
                .as_array()?
                .iter()
                .filter_map(|a| a["text"].as_str())
                .collect();
            expected.iter().all(|e| texts.contains(e)).then_some(())
        });
        if shown.is_none() {
            panic!(
                "timed out waiting for {} to show {expected:?}; its log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for hearthd");
            assert!(
                status.success(),
                "{} did not shut down cleanly: {status}\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Waits (up to 10 s) for hearthd to exit by itself, and returns how it exited.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("hearthd is running");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for hearthd") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit: {}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill hearthd");
            child.wait().ok();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Where in the readable memory of process `pid` each of `needles` occurs (needle index and
/// address), read through `/proc/PID/mem` (this process must be allowed to trace it: its
/// parent, or root).
pub fn find_in_memory(pid: u32, needles: &[&[u8]]) -> Vec<(usize, u64)> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read the memory map");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open the process memory");
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Chunks overlap by the longest needle, so nothing is missed at a boundary.
        const CHUNK: u64 = 1 << 20;
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK + longest as u64) as usize;
            let mut buf = vec![0u8; len];
            let Ok(n) = mem.read_at(&mut buf, at) else {
                break;
            };
            for (i, needle) in needles.iter().enumerate() {
                for offset in memchr::memmem::find_iter(&buf[..n], needle) {
                    let address = at + offset as u64;
                    if !found.contains(&(i, address)) {
                        found.push((i, address));
                    }
                }
            }
            at += CHUNK;
        }
    }
    found
}
